"""The receiver's index writer: instance rows written in batches, after the answer.

The C-STORE answer waits for the file (written and fsynced), not for its SQL rows: the
association thread hands an acknowledged instance to the one :class:`IndexWriter` of its
process, which records everything queued meanwhile in one transaction
(:func:`~strokeflow.store.studies.note_instances`). Rows that a crash or power cut loses
are rebuilt at start-up from the files (:mod:`strokeflow.receive.reconcile`), so nothing
acknowledged is lost and the index's SQLite may run with ``synchronous=NORMAL``.

While a batch cannot be written (database down or locked), the writer keeps it and
retries, and the receiver answers new instances 0xA700 until a batch goes through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.receive.checks import int_value, text_value
from strokeflow.receive.storage import quarantine_stored
from strokeflow.store import header_values
from strokeflow.store.repository import InstanceRecord
from strokeflow.store.studies import (
    RESULT_SOP_CLASSES,
    is_own_result,
    mark_released,
    note_instances,
)
from strokeflow.store.wholeness import image_counts

LOG = logging.getLogger(__name__)

#: At most this many instances per transaction (a transaction holds SQLite's write lock).
MAX_BATCH = 200
#: How long (s) the writer lets a batch gather after its first instance: a transaction per
#: instance costs the receiving process ~1-2 ms of CPU, which its associations need, and
#: each batch's ~8 statements are spread over its instances (4 senders to 4 processes:
#: ~6 instances a batch at 0.05 s; at 0.2 s, 7 % less CPU per instance in the receiving
#: processes, benchmarks/ingest.py's study, same run). A release, a flush (a resend's
#: decision, a stop) or a full batch does not wait: a study's last rows are not delayed.
GATHER_S = 0.2
#: Wait between attempts while the database refuses a batch (s), doubling up to the max.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


def instance_record(
    ds: Dataset,
    *,
    transfer_syntax_uid: str,
    relpath: Path,
    size_bytes: int,
    sha256: str,
    calling_ae_title: str | None,
) -> InstanceRecord:
    """The index row of a checked dataset stored at ``relpath`` (relative to the data dir),
    with the counting elements that tell whether its acquisition is whole."""
    return InstanceRecord(
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        path=relpath.as_posix(),
        size_bytes=size_bytes,
        sha256=sha256,
        calling_ae_title=calling_ae_title,
        patient_id=text_value(ds, "PatientID", 64),
        accession_number=text_value(ds, "AccessionNumber", 16),
        study_date=text_value(ds, "StudyDate", 8),
        study_description=text_value(ds, "StudyDescription", 64),
        modality=text_value(ds, "Modality", 16),
        series_number=int_value(ds, "SeriesNumber"),
        series_description=text_value(ds, "SeriesDescription", 64),
        expected_study_instances=int_value(ds, "NumberOfStudyRelatedInstances"),
        expected_series_instances=int_value(ds, "NumberOfSeriesRelatedInstances"),
        counts=image_counts(ds),
    )


def _uid(ds: Dataset, keyword: str) -> str:
    # Checked before the instance was stored: present and valid.
    return header_values.text(ds, keyword) or ""


@dataclass(frozen=True)
class PendingInstance:
    """An acknowledged instance whose rows are not written yet.

    Its record is built by the writer (the dataset's values are decoded there, off the
    answer's path); ``sha256`` was computed by the receiving thread while the file's
    fsync ran. ``ds`` holds the header only (the receiver drops its pixel data first).
    """

    ds: Dataset
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    relpath: Path
    transfer_syntax_uid: str
    size_bytes: int
    calling_ae_title: str
    sha256: str

    def record(self) -> InstanceRecord:
        """The index row."""
        return instance_record(
            self.ds,
            transfer_syntax_uid=self.transfer_syntax_uid,
            relpath=self.relpath,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            calling_ae_title=self.calling_ae_title,
        )

    @property
    def manufacturer(self) -> str | None:
        """Manufacturer (0008,0070): our own result objects carry ours."""
        return text_value(self.ds, "Manufacturer", 64)


@dataclass(frozen=True)
class _Release:
    """Associations that sent these studies have ended (written after their instances)."""

    study_uids: frozenset[str]


@dataclass
class IndexWriter:
    """One thread writing the rows of acknowledged instances, a batch per transaction."""

    sessions: sessionmaker[Session]
    data_dir: Path
    clock: Callable[[], datetime]
    _queue: list[PendingInstance | _Release] = field(default_factory=list, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    #: SOP Instance UID -> (series UID, study UID) of queued, unwritten instances.
    _pending: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    _series: dict[str, tuple[str, int]] = field(default_factory=dict, init=False)
    _queued: int = field(default=0, init=False)
    _written: int = field(default=0, init=False)
    _failure: str | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)
    #: Callers waiting in :meth:`flush` (the writer then writes at once).
    _flushing: int = field(default=0, init=False)
    #: Whether the writer waits for a batch to gather (a put then need not wake it).
    _gathering: bool = field(default=False, init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._thread.start()

    @property
    def failure(self) -> str | None:
        """Why the last batch could not be written; ``None`` while the writer keeps up."""
        return self._failure

    def put(self, item: PendingInstance) -> None:
        """Queue an acknowledged instance's rows."""
        with self._cond:
            self._queue.append(item)
            self._queued += 1
            self._pending[item.sop_instance_uid] = (item.series_uid, item.study_uid)
            study, count = self._series.get(item.series_uid, (item.study_uid, 0))
            self._series[item.series_uid] = (study, count + 1)
            if not self._gathering or len(self._queue) >= MAX_BATCH:
                self._cond.notify_all()

    def release(self, study_uids: set[str]) -> None:
        """Mark these studies released once everything queued before is written."""
        with self._cond:
            self._queue.append(_Release(frozenset(study_uids)))
            self._queued += 1
            self._cond.notify_all()

    def pending_placement(self, sop_uid: str, series_uid: str) -> tuple[str | None, str | None]:
        """Like :func:`~strokeflow.store.repository.placement`, for queued instances:
        the series of a queued instance and the study of a series with queued ones."""
        with self._cond:
            instance = self._pending.get(sop_uid)
            series = self._series.get(series_uid)
        return (instance[0] if instance else None, series[0] if series else None)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written; ``False`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._queued
            self._flushing += 1
            self._cond.notify_all()  # a gathering writer writes now
            try:
                while self._written < target:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._thread.is_alive():
                        return False
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (for up to ``timeout_s``), then stop the thread."""
        if not self.flush(timeout_s):
            with self._cond:
                left = sum(isinstance(i, PendingInstance) for i in self._queue)
            LOG.error(
                "index writer stopped with %d acknowledged instances unindexed (%s); "
                "the next start indexes their files",
                left,
                self._failure,
            )
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _next_batch(self) -> list[PendingInstance | _Release] | None:
        """Queued items up to and including the first release (``None``: stopping)."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            self._gather()
            batch: list[PendingInstance | _Release] = []
            for item in self._queue[:MAX_BATCH]:
                batch.append(item)
                if isinstance(item, _Release):
                    break
            return batch

    def _gather(self) -> None:
        """Wait up to :data:`GATHER_S` for more instances (the lock held by the caller)."""
        deadline = time.monotonic() + GATHER_S
        self._gathering = True
        try:
            while not (
                self._stopping
                or self._flushing
                or len(self._queue) >= MAX_BATCH
                or any(isinstance(item, _Release) for item in self._queue)
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
        finally:
            self._gathering = False

    def _run(self) -> None:
        delay_s = RETRY_FIRST_S
        while (batch := self._next_batch()) is not None:
            try:
                self._write(batch)
            except SQLAlchemyError as exc:
                self._failure = f"database error: {exc}".splitlines()[0]
                LOG.error("index writer: %d rows not written, retrying: %s", len(batch), exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=delay_s)
                    if self._stopping:
                        return
                delay_s = min(2 * delay_s, RETRY_MAX_S)
                continue
            except Exception:
                # A bug must not stop the writer with acknowledged rows queued behind it:
                # the batch stays unindexed until the next start's reconciliation.
                LOG.exception("index writer: %d rows not written", len(batch))
            delay_s = RETRY_FIRST_S
            self._failure = None
            self._done(batch)

    def _done(self, batch: list[PendingInstance | _Release]) -> None:
        with self._cond:
            del self._queue[: len(batch)]
            self._written += len(batch)
            for item in batch:
                if isinstance(item, _Release):
                    continue
                self._pending.pop(item.sop_instance_uid, None)
                study, count = self._series[item.series_uid]
                if count > 1:
                    self._series[item.series_uid] = (study, count - 1)
                else:
                    del self._series[item.series_uid]
            self._cond.notify_all()

    def _write(self, batch: list[PendingInstance | _Release]) -> None:
        pending = [i for i in batch if isinstance(i, PendingInstance)]
        records = [i.record() for i in pending]
        manufacturers = {
            i.sop_instance_uid: i.manufacturer
            for i in pending
            if header_values.text(i.ds, "SOPClassUID") in RESULT_SOP_CLASSES
        }
        release = batch[-1] if isinstance(batch[-1], _Release) else None
        now = self.clock()
        try:
            with self.sessions() as session, session.begin():
                own = _own_results(session, records, manufacturers)
                note_instances(session, records, now, own_result_uids=own)
                if release is not None:
                    mark_released(session, release.study_uids, now)
            return
        except ValueError:
            pass  # some record contradicts the index: find it, one by one
        with self.sessions() as session:
            for record in records:
                try:
                    with session.begin():
                        own = _own_results(session, [record], manufacturers)
                        note_instances(session, [record], now, own_result_uids=own)
                except ValueError as exc:
                    self._quarantine(record, str(exc))
            if release is not None:
                with session.begin():
                    mark_released(session, release.study_uids, now)

    def _quarantine(self, record: InstanceRecord, reason: str) -> None:
        """An acknowledged instance that contradicts the index (another association had
        put its series or instance elsewhere a moment before): kept for a person."""
        try:
            where = quarantine_stored(
                self.data_dir, Path(record.path), f"acknowledged but not indexed: {reason}"
            )
        except OSError as exc:
            LOG.error(
                "study %s instance %s cannot be indexed (%s) nor quarantined: %s",
                record.study_uid,
                record.sop_instance_uid,
                reason,
                exc,
            )
            return
        LOG.error(
            "study %s instance %s was acknowledged but cannot be indexed (%s); quarantined as %s",
            record.study_uid,
            record.sop_instance_uid,
            reason,
            where.name,
        )


def _own_results(
    session: Session, records: list[InstanceRecord], manufacturers: dict[str, str | None]
) -> set[str]:
    return {
        r.sop_instance_uid
        for r in records
        if r.sop_class_uid in RESULT_SOP_CLASSES
        and is_own_result(
            session, r.sop_class_uid, r.sop_instance_uid, manufacturers.get(r.sop_instance_uid)
        )
    }
