"""Every change of a job's state, as named compare-and-set statements.

Each transition is one ``UPDATE jobs ... WHERE id = :id AND state IN (from-states)`` (and,
for a running job, the worker holding it), and returns whether it took. Two processes
racing for the same job cannot both win: the loser's statement matches no row, and it
learns so from the ``False`` instead of overwriting the winner. No other module writes
``jobs.state``; a test holds the package to that.

===============  ===================================  ==========
transition       from                                 to
===============  ===================================  ==========
new_job          (a new study version)                queued
claim            queued, due                          running
renew_lease      running, held by the worker          running
finish           running, held by the worker          succeeded
fail             running, held by the worker          failed
requeue          running, held by the worker          queued
reanalyse        failed, cancelled, succeeded,        queued
                 dispatched
resend           succeeded, dispatched                succeeded
mark_dispatched  succeeded                            dispatched
===============  ===================================  ==========

The caller owns the transaction: a transition that took is undone with everything else
if the caller rolls back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, update
from sqlalchemy.orm import Session

from strokeflow.store.models import Dispatch, DispatchState, Job, JobState, Study

#: States a job is analysed again from: its last attempt ended, one way or another.
REANALYSABLE = (JobState.FAILED, JobState.CANCELLED, JobState.SUCCEEDED, JobState.DISPATCHED)
#: States with results on disk to send.
FINISHED = (JobState.SUCCEEDED, JobState.DISPATCHED)
#: States whose attempt is still to come or under way.
ACTIVE = (JobState.QUEUED, JobState.RUNNING)


def _set(
    session: Session, job_id: int, where: Collection[ColumnElement[bool]], **values: Any
) -> bool:
    result = session.execute(update(Job).where(Job.id == job_id, *where).values(**values))
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def _held(worker: str, lease_expired_before: datetime | None) -> list[ColumnElement[bool]]:
    # A running job belongs to the worker that claimed it; the maintenance loop may act on
    # it only once that worker's lease has run out.
    where = [Job.state == JobState.RUNNING, Job.worker == worker]
    if lease_expired_before is not None:
        where.append(Job.lease_until < lease_expired_before)
    return where


def new_job(study: Study, now: datetime) -> Job:
    """The job row of the study's current version, ``queued`` (caller adds and commits).

    A job is born queued: its inputs are fixed when the version is queued, so there is
    nothing it waits for but a worker.
    """
    return Job(
        study=study,
        version=study.version,
        state=JobState.QUEUED,
        attempts=0,
        instance_count=study.instance_count,
        first_instance_at=study.first_instance_at,
        last_instance_at=study.last_instance_at,
        completed_at=study.completed_at,
        queued_at=now,
    )


def claim(session: Session, job_id: int, *, worker: str, now: datetime, lease_s: float) -> bool:
    """``queued`` and due → ``running`` under ``worker``'s lease, counting one attempt.

    The job id may sit on the task queue twice (a lost message re-enqueued, a retry);
    only one worker's claim takes, so the job runs once. A job in its back-off is not
    due and stays queued.
    """
    due = (Job.next_attempt_at.is_(None)) | (Job.next_attempt_at <= now)
    return _set(
        session,
        job_id,
        [Job.state == JobState.QUEUED, due],
        state=JobState.RUNNING,
        attempts=Job.attempts + 1,
        worker=worker,
        started_at=now,
        heartbeat_at=now,
        lease_until=now + timedelta(seconds=lease_s),
    )


def renew_lease(
    session: Session, job_id: int, *, worker: str, now: datetime, lease_s: float
) -> bool:
    """``running`` → ``running`` with the lease extended, only while ``worker`` holds it.

    A worker whose lease was already taken over (it stalled, the job was re-queued and
    claimed elsewhere) must not extend the new holder's lease.
    """
    return _set(
        session,
        job_id,
        _held(worker, None),
        heartbeat_at=now,
        lease_until=now + timedelta(seconds=lease_s),
    )


def finish(
    session: Session,
    job_id: int,
    *,
    worker: str,
    now: datetime,
    results_path: str,
    summary: Mapping[str, Any],
) -> bool:
    """``running`` (held by ``worker``) → ``succeeded``, with the results' folder and volumes.

    A worker that lost its lease finds the job re-queued or run by another worker; its
    late results must not replace that attempt's, so it finishes only while it holds the
    job. The caller plans the dispatch rows in the same transaction, so they exist exactly
    when the job is succeeded.
    """
    return _set(
        session,
        job_id,
        _held(worker, None),
        **summary,
        state=JobState.SUCCEEDED,
        finished_at=now,
        results_path=results_path,
        lease_until=None,
        error=None,
    )


def fail(
    session: Session,
    job_id: int,
    *,
    worker: str,
    now: datetime,
    error: str,
    lease_expired_before: datetime | None = None,
) -> bool:
    """``running`` (held by ``worker``) → ``failed`` for good, with the reason.

    Used when an attempt failed and no retry would help (nothing to analyse, attempts
    used up). ``lease_expired_before`` is the maintenance loop's guard: it fails a job of
    a dead worker only if that worker's lease has indeed run out.
    """
    return _set(
        session,
        job_id,
        _held(worker, lease_expired_before),
        state=JobState.FAILED,
        finished_at=now,
        lease_until=None,
        error=error,
    )


def requeue(
    session: Session,
    job_id: int,
    *,
    worker: str,
    now: datetime,
    error: str,
    retry_at: datetime,
    attempt_counted: bool = True,
    lease_expired_before: datetime | None = None,
) -> bool:
    """``running`` (held by ``worker``) → ``queued``, to be tried again from ``retry_at``.

    The back-off is in the row (``next_attempt_at``) rather than in a delayed message, so
    it survives restarts; ``enqueued_at`` is cleared so the maintenance loop enqueues the
    job when it is due. ``attempt_counted=False`` gives back the attempt the claim counted:
    an attempt that could not start (a full disk) must not use up the job's allowance.
    ``lease_expired_before``: as in :func:`fail`.
    """
    # A worker that died left no finish time; one that failed its attempt did.
    finished = {} if lease_expired_before is not None else {"finished_at": now}
    return _set(
        session,
        job_id,
        _held(worker, lease_expired_before),
        state=JobState.QUEUED,
        attempts=Job.attempts if attempt_counted else Job.attempts - 1,
        lease_until=None,
        next_attempt_at=retry_at,
        enqueued_at=None,
        error=error,
        **finished,
    )


def reanalyse(session: Session, job_id: int, *, now: datetime) -> bool:
    """``failed``, ``cancelled``, ``succeeded`` or ``dispatched`` → ``queued``, due at once.

    The operator's "analyse again". A failed or cancelled job gets fresh attempts (it used
    its allowance); a finished one keeps its count, so the next attempt is numbered on
    from it. The previous attempt's stage times and error are cleared: on the timeline
    they would read as the new attempt's. A queued or running job is left alone (its
    attempt is still to come).
    """
    fresh = Job.state.in_([JobState.FAILED, JobState.CANCELLED])
    return _set(
        session,
        job_id,
        [Job.state.in_(REANALYSABLE)],
        state=JobState.QUEUED,
        attempts=case((fresh, 0), else_=Job.attempts),
        queued_at=now,
        started_at=None,
        finished_at=None,
        dispatched_at=None,
        next_attempt_at=None,
        enqueued_at=None,
        lease_until=None,
        error=None,
    )


def resend(session: Session, job_id: int, dispatch_ids: Collection[int]) -> bool:
    """``succeeded`` or ``dispatched`` → ``succeeded``, the given delivery rows ``pending``.

    The operator's "send again": the analysis stands, its result objects go out again
    with fresh attempts and the dispatch loop picks them up (it sends for succeeded jobs
    only, hence the state). Only a finished job has results to send.
    """
    took = _set(
        session,
        job_id,
        [Job.state.in_(FINISHED)],
        state=JobState.SUCCEEDED,
        dispatched_at=None,
        error=None,
    )
    if took and dispatch_ids:
        session.execute(
            update(Dispatch)
            .where(Dispatch.job_id == job_id, Dispatch.id.in_(list(dispatch_ids)))
            .values(state=DispatchState.PENDING, attempts=0, next_attempt_at=None, error=None)
        )
    return took


def mark_dispatched(session: Session, job_id: int, *, now: datetime) -> bool:
    """``succeeded`` → ``dispatched``: every result object reached every destination.

    Only the dispatcher calls it, after reading every row sent; a job re-analysed in the
    meantime (queued again) is not marked.
    """
    return _set(
        session,
        job_id,
        [Job.state == JobState.SUCCEEDED],
        state=JobState.DISPATCHED,
        dispatched_at=now,
        error=None,
    )
