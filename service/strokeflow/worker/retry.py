"""``strokeflow retry JOB``: run a failed job again, or resend what could not be delivered."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from strokeflow.store.models import Dispatch, DispatchState, Job, JobState


class RetryError(ValueError):
    """The job cannot be retried in its state; the message says why and what to do."""


def retry_job(session: Session, job_id: int, now: datetime) -> str:
    """Re-queue a failed job (fresh attempts), or put a job's failed dispatch rows back to
    pending. The caller commits and, for a re-queued job, enqueues its id.

    Returns
    -------
    str
        ``"analysis"`` or ``"dispatch"``: what will run again.

    Raises
    ------
    RetryError
        Unknown job, or nothing to retry (queued, running, or everything delivered).
    """
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
    if job is None:
        raise RetryError(f"job {job_id} does not exist (see `strokeflow jobs`)")
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        job.state = JobState.QUEUED
        job.attempts = 0
        job.next_attempt_at = None
        job.enqueued_at = None
        job.lease_until = None
        job.queued_at = now
        return "analysis"
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        raise RetryError(f"job {job_id} is already {job.state.value}; wait for it to finish")
    failed = session.scalars(
        select(Dispatch).where(
            Dispatch.job_id == job_id,
            Dispatch.state.in_([DispatchState.FAILED, DispatchState.PENDING]),
        )
    ).all()
    if not failed:
        raise RetryError(
            f"job {job_id} is {job.state.value} and every result object was delivered; "
            "to analyse again, send the study again (it becomes a new job version)"
        )
    send_again(job, failed)
    return "dispatch"


def send_again(job: Job, rows: Iterable[Dispatch]) -> None:
    """Put delivery rows back to pending with fresh attempts, and the job back to dispatch."""
    for row in rows:
        row.state = DispatchState.PENDING
        row.attempts = 0
        row.next_attempt_at = None
    job.state = JobState.SUCCEEDED
    job.error = None
