"""The dashboard's actions on jobs and studies, as transitions of the job table.

* retry: a failed or cancelled job goes through :func:`strokeflow.worker.retry.retry_job`
  (fresh attempts); a finished job (succeeded or dispatched) is analysed again as its
  next attempt: state back to ``queued``, attempts kept so the worker counts one more.
* re-send: every result object of a finished job goes back to ``pending`` for every
  destination (rows are planned for destinations configured since), and the service's
  dispatch loop sends them.
* force-complete: :func:`strokeflow.store.studies.force_complete` then queue the job.

The caller commits the transaction; job ids to put on the task queue are returned.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from strokeflow.config import Settings
from strokeflow.dispatch.dispatcher import plan_dispatch
from strokeflow.store.models import Dispatch, Job, JobState
from strokeflow.store.studies import StudyStateError, force_complete, queue_complete
from strokeflow.worker.retry import RetryError, retry_job, send_again


class ActionError(ValueError):
    """The action is not possible now; the message says why and what to do instead."""


def _locked_job(session: Session, job_id: int) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
    if job is None:
        raise ActionError(f"job {job_id} does not exist")
    return job


def retry(session: Session, job_id: int, now: datetime) -> tuple[str, list[int]]:
    """Analyse the job again.

    Returns
    -------
    (str, list of int)
        What happened, in words, and the job ids to enqueue.

    Raises
    ------
    ActionError
        Unknown job, or it is queued or running.
    """
    job = _locked_job(session, job_id)
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        try:
            retry_job(session, job_id, now)
        except RetryError as exc:
            raise ActionError(str(exc)) from exc
        return f"job {job_id} queued for analysis again", [job_id]
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        raise ActionError(f"job {job_id} is already {job.state.value}; wait for it to finish")
    job.state = JobState.QUEUED
    job.queued_at = now
    # The previous attempt's stage times would read as this attempt's on the timeline.
    job.started_at = None
    job.finished_at = None
    job.dispatched_at = None
    job.next_attempt_at = None
    job.enqueued_at = None
    job.lease_until = None
    job.error = None
    return f"job {job_id} queued for attempt {job.attempts + 1}", [job_id]


def resend(
    session: Session,
    job_id: int,
    now: datetime,
    *,
    settings: Settings,
) -> tuple[str, list[int]]:
    """Send every result object of a finished job again to every configured destination.

    Returns the message and, like the other actions, the jobs to queue (none: the
    dispatcher picks the rows up).

    Raises
    ------
    ActionError
        Unknown job, not finished, or nothing to send (no destination, no objects).
    """
    job = _locked_job(session, job_id)
    if job.state not in (JobState.SUCCEEDED, JobState.DISPATCHED):
        raise ActionError(
            f"job {job_id} is {job.state.value}; only a finished analysis has results to send"
        )
    rows = list(session.scalars(select(Dispatch).where(Dispatch.job_id == job_id)))
    planned = {r.destination for r in rows}
    missing = [d for d in settings.destinations if str(d) not in planned]
    if missing and job.results_path:
        files = sorted((settings.data_dir / job.results_path / "dicom").rglob("*.dcm"))
        plan_dispatch(session, job, files, missing, settings.data_dir)
        session.flush()
        rows = list(session.scalars(select(Dispatch).where(Dispatch.job_id == job_id)))
    if not rows:
        raise ActionError(
            f"job {job_id} has no result objects to send: no destination is configured "
            "or the job wrote no DICOM objects"
        )
    send_again(job, rows)
    for row in rows:
        row.error = None
    job.dispatched_at = None
    destinations_text = ", ".join(sorted({r.destination for r in rows}))
    return f"job {job_id}: {len(rows)} objects will be sent again to {destinations_text}", []


def complete_study(session: Session, study_uid: str, now: datetime) -> tuple[str, list[int]]:
    """Complete a study still receiving and queue its analysis.

    Raises
    ------
    ActionError
        Unknown study, or already queued.
    """
    try:
        force_complete(session, study_uid, now)
    except StudyStateError as exc:
        raise ActionError(str(exc)) from exc
    queued = queue_complete(session, now)
    # Other studies that were complete are queued in the same pass; enqueue them all.
    ids = [j.id for j in queued]
    jobs = [j for j in queued if j.study.study_uid == study_uid]
    versions = ", ".join(f"job {j.id} (version {j.version})" for j in jobs)
    return f"study completed; queued {versions or 'nothing'}", ids
