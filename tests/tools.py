"""External tools the tests drive: found, or the test skips (fails under CI=true)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

#: CI must run every test: a missing tool there is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool_missing(message: str) -> NoReturn:
    """Fail under CI, else skip, with ``message``."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, package: str) -> str:
    """Path of a command-line tool (PATH or /usr/sbin), installed by the apt ``package``."""
    found = shutil.which(name)
    if found is None and Path(f"/usr/sbin/{name}").exists():
        found = f"/usr/sbin/{name}"
    if found is None:
        tool_missing(f"{name} is not installed (apt: {package})")
    return found
