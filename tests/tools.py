"""External tools the tests drive: found, or the test fails naming the apt package.

`bash .ci/run` installs every one of them; a test that cannot reach its real peer must not
pass by being skipped, here or in CI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NoReturn

import pytest


def tool_missing(message: str) -> NoReturn:
    """Fail the test with ``message`` (and how to install what is missing)."""
    pytest.fail(f"{message}; `bash .ci/run` installs every tool the tests need")


def require_tool(name: str, package: str) -> str:
    """Path of a command-line tool (PATH or /usr/sbin), installed by the apt ``package``."""
    found = shutil.which(name)
    if found is None and Path(f"/usr/sbin/{name}").exists():
        found = f"/usr/sbin/{name}"
    if found is None:
        tool_missing(f"{name} is not installed (apt: {package})")
    return found
