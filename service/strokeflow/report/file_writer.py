"""Writing one analysis's DICOM files on two CPUs.

Encoding a DICOM file is pure-Python work under the GIL. The SEG of a thin-slice study
(one frame per slice and segment, each with its functional groups) takes as long to
encode as all the other result objects together, so a forked helper process writes it
while this process writes the rest. Where no helper can be started (no fork, one usable
CPU) or it fails, this process writes every file itself; the files are the same bytes
either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from strokeflow.analysis.stages import usable_cpus
from strokeflow.report.helper_process import fork_helper, killed_after
from strokeflow.report.warm import wait_until_warm

__all__ = ["write_files"]

log = logging.getLogger(__name__)


def _write(path: Path, ds: Dataset) -> None:
    ds.save_as(path, enforce_file_format=True)


def _start_helper(path: Path, ds: Dataset) -> int | None:
    """Fork a process that writes ``ds`` to ``path`` and exits 0; its pid, or None."""
    if not hasattr(os, "fork") or usable_cpus() < 2 or not wait_until_warm():
        return None
    try:
        pid = fork_helper()
    except OSError as exc:
        log.info("result files written in this process (no helper process: %s)", exc)
        return None
    if pid == 0:
        code = 1
        try:
            _write(path, ds)
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    """The helper's exit code (killed by the watchdog of ``helper_process``)."""
    with killed_after(pid):
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def write_files(files: Sequence[tuple[Path, Dataset]], offload: int | None = None) -> None:
    """Write every ``(path, dataset)`` as a DICOM Part 10 file.

    Parameters
    ----------
    files : sequence of (Path, pydicom.Dataset)
        What to write where; folders must exist.
    offload : int, optional
        Index into ``files`` of the file a forked helper writes while this process
        writes the others (the costliest to encode); None writes all here.

    Raises
    ------
    Exception
        Whatever writing a file raises in this process (a helper's failure is not
        raised: its file is written again here, which raises the real error).
    """
    pid = None if offload is None else _start_helper(*files[offload])
    code = 0
    try:
        for index, (path, ds) in enumerate(files):
            if index != offload or pid is None:
                _write(path, ds)
    finally:
        # Always collected, even when a write here failed.
        if pid is not None:
            code = _wait(pid)
    if pid is not None and offload is not None and code != 0:
        log.warning("file helper process failed (exit code %s); writing it here", code)
        _write(*files[offload])
