"""Durable storage of received instances: validated paths, write-fsync-rename, quarantine.

Layout under the data directory::

    studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   stored as received
    quarantine/<UTC time>-<n>.dcm + .txt                  refused data and the reason
    tmp/                                                  partial writes (same filesystem)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

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
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name), fd


def sync_and_close(fd: int) -> None:
    """fsync and close a descriptor from :func:`write_temp` (closed even if fsync fails)."""
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
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    stem = f"{stamp}-{os.getpid()}-{next(_quarantine_counter)}"
    write_durably(data_dir, Path("quarantine") / f"{stem}.dcm", payload)
    (folder / f"{stem}.txt").write_text(reason + "\n", encoding="utf-8")
    return folder / f"{stem}.dcm"


def free_disk_mb(path: Path) -> float:
    """Free space (MiB) on the filesystem holding ``path`` (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free / 2**20
