"""The dashboard's actions on jobs and studies, as transitions of the job table.

* re-analyse: :func:`strokeflow.worker.reruns.reanalyse` (a failed or cancelled job gets
  fresh attempts; a finished one is analysed again as its next attempt).
* re-send: :func:`strokeflow.worker.reruns.resend`, every result object of a finished job
  to every configured destination; the service's dispatch loop sends them.
* force-complete: :func:`strokeflow.store.studies.force_complete` then queue the job.

The caller commits the transaction; job ids to put on the task queue are returned.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from strokeflow.config import Settings
from strokeflow.store.studies import StudyStateError, force_complete, queue_complete
from strokeflow.worker import reruns


class ActionError(ValueError):
    """The action is not possible now; the message says why and what to do instead."""


def reanalyse(session: Session, job_id: int, now: datetime) -> tuple[str, list[int]]:
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
    try:
        return reruns.reanalyse(session, job_id, now), [job_id]
    except reruns.RerunError as exc:
        raise ActionError(str(exc)) from exc


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
    try:
        message = reruns.resend(
            session, job_id, destinations=list(settings.destinations), data_dir=settings.data_dir
        )
    except reruns.RerunError as exc:
        raise ActionError(str(exc)) from exc
    return message, []


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
