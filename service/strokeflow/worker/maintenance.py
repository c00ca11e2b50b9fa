"""The maintenance loop: re-queue jobs whose worker died, enqueue due retries, resend
results whose destination was down. Safe to run in several processes at once: every step
is a compare-and-set on the rows it changes."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import RetryPolicy, Settings
from strokeflow.dispatch.dispatcher import dispatch_due
from strokeflow.store import transitions
from strokeflow.store.models import Job, JobState
from strokeflow.worker.jobs import scratch_root

LOG = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def reap_expired(session: Session, policy: RetryPolicy, now: datetime) -> list[int]:
    """Running jobs whose lease expired: back to ``queued`` (or ``failed`` when out of
    attempts). Caller commits.

    Returns
    -------
    list of int
        Ids re-queued.
    """
    stmt = (
        select(Job)
        .where(Job.state == JobState.RUNNING, Job.lease_until < now)
        .with_for_update(skip_locked=True)
    )
    requeued = []
    for job in list(session.scalars(stmt)):
        job_id, worker, attempts = job.id, job.worker or "", job.attempts
        lost = f"attempt {attempts}: worker {worker} stopped renewing its lease"
        if attempts >= policy.max_attempts:
            if transitions.fail(
                session, job_id, worker=worker, now=now, error=lost, lease_expired_before=now
            ):
                LOG.error(
                    "job %d failed: %s (attempt %d of %d)",
                    job_id,
                    lost,
                    attempts,
                    policy.max_attempts,
                )
        elif transitions.requeue(
            session,
            job_id,
            worker=worker,
            now=now,
            error=lost,
            retry_at=now,
            lease_expired_before=now,
        ):
            requeued.append(job_id)
            LOG.warning("job %d re-queued: %s", job_id, lost)
    return requeued


def claim_due(session: Session, policy: RetryPolicy, now: datetime) -> list[int]:
    """Queued jobs that are due and not on the queue (never enqueued, back-off over, or
    the message presumably lost): mark them enqueued now. Caller commits, then enqueues."""
    stale = now - timedelta(seconds=policy.requeue_after_s)
    stmt = (
        select(Job)
        .where(
            Job.state == JobState.QUEUED,
            or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale),
        )
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    )
    ids = []
    for job in session.scalars(stmt):
        job.enqueued_at = now
        ids.append(job.id)
    return ids


def remove_stale_scratch(session: Session, scratch: Path) -> list[Path]:
    """Delete attempt folders (``job-<id>-<tag>``) of jobs not running now.

    A worker killed mid-analysis, or a full disk, leaves its attempt's folder behind; the
    job's next attempt writes a new one. Folders of running jobs are kept (their worker
    may still be writing); a folder that vanishes meanwhile was moved into place.

    Returns
    -------
    list of Path
        The folders removed.
    """
    if not scratch.is_dir():
        return []
    folders = {}
    for path in scratch.iterdir():
        name = path.name.split("-")
        if path.is_dir() and len(name) == 3 and name[0] == "job" and name[1].isdigit():
            folders[path] = int(name[1])
    if not folders:
        return []
    running = set(
        session.scalars(
            select(Job.id).where(Job.id.in_(set(folders.values())), Job.state == JobState.RUNNING)
        )
    )
    removed = [path for path, job_id in folders.items() if job_id not in running]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
        LOG.info("removed the stale attempt folder %s", path.name)
    return removed


def mark_enqueued(session: Session, job_ids: list[int], now: datetime) -> None:
    """Note that these jobs were just put on the queue (caller commits)."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=now))


@dataclass
class Maintenance:
    """One process's share of the upkeep, once per ``interval_s``.

    Parameters
    ----------
    settings : Settings
    sessions : sessionmaker
    enqueue : callable
        Puts job ids on the task queue.
    policy : RetryPolicy, optional
        By default the settings' ``retry`` section.
    dispatch : bool
        Also resend due dispatch rows.
    """

    settings: Settings
    sessions: sessionmaker[Session]
    enqueue: Callable[[list[int]], None]
    policy: RetryPolicy | None = None
    dispatch: bool = True
    interval_s: float = 1.0
    clock: Callable[[], datetime] = _utcnow

    retry: RetryPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.retry = self.policy or self.settings.retry

    def run_once(self) -> list[int]:
        """One pass; returns the job ids enqueued."""
        now = self.clock()
        with self.sessions() as session, session.begin():
            reap_expired(session, self.retry, now)
            due = claim_due(session, self.retry, now)
            remove_stale_scratch(session, scratch_root(self.settings.data_dir))
        if due:
            self.enqueue(due)
        if self.dispatch:
            dispatch_due(
                self.sessions,
                destinations=list(self.settings.destinations),
                data_dir=self.settings.data_dir,
                calling_ae_title=self.settings.ae_title,
                policy=self.retry,
                clock=self.clock,
                compress_pages=self.settings.compress_pages,
            )
        return due

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop``; errors are logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                LOG.exception("maintenance pass failed; retrying")
            stop.wait(self.interval_s)
