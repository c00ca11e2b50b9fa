"""Durable storage of received instances: validated paths, write-fsync-rename, quarantine.

Layout under the data directory::

    studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   stored as received
    studies/<StudyUID>/<SeriesUID>/<SOP>_<16 hex>.dcm     a changed resend, beside the first
    quarantine/<UTC time>-<n>.dcm + .txt                  refused data and the reason
    tmp/                                                  partial writes (same filesystem)

A received instance is written once, straight to its place, and never over another file
(:func:`create_new`): a file there is either complete and fsynced (then it may have been
acknowledged) or the remains of a crash, which the start-up reconciliation
(:mod:`strokeflow.receive.reconcile`) validates before indexing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Protocol

#: A DICOM UID: digit components separated by dots, at most 64 characters. Checked before
#: a UID becomes a path component, so a hostile UID cannot escape the data directory.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_quarantine_counter = count()


class InvalidUidError(ValueError):
    """A UID that is not digits and dots (or too long) and must not become a path."""


def check_uid(value: object, name: str) -> str:
    """Return ``value`` as a validated UID string.

    Raises
    ------
    InvalidUidError
        Missing, longer than 64 characters, or not made of digits and dots.
    """
    text = str(value or "").strip().rstrip("\0")
    if not text:
        raise InvalidUidError(f"{name} is missing")
    if len(text) > 64 or not _UID.match(text):
        raise InvalidUidError(f"{name} {text[:80]!r} is not a valid UID (digits and dots, <= 64)")
    return text


def instance_relpath(study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """``studies/<study>/<series>/<sop>.dcm`` after validating the three UIDs."""
    return (
        Path("studies")
        / check_uid(study_uid, "StudyInstanceUID")
        / check_uid(series_uid, "SeriesInstanceUID")
        / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, parts: Iterable[bytes | memoryview]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


@dataclass(frozen=True)
class NewFile:
    """A file :func:`create_new` wrote and has not yet synced."""

    path: Path
    fd: int
    #: Folders whose entries changed (the file's own first).
    folders: list[Path]


def create_new(data_dir: Path, relpath: Path, parts: Iterable[bytes | memoryview]) -> NewFile:
    """Write ``parts`` to ``data_dir / relpath``, which must not exist yet; not synced.

    Created with ``O_EXCL``: an existing file (an earlier version, or one another
    association is writing) is never overwritten. Missing folders are created.

    Returns
    -------
    NewFile
        The open descriptor and the folders to fsync: give it to :func:`sync_and_close`
        and :func:`sync_folders` before answering, or to :func:`discard_new`.

    Raises
    ------
    FileExistsError
        Something is already at ``relpath`` (nothing was written).
    OSError
        Any other disk problem; nothing is left at ``relpath`` then.
    """
    target = data_dir / relpath
    created = []
    folder = target.parent
    while not folder.is_dir():
        created.append(folder)
        folder = folder.parent
    for new_folder in reversed(created):
        new_folder.mkdir(exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, parts)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    # The file's folder, and the parent of every folder made here, must reach the disk
    # too, or a power cut could forget the file's name.
    folders = [target.parent, *(f.parent for f in created)]
    return NewFile(target, fd, folders)


def sync_folders(folders: Iterable[Path]) -> None:
    """fsync each folder (its entries: names of new files and folders)."""
    for folder in folders:
        _fsync_dir(folder)


class Pending(Protocol):
    """A task running elsewhere (a ``Future`` or a disk worker's task)."""

    def result(self) -> object:
        """Wait for it; raise what it raised."""


def discard_new(new: NewFile, synced: Pending | None = None) -> None:
    """Delete a file from :func:`create_new` that is not to be kept.

    ``synced`` is the pending :func:`sync_and_close` of its descriptor (which closes it);
    without one the descriptor is closed here.
    """
    if synced is None:
        os.close(new.fd)
    else:
        with contextlib.suppress(OSError):  # deleted anyway
            synced.result()
    new.path.unlink(missing_ok=True)


def quarantine_stored(data_dir: Path, relpath: Path, reason: str) -> Path:
    """Move a stored file that cannot be indexed into quarantine, with the reason beside it.

    Returns
    -------
    Path
        The quarantined ``.dcm`` file.
    """
    folder = data_dir / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    stem = _quarantine_stem()
    target = folder / f"{stem}.dcm"
    (folder / f"{stem}.txt").write_text(f"{relpath.as_posix()}: {reason}\n", encoding="utf-8")
    os.replace(data_dir / relpath, target)
    sync_folders([folder, (data_dir / relpath).parent])
    return target


def _quarantine_stem() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{os.getpid()}-{next(_quarantine_counter)}"


def write_temp(data_dir: Path, parts: Iterable[bytes]) -> tuple[Path, int]:
    """Write ``parts`` one after the other to a new file in ``data_dir/tmp``, not yet synced.

    Split from the fsync so that the receiver writes (fast: page cache) in its own thread
    and leaves only the fsync, which holds no lock Python needs, to the ``disk-write`` pool.

    Returns
    -------
    tuple[Path, int]
        The temporary file and its still open descriptor: pass it to
        :func:`sync_and_close` (which also closes it) before moving the file into place.

    Raises
    ------
    OSError
        Any disk problem; the file is then closed and deleted.
    """
    tmp_dir = data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    try:
        _write_all(fd, parts)
    except BaseException:
        os.close(fd)
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name), fd


def sync_and_close(fd: int) -> None:
    """fsync and close a descriptor from :func:`create_new` or :func:`write_temp` (closed even
    if fsync fails)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced_temp(data_dir: Path, payload: bytes) -> Path:
    """Write ``payload`` to a new file in ``data_dir/tmp`` and fsync it.

    :func:`write_temp` then :func:`sync_and_close`; the caller moves the file with
    :func:`move_into_place` or deletes it.

    Returns
    -------
    Path
        The temporary file, on disk when this returns.

    Raises
    ------
    OSError
        Any disk problem; no temporary file is left behind in that case.
    """
    tmp, fd = write_temp(data_dir, (payload,))
    try:
        sync_and_close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def move_into_place(data_dir: Path, tmp: Path, relpath: Path) -> None:
    """Rename the synced ``tmp`` over ``data_dir / relpath`` and fsync the directory.

    The rename is atomic (a reader sees the old or the new file, never half of one) and
    the directory fsync makes it survive a power cut. On failure ``tmp`` is deleted.
    """
    target = data_dir / relpath
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_durably(data_dir: Path, relpath: Path, payload: bytes) -> str:
    """Write ``payload`` to ``data_dir / relpath`` so that it is on disk when this returns.

    :func:`write_synced_temp` then :func:`move_into_place`.

    Returns
    -------
    str
        SHA-256 hex digest of ``payload``.

    Raises
    ------
    OSError
        Any disk problem; nothing is left at the destination in that case.
    """
    move_into_place(data_dir, write_synced_temp(data_dir, payload), relpath)
    return hashlib.sha256(payload).hexdigest()


def quarantine(data_dir: Path, payload: bytes, reason: str) -> Path:
    """Keep refused data with the reason next to it, for a person to look at.

    Returns
    -------
    Path
        The quarantined ``.dcm`` file (the reason is in the ``.txt`` beside it).
    """
    folder = data_dir / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    stem = _quarantine_stem()
    write_durably(data_dir, Path("quarantine") / f"{stem}.dcm", payload)
    (folder / f"{stem}.txt").write_text(reason + "\n", encoding="utf-8")
    return folder / f"{stem}.dcm"


def free_disk_mb(path: Path) -> float:
    """Free space (MiB) on the filesystem holding ``path`` (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free / 2**20
