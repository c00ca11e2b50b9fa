"""A ``strokeflow`` process skips the interpreter's last garbage collection at exit."""

from __future__ import annotations

import os
import subprocess
import sys


def _run_main(argv: list[str], epilogue: str) -> str:
    """``strokeflow.cli.main()`` with ``argv`` in a fresh interpreter without
    ``STROKEFLOW_*`` variables; ``epilogue`` is an exit handler's body, registered before
    ``main`` (so it runs after the handlers ``main`` registers), printing to stdout."""
    code = (
        "import atexit, gc, sys\n"
        f"def _after():\n    {epilogue}\n"
        "atexit.register(_after)\n"
        f"sys.argv = ['strokeflow', *{argv!r}]\n"
        "from strokeflow.cli import main\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STROKEFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_the_objects_are_frozen_before_the_last_collection() -> None:
    out = _run_main(["version"], "print('frozen', gc.get_freeze_count() > 0)")
    assert out.split()[-2:] == ["frozen", "True"]
