"""Study completion: the receiving → complete → queued state machine, persisted in SQL.

A study is *complete* when

* every association that sent to it has ended (released or aborted) and neither an
  instance nor that end happened in the last ``quiet_period_s`` (``quiet_period``);
* the sender announced the count (Number of Study Related Instances) and it is reached
  (``expected_count``);
* no instance arrived for the longer ``quiet_timeout_s``, associations or not
  (``quiet_timeout``; covers senders that keep an association open);
* every association has ended and the study's own counts say it is whole (Number of
  Temporal Positions, Images in Acquisition or Number of Series Related Instances filled by
  the vendor, see :mod:`strokeflow.store.wholeness`), without waiting out the quiet period
  (``acquisition_whole``; only when :class:`CompletionRules` has the data directory);
* an operator forces it (``forced``).

A complete study is *queued*: a :class:`~strokeflow.store.models.Job` row with the next
version is created. An instance that arrives after that (new, or a changed resend) puts
the study back to *receiving*; when it completes again the next job has version n + 1.
Nothing is dropped and identical resends change nothing.

StrokeFlow's own result objects coming back (a PACS that routes the whole study back, a
user who re-sends it) are stored but change no state (:func:`is_own_result`): the study is
not reopened, so no new job version analyses it again and sends the results once more.

Because the state is in SQL, a restarted listener resumes half-received studies:
:func:`release_orphaned` marks them released (their associations died with the old
process) as of the restart, so the quiet period, counted from the restart, gives an
interrupted sender time to reconnect before the study completes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from sqlalchemy import Row, and_, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from strokeflow.store import transitions
from strokeflow.store.models import (
    Dispatch,
    Instance,
    Job,
    JobInput,
    Series,
    Study,
    StudyState,
)
from strokeflow.store.repository import (
    COUNT_COLUMNS,
    InstanceChange,
    InstanceRecord,
    StudyStatus,
    count_values,
    lock_study,
    record_instance,
    record_instances,
    recorded_counts,
)
from strokeflow.store.wholeness import (
    ImageCounts,
    Wholeness,
    read_counts,
    series_wholeness,
    study_wholeness,
)

LOG = logging.getLogger(__name__)

#: The manufacturer our result objects carry (report/: SC, SR, SEG).
OWN_MANUFACTURER = "StrokeFlow"
#: The SOP classes StrokeFlow writes its results in (SR in any of its fallback classes).
RESULT_SOP_CLASSES = frozenset(
    {
        SecondaryCaptureImageStorage,
        SegmentationStorage,
        ComprehensiveSRStorage,
        Comprehensive3DSRStorage,
        EnhancedSRStorage,
    }
)


class StudyStateError(ValueError):
    """A transition that the study's current state does not allow."""


@dataclass(frozen=True)
class CompletionRules:
    """When a receiving study counts as complete (seconds).

    With ``data_dir`` (where the instances' paths are rooted), a released study whose
    acquisition counts say it is whole completes without waiting out the quiet period.
    """

    quiet_period_s: float = 10.0
    quiet_timeout_s: float = 300.0
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.quiet_period_s <= 0 or self.quiet_timeout_s <= 0:
            raise ValueError("quiet periods must be positive")


def is_own_result(
    session: Session, sop_class_uid: str, sop_instance_uid: str, manufacturer: str | None
) -> bool:
    """Whether an instance is one of StrokeFlow's own result objects.

    It is when it is of a result class (SC, SEG, SR) and either carries our manufacturer
    or was dispatched by us (its SOP Instance UID, or that of the SR class it was sent
    as, is in a dispatch row), which holds even if a PACS rewrote the manufacturer.

    Parameters
    ----------
    session : Session
    sop_class_uid, sop_instance_uid : str
    manufacturer : str, optional
        The instance's Manufacturer (0008,0070).

    Returns
    -------
    bool
    """
    if sop_class_uid not in RESULT_SOP_CLASSES:
        return False
    if manufacturer == OWN_MANUFACTURER:
        return True
    dispatched = session.execute(
        select(Dispatch.id)
        .where(
            or_(
                Dispatch.sop_instance_uid == sop_instance_uid,
                Dispatch.sent_sop_instance_uid == sop_instance_uid,
            )
        )
        .limit(1)
    ).first()
    return dispatched is not None


def note_instance(
    session: Session, record: InstanceRecord, now: datetime, *, own_result: bool = False
) -> InstanceChange:
    """Record a stored instance and move its study's state accordingly (caller commits).

    A new or changed instance keeps (or puts back) the study in *receiving* and marks it
    as having an association in progress; an identical resend changes nothing. A study
    whose announced instance count is reached completes at once. One of our own result
    objects (``own_result``, see :func:`is_own_result`) is recorded and changes nothing.

    Parameters
    ----------
    session : Session
    record : InstanceRecord
    now : datetime
        Aware UTC reception time.
    own_result : bool
        The instance is a StrokeFlow result object.

    Returns
    -------
    InstanceChange
    """
    study, change = record_instance(session, record, now)
    if change is InstanceChange.DUPLICATE:
        return change
    if own_result:
        LOG.debug(
            "study %s: our own result object %s stored; the study stays %s",
            study.study_uid,
            record.sop_instance_uid,
            study.state.value,
        )
        return change
    _follow_new_data(session, study, record.sop_instance_uid, now)
    return change


def note_instances(
    session: Session,
    records: Sequence[InstanceRecord],
    now: datetime,
    *,
    own_result_uids: Collection[str] = frozenset(),
) -> dict[str, InstanceChange]:
    """:func:`note_instance` for a batch of files already in place (caller commits).

    The receiver's index writer records what it has acknowledged this way, a few
    statements per study instead of per instance (:func:`record_instances`); each
    record's path is where its file is. A study's state moves once per batch, as it
    would after the batch's last new instance.

    Parameters
    ----------
    session : Session
    records : sequence of InstanceRecord
    now : datetime
        Aware UTC time of reception.
    own_result_uids : collection of str
        SOP Instance UIDs among ``records`` that are StrokeFlow result objects.

    Returns
    -------
    dict
        What each record changed, by SOP Instance UID.

    Raises
    ------
    ValueError
        A record contradicts the index (series of another study, instance of another
        series); nothing of the batch should be committed then.
    """
    changes: dict[str, InstanceChange] = {}
    for study, recorded in record_instances(session, records, now):
        changes.update((r.sop_instance_uid, c) for r, c in recorded)
        new_data = [
            r
            for r, c in recorded
            if c is not InstanceChange.DUPLICATE and r.sop_instance_uid not in own_result_uids
        ]
        if new_data:
            _follow_new_data(session, study, new_data[-1].sop_instance_uid, now)
    return changes


def _follow_new_data(session: Session, study: StudyStatus, sop_uid: str, now: datetime) -> None:
    """New data keeps (or puts back) the study in receiving, with an association in
    progress, and completes it when its announced count is reached."""
    values: dict[str, object] = {}
    if study.state is not StudyState.RECEIVING:
        LOG.info(
            "study %s: instance %s arrived after the study was %s; reopened, its next job "
            "will be version %d",
            study.study_uid,
            sop_uid,
            study.state.value,
            study.version + 1,
        )
        values.update(state=StudyState.RECEIVING, completed_at=None, completion_reason=None)
    if study.released:
        values["released"] = False
    if study.expected_instances and study.instance_count >= study.expected_instances:
        values.update(
            state=StudyState.COMPLETE, completed_at=now, completion_reason="expected_count"
        )
        LOG.info(
            "study %s complete (expected_count): %d instances",
            study.study_uid,
            study.instance_count,
        )
    if values:
        session.connection().execute(update(Study).where(Study.id == study.id).values(**values))


def mark_released(session: Session, study_uids: Iterable[str], now: datetime) -> int:
    """Note that the association which sent these studies has ended (caller commits).

    Returns
    -------
    int
        How many receiving studies were marked.
    """
    uids = sorted(set(study_uids))
    if not uids:
        return 0
    # Without the ORM's synchronisation, which evaluated the WHERE clause in Python for
    # every release (setting up every mapper the first time), ~1 ms a release; Study
    # objects loaded in this session are expired instead.
    result = session.execute(
        update(Study)
        .where(Study.study_uid.in_(uids), Study.state == StudyState.RECEIVING)
        .values(released=True, released_at=now),
        execution_options={"synchronize_session": False},
    )
    for loaded in list(session.identity_map.values()):
        if isinstance(loaded, Study):
            session.expire(loaded)
    return int(result.rowcount)  # type: ignore[attr-defined]


def release_orphaned(session: Session, now: datetime) -> int:
    """At listener start: every receiving study's associations died with the old process,
    and its quiet period starts afresh at ``now``.

    Returns
    -------
    int
        How many studies were marked released (caller commits).
    """
    result = session.execute(
        update(Study)
        .where(Study.state == StudyState.RECEIVING)
        .values(released=True, released_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _complete(study: Study, now: datetime, reason: str) -> None:
    study.state = StudyState.COMPLETE
    study.completed_at = now
    study.completion_reason = reason
    LOG.info("study %s complete (%s): %d instances", study.study_uid, reason, study.instance_count)


def complete_due(session: Session, rules: CompletionRules, now: datetime) -> list[Study]:
    """Complete every receiving study whose quiet period or quiet timeout has passed.

    Rows another sweeper holds are skipped (PostgreSQL ``SKIP LOCKED``) and seen next time.

    Returns
    -------
    list of Study
        The studies completed now (caller commits).
    """
    quiet = now - timedelta(seconds=rules.quiet_period_s)
    timeout = now - timedelta(seconds=rules.quiet_timeout_s)
    stmt = (
        select(Study)
        .where(
            Study.state == StudyState.RECEIVING,
            or_(
                and_(
                    Study.released.is_(True),
                    Study.last_instance_at <= quiet,
                    Study.released_at <= quiet,
                ),
                Study.last_instance_at <= timeout,
            ),
        )
        .order_by(Study.last_instance_at)
        .with_for_update(skip_locked=True)
    )
    done = []
    for study in session.scalars(stmt):
        assert study.last_instance_at is not None
        quiet_ok = (
            study.released
            and study.last_instance_at <= quiet
            and study.released_at is not None
            and study.released_at <= quiet
        )
        reason = "quiet_period" if quiet_ok else "quiet_timeout"
        _complete(study, now, reason)
        done.append(study)
    if rules.data_dir is not None:
        done += _complete_whole(session, rules.data_dir, now)
    return done


def study_is_whole(session: Session, study: Study, data_dir: Path) -> Wholeness:
    """What the counts of a study's stored series say about the study.

    The counts are those the receiver recorded in the instance rows; no file is opened.
    A row indexed before rows held them (revision 0007) has its file's header read, and
    the counts recorded in it, so that each such file is read once (caller commits).

    Parameters
    ----------
    session : Session
    study : Study
    data_dir : Path
        Root of the instances' paths (read only for rows without counts).

    Returns
    -------
    Wholeness
    """
    rows = session.execute(
        select(
            Series.id.label("series_id"),
            Series.expected_instances,
            Instance.id.label("instance_id"),
            Instance.path,
            *(Instance.__table__.c[name] for name in COUNT_COLUMNS),
        )
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
    ).all()
    images: dict[int, list[ImageCounts | None]] = {}
    expected: dict[int, int | None] = {}
    for row in rows:
        images.setdefault(row.series_id, []).append(_instance_counts(session, row, data_dir))
        expected[row.series_id] = row.expected_instances
    return study_wholeness(
        series_wholeness(series_images, expected[series_id])
        for series_id, series_images in images.items()
    )


def _instance_counts(session: Session, row: Row[Any], data_dir: Path) -> ImageCounts | None:
    """An instance row's counts; read from its file (and recorded) if the row has none."""
    recorded = recorded_counts(row)
    if recorded is not None:
        return recorded
    counts = read_counts(data_dir / row.path)
    if counts is not None:
        # Only while still unrecorded: a replacement written meanwhile brought its own.
        session.connection().execute(
            update(Instance)
            .where(Instance.id == row.instance_id, Instance.number_of_frames.is_(None))
            .values(**count_values(counts))
        )
    return counts


def _complete_whole(session: Session, data_dir: Path, now: datetime) -> list[Study]:
    """Complete every released receiving study that its counts say is whole."""
    stmt = (
        select(Study)
        .where(Study.state == StudyState.RECEIVING, Study.released.is_(True))
        .order_by(Study.last_instance_at)
        .with_for_update(skip_locked=True)
    )
    done = []
    for study in session.scalars(stmt):
        if study_is_whole(session, study, data_dir) is Wholeness.WHOLE:
            _complete(study, now, "acquisition_whole")
            done.append(study)
    return done


def force_complete(session: Session, study_uid: str, now: datetime) -> Study:
    """Complete a receiving study now (operator's decision; caller commits).

    Raises
    ------
    StudyStateError
        The study is unknown, or already complete or queued (give the job version).
    """
    study = lock_study(session, study_uid)
    if study is None:
        raise StudyStateError(f"study {study_uid} has not been received")
    if study.state is StudyState.QUEUED:
        raise StudyStateError(
            f"study {study_uid} is already queued as job version {study.version}; "
            "send more instances to make a new version"
        )
    if study.state is StudyState.RECEIVING:
        _complete(study, now, "forced")
    return study


def queue_complete(session: Session, now: datetime) -> list[Job]:
    """Create the next job version for every complete study and mark it queued.

    The job row is the truth (state ``queued``); a task queue only needs its id, after the
    caller has committed.

    Returns
    -------
    list of Job
        The new jobs, with their ``study`` loaded.
    """
    stmt = (
        select(Study)
        .where(Study.state == StudyState.COMPLETE)
        .order_by(Study.completed_at)
        .with_for_update(skip_locked=True)
    )
    jobs = []
    for study in session.scalars(stmt):
        study.version += 1
        study.state = StudyState.QUEUED
        study.queued_at = now
        job = transitions.new_job(study, now)
        session.add(job)
        jobs.append(job)
        LOG.info("study %s queued as job version %d", study.study_uid, study.version)
    session.flush()
    for job in jobs:
        # The version's inputs, fixed now: a later changed resend goes to new files.
        session.execute(
            insert(JobInput).from_select(
                ["job_id", "path", "sha256"],
                select(literal(job.id), Instance.path, Instance.sha256)
                .join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == job.study_id),
            )
        )
    return jobs


def sweep(session: Session, rules: CompletionRules, now: datetime) -> list[Job]:
    """One pass of the completion loop: complete what is due, then queue what is complete.

    Returns
    -------
    list of Job
        Jobs created in this pass (caller commits).
    """
    complete_due(session, rules, now)
    return queue_complete(session, now)
