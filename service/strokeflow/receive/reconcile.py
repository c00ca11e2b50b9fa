"""Start-up reconciliation: index the stored files that have no row.

The receiver answers 0x0000 once an instance's file is fsynced and writes its rows
afterwards (:mod:`strokeflow.receive.index`); a listener killed in between, or a power
cut that takes SQLite's last commits (``synchronous=NORMAL``), leaves acknowledged files
without rows. Before the listener accepts associations, every file under ``studies/``
that no instance row names is looked at:

* its SOP instance has no row: checked like a received instance and indexed, or moved
  to quarantine with the reason (a file cut short by the crash was never acknowledged);
* its SOP instance has a row that is older than the file: a changed resend whose row was
  lost; checked and indexed as the replacement (unless it holds the indexed bytes);
* otherwise it is an earlier version of an instance (kept for the jobs that read it).

Temporary files in ``tmp/`` were never acknowledged and are deleted.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from strokeflow.receive.checks import InstanceRefusedError, read_stored, text_value
from strokeflow.receive.index import instance_record
from strokeflow.receive.storage import quarantine_stored
from strokeflow.store.repository import InstanceRecord, study_index
from strokeflow.store.studies import RESULT_SOP_CLASSES, is_own_result, note_instances

LOG = logging.getLogger(__name__)


@dataclass
class Reconciliation:
    """What a reconciliation did."""

    indexed: int = 0
    quarantined: int = 0
    temporary_removed: int = 0


def reconcile(data_dir: Path, sessions: sessionmaker[Session], now: datetime) -> Reconciliation:
    """Index (or quarantine) every stored file without an instance row; see the module.

    Run it while no receiver is running (the listener does, before it binds the port).

    Parameters
    ----------
    data_dir : Path
    sessions : sessionmaker
    now : datetime
        Aware UTC time recorded as the reception time of what it indexes.

    Returns
    -------
    Reconciliation
    """
    done = Reconciliation()
    for part in sorted((data_dir / "tmp").glob("*.part")):
        part.unlink(missing_ok=True)
        done.temporary_removed += 1
    studies = data_dir / "studies"
    for study_dir in sorted(studies.iterdir()) if studies.is_dir() else []:
        files = sorted(study_dir.glob("*/*.dcm"))
        if not files:
            continue
        with sessions() as session:
            known = study_index(session, study_dir.name)
        referenced = {row.path for row in known.values()}
        found: list[tuple[InstanceRecord, str | None]] = []
        for path in files:
            relpath = path.relative_to(data_dir)
            if relpath.as_posix() in referenced:
                continue
            row = known.get(path.stem.split("_")[0])
            mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            if row is not None and mtime <= row.received_at:
                continue  # an earlier version, superseded by the indexed one
            record = _checked_record(data_dir, relpath, row.sha256 if row else None, done)
            if record is not None:
                found.append(record)
        _index(data_dir, sessions, found, now, done)
    if done.indexed or done.quarantined or done.temporary_removed:
        LOG.info(
            "start-up reconciliation: %d stored files without an index row indexed, %d "
            "quarantined, %d temporary files removed",
            done.indexed,
            done.quarantined,
            done.temporary_removed,
        )
    return done


def _checked_record(
    data_dir: Path, relpath: Path, indexed_sha256: str | None, done: Reconciliation
) -> tuple[InstanceRecord, str | None] | None:
    """The file's record and manufacturer; ``None`` when it is quarantined or holds the
    indexed bytes (stored twice by a race)."""
    try:
        ds, transfer_syntax, data = read_stored(data_dir / relpath, relpath)
    except InstanceRefusedError as exc:
        _quarantine(data_dir, relpath, str(exc), done)
        return None
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 == indexed_sha256:
        return None
    record = instance_record(
        ds,
        transfer_syntax_uid=str(transfer_syntax),
        relpath=relpath,
        size_bytes=len(data),
        sha256=sha256,
        calling_ae_title=None,
    )
    return record, text_value(ds, "Manufacturer", 64)


def _index(
    data_dir: Path,
    sessions: sessionmaker[Session],
    found: list[tuple[InstanceRecord, str | None]],
    now: datetime,
    done: Reconciliation,
) -> None:
    """Index one study's files in one transaction; one by one if one contradicts the index."""
    if not found:
        return
    try:
        _note(sessions, found, now)
    except ValueError:
        for one in found:
            try:
                _note(sessions, [one], now)
            except ValueError as exc:
                _quarantine(data_dir, Path(one[0].path), str(exc), done)
                continue
            done.indexed += 1
        return
    done.indexed += len(found)
    for record, _ in found:
        LOG.debug(
            "study %s instance %s: stored without an index row, now indexed",
            record.study_uid,
            record.sop_instance_uid,
        )


def _note(
    sessions: sessionmaker[Session], found: list[tuple[InstanceRecord, str | None]], now: datetime
) -> None:
    with sessions() as session, session.begin():
        own = {
            r.sop_instance_uid
            for r, manufacturer in found
            if r.sop_class_uid in RESULT_SOP_CLASSES
            and is_own_result(session, r.sop_class_uid, r.sop_instance_uid, manufacturer)
        }
        note_instances(session, [r for r, _ in found], now, own_result_uids=own)


def _quarantine(data_dir: Path, relpath: Path, reason: str, done: Reconciliation) -> None:
    where = quarantine_stored(
        data_dir, relpath, f"found at start-up without an index row: {reason}"
    )
    done.quarantined += 1
    LOG.warning(
        "stored file %s cannot be indexed (%s): quarantined as %s", relpath, reason, where.name
    )
