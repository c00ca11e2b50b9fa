"""Deliver a succeeded job's result objects, remembering every object's outcome in SQL.

The dispatch rows are planned once (:func:`plan_dispatch`, in the transaction that marks
the job succeeded). :func:`dispatch_job` takes the job's dispatch lease, sends the due
rows over one association per destination and records each answer; a destination that is
down gets its rows retried with back-off (:func:`dispatch_due`). When every row is sent
the job is ``dispatched``; rows that ran out of attempts leave the job ``succeeded`` with
the error text saying what did not arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Destination, RetryPolicy
from strokeflow.dicomnet.scu import DicomNetworkError
from strokeflow.dispatch.store_scu import ObjectOutcome, StoreItem, store_objects
from strokeflow.store import transitions
from strokeflow.store.models import Dispatch, DispatchState, Job, JobState

LOG = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class DispatchSummary:
    """Counts of one :func:`dispatch_job` call; ``None`` lease means another process holds it."""

    job_id: int
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def plan_dispatch(
    session: Session,
    job: Job,
    files: list[Path],
    destinations: list[Destination],
    data_dir: Path,
) -> int:
    """Add a pending dispatch row per (destination, result object) of ``job`` (caller commits).

    Returns
    -------
    int
        Rows added.
    """
    added = 0
    for path in files:
        meta = read_file_meta_info(path)
        for dest in destinations:
            session.add(
                Dispatch(
                    job_id=job.id,
                    destination=str(dest),
                    sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
                    sop_class_uid=str(meta.MediaStorageSOPClassUID),
                    path=str(path.relative_to(data_dir)),
                    state=DispatchState.PENDING,
                    attempts=0,
                )
            )
            added += 1
    return added


def _take_lease(
    sessions: sessionmaker[Session], job_id: int, now: datetime, policy: RetryPolicy
) -> bool:
    with sessions() as session, session.begin():
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.state == JobState.SUCCEEDED,
                or_(Job.dispatch_lease_until.is_(None), Job.dispatch_lease_until < now),
            )
            .values(dispatch_lease_until=now + timedelta(seconds=policy.lease_s))
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]


def _record(
    row: Dispatch,
    outcome: ObjectOutcome,
    now: datetime,
    policy: RetryPolicy,
    summary: DispatchSummary,
) -> None:
    # ``row.attempts`` was counted before the send (see dispatch_job).
    row.status = outcome.status
    row.sent_sop_class_uid = outcome.sent_sop_class_uid
    if outcome.stored:
        row.state = DispatchState.SENT
        row.sent_at = now
        row.error = None
        row.next_attempt_at = None
        row.sent_sop_instance_uid = outcome.sent_sop_instance_uid
        summary.sent += 1
        return
    row.error = outcome.error
    if outcome.permanent or row.attempts >= policy.dispatch_max_attempts:
        row.state = DispatchState.FAILED
        row.next_attempt_at = None
        summary.failed += 1
        summary.errors.append(f"{row.destination}: {row.path}: {outcome.error}")
    else:
        row.next_attempt_at = now + timedelta(seconds=policy.dispatch_delay_s(row.attempts))
        summary.retrying += 1


def dispatch_job(
    sessions: sessionmaker[Session],
    job_id: int,
    *,
    destinations: list[Destination],
    data_dir: Path,
    calling_ae_title: str,
    policy: RetryPolicy,
    clock: Clock = _utcnow,
    compress_pages: bool = True,
) -> DispatchSummary | None:
    """Send the job's due pending objects, one association per destination.

    Parameters
    ----------
    sessions : sessionmaker
    job_id : int
    destinations : list of Destination
        Configured destinations; rows for a destination no longer configured are sent to
        the address recorded in the row.
    data_dir : Path
        Root of the paths in the dispatch rows.
    calling_ae_title : str
    policy : RetryPolicy
    clock : callable
        Aware UTC now.
    compress_pages : bool
        Secondary Capture pages go RLE Lossless where a destination accepts it.

    Returns
    -------
    DispatchSummary or None
        ``None`` when the job is not succeeded or another process is sending it.
    """
    if not _take_lease(sessions, job_id, clock(), policy):
        return None
    summary = DispatchSummary(job_id)
    try:
        with sessions() as session:
            now = clock()
            with session.begin():
                rows = session.scalars(
                    select(Dispatch)
                    .where(
                        Dispatch.job_id == job_id,
                        Dispatch.state == DispatchState.PENDING,
                        or_(Dispatch.next_attempt_at.is_(None), Dispatch.next_attempt_at <= now),
                    )
                    .order_by(Dispatch.id)
                ).all()
                # Counted (and committed) before sending: a worker killed mid-send has
                # still used the attempt, so a PACS that crashes it cannot be tried forever.
                for row in rows:
                    row.attempts += 1
            by_dest: dict[str, list[Dispatch]] = {}
            for row in rows:
                by_dest.setdefault(row.destination, []).append(row)
            configured = {str(d): d for d in destinations}
            for dest_text, dest_rows in by_dest.items():
                dest = configured.get(dest_text) or Destination.parse(dest_text)
                items = [
                    StoreItem(data_dir / r.path, r.sop_class_uid, r.sop_instance_uid)
                    for r in dest_rows
                ]
                try:
                    outcomes = store_objects(
                        items, dest, calling_ae_title, compress_pages=compress_pages
                    )
                except (DicomNetworkError, OSError) as exc:
                    LOG.warning("job %d: %s; %d objects will be retried", job_id, exc, len(items))
                    outcomes = [ObjectOutcome(False, None, str(exc)) for _ in items]
                with session.begin():
                    now = clock()
                    for row, outcome in zip(dest_rows, outcomes, strict=True):
                        session.add(row)
                        _record(row, outcome, now, policy, summary)
                LOG.info(
                    "job %d: %s stored %d of %d objects",
                    job_id,
                    dest,
                    sum(o.stored for o in outcomes),
                    len(outcomes),
                )
            _settle(session, job_id, clock())
    finally:
        with sessions() as session, session.begin():
            session.execute(update(Job).where(Job.id == job_id).values(dispatch_lease_until=None))
    return summary


def _settle(session: Session, job_id: int, now: datetime) -> None:
    """Mark the job dispatched when every row is sent; name what failed otherwise."""
    with session.begin():
        states = list(session.scalars(select(Dispatch.state).where(Dispatch.job_id == job_id)))
        if states and all(s is DispatchState.SENT for s in states):
            if transitions.mark_dispatched(session, job_id, now=now):
                LOG.info("job %d dispatched: %d objects", job_id, len(states))
        elif DispatchState.FAILED in states and DispatchState.PENDING not in states:
            failed = states.count(DispatchState.FAILED)
            job = session.get(Job, job_id)
            assert job is not None
            job.error = (
                f"dispatch: {failed} of {len(states)} objects could not be delivered "
                f"(see `strokeflow job {job_id}`; `strokeflow resend {job_id} --undelivered` "
                "sends them again)"
            )


def dispatch_due(
    sessions: sessionmaker[Session],
    *,
    destinations: list[Destination],
    data_dir: Path,
    calling_ae_title: str,
    policy: RetryPolicy,
    clock: Clock = _utcnow,
    compress_pages: bool = True,
) -> list[DispatchSummary]:
    """Run :func:`dispatch_job` for every succeeded job with pending rows now due."""
    now = clock()
    with sessions() as session:
        job_ids = list(
            session.scalars(
                select(Dispatch.job_id)
                .join(Job, Job.id == Dispatch.job_id)
                .where(
                    Job.state == JobState.SUCCEEDED,
                    Dispatch.state == DispatchState.PENDING,
                    or_(Dispatch.next_attempt_at.is_(None), Dispatch.next_attempt_at <= now),
                )
                .distinct()
            )
        )
    done = []
    for job_id in sorted(job_ids):
        summary = dispatch_job(
            sessions,
            job_id,
            destinations=destinations,
            data_dir=data_dir,
            calling_ae_title=calling_ae_title,
            policy=policy,
            clock=clock,
            compress_pages=compress_pages,
        )
        if summary is not None:
            done.append(summary)
    return done
