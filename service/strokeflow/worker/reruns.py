"""The operator's two ways to run a job again: re-analyse it, or re-send its results.

They are different actions with different names everywhere (``strokeflow reanalyse`` and
``strokeflow resend``, the dashboard's *Re-analyse* and *Re-send results*): re-analysing
makes new results, re-sending delivers the ones there are. Both are compare-and-set
transitions of :mod:`strokeflow.store.transitions`; the caller commits.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from strokeflow.config import Destination
from strokeflow.dispatch.dispatcher import plan_dispatch
from strokeflow.store import transitions
from strokeflow.store.models import Dispatch, DispatchState, Job


class RerunError(ValueError):
    """The job cannot be re-analysed or re-sent in its state; the message says why."""


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise RerunError(f"job {job_id} does not exist (see `strokeflow jobs`)")
    return job


def reanalyse(session: Session, job_id: int, now: datetime) -> str:
    """Queue the job to be analysed again (the caller commits, then enqueues its id).

    Returns
    -------
    str
        What happened, in words: fresh attempts for a failed or cancelled job, the next
        attempt's number for a finished one.

    Raises
    ------
    RerunError
        Unknown job, or it is queued or running (its attempt is still to come).
    """
    job = _job(session, job_id)
    was_finished = job.state in transitions.FINISHED
    if not transitions.reanalyse(session, job_id, now=now):
        session.refresh(job)
        raise RerunError(f"job {job_id} is already {job.state.value}; wait for it to finish")
    session.refresh(job)
    if was_finished:
        return f"job {job_id} queued for attempt {job.attempts + 1}"
    return f"job {job_id} queued for analysis again"


def resend(
    session: Session,
    job_id: int,
    *,
    destinations: list[Destination],
    data_dir: Path,
    undelivered_only: bool = False,
) -> str:
    """Send a finished job's result objects again (the dispatch loop sends them).

    Parameters
    ----------
    destinations : list of Destination
        The configured destinations: rows are planned for any configured since the job
        finished, so a new PACS gets the results too.
    data_dir : Path
        Root of the job's results folder.
    undelivered_only : bool
        Only the objects not delivered yet (failed, or still pending); by default every
        object to every destination.

    Returns
    -------
    str
        What will be sent, in words.

    Raises
    ------
    RerunError
        Unknown job, not finished, or nothing to send.
    """
    job = _job(session, job_id)
    if job.state not in transitions.FINISHED:
        raise RerunError(
            f"job {job_id} is {job.state.value}; only a finished analysis has results to send"
        )
    rows = list(session.scalars(select(Dispatch).where(Dispatch.job_id == job_id)))
    planned = {r.destination for r in rows}
    missing = [d for d in destinations if str(d) not in planned]
    if missing and job.results_path and not undelivered_only:
        files = sorted((data_dir / job.results_path / "dicom").rglob("*.dcm"))
        plan_dispatch(session, job, files, missing, data_dir)
        session.flush()
        rows = list(session.scalars(select(Dispatch).where(Dispatch.job_id == job_id)))
    if undelivered_only:
        rows = [r for r in rows if r.state is not DispatchState.SENT]
        if not rows:
            raise RerunError(f"job {job_id}: every result object was delivered; nothing to send")
    if not rows:
        raise RerunError(
            f"job {job_id} has no result objects to send: no destination is configured "
            "or the job wrote no DICOM objects"
        )
    if not transitions.resend(session, job_id, [r.id for r in rows]):
        session.refresh(job)
        raise RerunError(f"job {job_id} is {job.state.value} now; try again when it has finished")
    destinations_text = ", ".join(sorted({r.destination for r in rows}))
    return f"job {job_id}: {len(rows)} objects will be sent again to {destinations_text}"
