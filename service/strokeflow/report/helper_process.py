"""Forked helper processes of the result-object stage: starting one, and its watchdog.

The pages and the SEG file are produced by forked children while this process builds the
rest (see :mod:`strokeflow.report.page_job` and :mod:`strokeflow.report.file_writer`). A
child only computes and writes to a pipe or a file; it takes no lock another thread of
this process may hold (CPython re-creates the import and logging locks in a forked child),
and one that hangs anyway is killed by the watchdog.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import warnings
from collections.abc import Iterator

__all__ = ["HELPER_TIMEOUT_S", "fork_helper", "killed_after"]

#: Longest wait for a helper before it is killed and its work done in this process.
HELPER_TIMEOUT_S = 60.0


def fork_helper() -> int:
    """Fork a helper process.

    Returns
    -------
    int
        The child's pid in this process, 0 in the child.

    Raises
    ------
    OSError
        The fork failed (no helper; the caller does the work itself).
    """
    # Frozen in the child for good: its collector must never finalise this process's
    # garbage (a database connection's finaliser would talk on the parent's socket).
    gc.freeze()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork in a threaded process; see the module docstring
            # for why these children are safe.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        gc.unfreeze()
        raise
    if pid != 0:
        gc.unfreeze()
    return pid


@contextlib.contextmanager
def killed_after(pid: int, timeout_s: float = HELPER_TIMEOUT_S) -> Iterator[None]:
    """Kill the helper ``pid`` if the block has not finished after ``timeout_s``."""
    watchdog = threading.Timer(timeout_s, _kill, args=(pid,))
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
