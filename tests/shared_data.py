"""Real test data from elsewhere, read in place from ``../shared/data`` beside the project root.

The data stay outside the repository (their licences are beside them). On a clone without
``../shared`` the tests that need them skip with a message naming the folder; under CI=true
the folder's absence fails them, since CI always has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``../shared/data`` seen from the project root (this file is ``tests/shared_data.py``).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """Path of ``../shared/data/<relative>``; skip (locally) or fail (CI=true) when absent.

    Parameters
    ----------
    relative : str
        Folder or file under ``../shared/data``, e.g. ``"vendor/canon_galan_dti"``.

    Returns
    -------
    Path
        The existing path, to be read in place and never copied into the repository.
    """
    path = SHARED_DATA / relative
    if path.exists():
        return path
    message = f"test data folder {path} is absent (../shared/data/{relative} beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must have ../shared")
    pytest.skip(message)  # outside CI only: under CI=true it failed above
