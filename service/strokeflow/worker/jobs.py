"""Run one analysis job: claim it with a lease, analyse, store, plan and start dispatch.

Claiming is a compare-and-set on the job row (``queued`` → ``running``), so a job id
taken from the queue twice runs once. While the analysis runs, a heartbeat thread extends
the lease; a worker that dies stops renewing it and the maintenance loop re-queues the job.
Finishing is again a compare-and-set on (``running``, this worker), so a worker that lost
its lease cannot overwrite the attempt that replaced it, and the dispatch rows are created
exactly once, in the transaction that marks the job succeeded.
"""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from strokeflow.analyze import AnalyzeOptions, AnalyzeOutcome, NothingToAnalyseError, analyze_paths
from strokeflow.config import RetryPolicy, Settings
from strokeflow.dispatch.dispatcher import dispatch_job, plan_dispatch
from strokeflow.logsetup import log_context
from strokeflow.receive.storage import free_disk_mb
from strokeflow.store import transitions
from strokeflow.store.models import Job, JobState, Study
from strokeflow.store.repository import job_inputs

LOG = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def worker_name() -> str:
    """``host:pid:random`` — unique per worker process and run."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _volumes(outcome: AnalyzeOutcome) -> dict[str, Any]:
    """The job-row columns of the first analysis (CT perfusion first, then MRI)."""
    first = min(outcome.summaries, key=lambda s: 0 if s.kind == "ctp" else 1)
    return first.job_fields()


#: Room an analysis needs beyond its inputs' size: maps, pages and objects of a large
#: study (uncompressed Secondary Capture pages of a CT study are ~35 MB).
OUTPUT_ALLOWANCE_MB = 128.0


class DiskFullError(OSError):
    """Too little free space to write an analysis' results; the job is retried later."""


def scratch_root(data_dir: Path) -> Path:
    """Where attempts write before their results are moved into place."""
    return data_dir / "results" / ".work"


def check_free_space(data_dir: Path, inputs: list[Path], reserve_mb: float) -> None:
    """Refuse to start an analysis that could fill the disk.

    An analysis writes up to its inputs' size again (maps, objects) plus
    :data:`OUTPUT_ALLOWANCE_MB`, and must leave ``reserve_mb`` free: the reception
    watermark, below which the listener refuses associations.

    Raises
    ------
    DiskFullError
        With the free and the needed space; the attempt is retried with back-off, so
        the job runs once space returns.
    """
    input_mb = sum(p.stat().st_size for p in inputs if p.exists()) / 2**20
    needed_mb = reserve_mb + input_mb + OUTPUT_ALLOWANCE_MB
    free_mb = free_disk_mb(data_dir)
    if free_mb < needed_mb:
        raise DiskFullError(
            f"disk nearly full: {free_mb:.0f} MiB free in {data_dir}, the analysis needs "
            f"{needed_mb:.0f} MiB ({reserve_mb:.0f} MiB kept for reception); retried later"
        )


@dataclass
class JobRunner:
    """Executes jobs by id (the handler a worker gives its queue).

    Parameters
    ----------
    settings : Settings
        Data directory, destinations and AE title.
    sessions : sessionmaker
    policy : RetryPolicy, optional
        Leases and back-off; by default the settings' ``retry`` section.
    options : AnalyzeOptions, optional
        What to analyse with; by default the settings' ``analysis`` section.
    name : str
        This worker, recorded in the job row.
    """

    settings: Settings
    sessions: sessionmaker[Session]
    policy: RetryPolicy | None = None
    options: AnalyzeOptions | None = None
    name: str = field(default_factory=worker_name)
    clock: Clock = _utcnow

    analyze_options: AnalyzeOptions = field(init=False)
    retry: RetryPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.retry = self.policy or self.settings.retry
        analysis = self.settings.analysis
        self.analyze_options = self.options or AnalyzeOptions(ctp=analysis.ctp, mri=analysis.mri)

    def __call__(self, job_id: int) -> None:
        self.run(job_id)

    def claim(self, job_id: int) -> bool:
        """``queued`` (and due) → ``running`` under this worker's lease; ``False`` if taken."""
        with self.sessions() as session, session.begin():
            return transitions.claim(
                session, job_id, worker=self.name, now=self.clock(), lease_s=self.retry.lease_s
            )

    def _heartbeat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.retry.lease_s / 3):
            now = self.clock()
            try:
                with self.sessions() as session, session.begin():
                    transitions.renew_lease(
                        session, job_id, worker=self.name, now=now, lease_s=self.retry.lease_s
                    )
            except Exception as exc:  # the next beat may succeed; the lease covers a miss
                LOG.warning("job %d: heartbeat failed: %s", job_id, exc)

    def run(self, job_id: int) -> JobState | None:
        """Claim and run ``job_id``, then dispatch its results.

        Returns
        -------
        JobState or None
            The state this attempt left the job in; ``None`` if it was not claimable
            (already running elsewhere, finished, or waiting for its back-off).
        """
        with log_context(job_id=job_id):
            return self._run(job_id)

    def _run(self, job_id: int) -> JobState | None:
        if not self.claim(job_id):
            LOG.info("job %d: not claimable (taken, finished or not yet due); skipped", job_id)
            return None
        stop = threading.Event()
        # The heartbeat thread logs under the job's context too.
        beat = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._heartbeat, job_id, stop),
            daemon=True,
        )
        beat.start()
        try:
            state = self._execute(job_id)
        finally:
            stop.set()
            beat.join()
        if state is JobState.SUCCEEDED:
            with log_context(stage="dispatch"):
                dispatch_job(
                    self.sessions,
                    job_id,
                    destinations=list(self.settings.destinations),
                    data_dir=self.settings.data_dir,
                    calling_ae_title=self.settings.ae_title,
                    policy=self.retry,
                    clock=self.clock,
                    compress_pages=self.settings.compress_pages,
                )
        return state

    def _inputs(self, job_id: int) -> tuple[str, int, list[Path]]:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            study = session.get(Study, job.study_id)
            assert study is not None
            inputs = job_inputs(session, job_id, study.id)
            return study.study_uid, job.version, [self.settings.data_dir / p for p, _ in inputs]

    def _execute(self, job_id: int) -> JobState:
        data_dir = self.settings.data_dir
        # A fresh folder per attempt: a dead attempt's half-written files never mix in.
        scratch = scratch_root(data_dir) / f"job-{job_id}-{uuid.uuid4().hex[:8]}"
        try:
            study_uid, version, paths = self._inputs(job_id)
            final = data_dir / "results" / study_uid / f"v{version}"
            check_free_space(data_dir, paths, self.settings.min_free_disk_mb)
            with log_context(study_uid=study_uid, stage="analysis"):
                LOG.info("job %d: analysing study v%d (%d files)", job_id, version, len(paths))
                outcome = analyze_paths(paths, scratch, self.analyze_options)
            summary = _volumes(outcome)
        except Exception as exc:
            # A failed attempt's files (a full disk's last megabytes, say) go at once.
            shutil.rmtree(scratch, ignore_errors=True)
            return self._fail(job_id, exc)
        with self.sessions() as session, session.begin():
            took = transitions.finish(
                session,
                job_id,
                worker=self.name,
                now=self.clock(),
                results_path=str(final.relative_to(data_dir)),
                summary=summary,
            )
            if not took:
                LOG.warning(
                    "job %d: lease lost to another worker; this attempt's results dropped", job_id
                )
                shutil.rmtree(scratch, ignore_errors=True)
                return JobState.RUNNING
            # The row is locked by the update until commit: files and dispatch rows land
            # with the state, or (on an error here) not at all.
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            scratch.rename(final)
            dicom = sorted((final / "dicom").rglob("*.dcm"))
            job = session.get(Job, job_id)
            assert job is not None
            plan_dispatch(session, job, dicom, list(self.settings.destinations), data_dir)
        LOG.info(
            "job %d succeeded: core %s mL, Tmax>6 s %s mL",
            job_id,
            summary["core_ml"],
            summary["tmax6_ml"],
        )
        return JobState.SUCCEEDED

    def _fail(self, job_id: int, exc: Exception) -> JobState:
        permanent = isinstance(exc, NothingToAnalyseError)
        plain = permanent or isinstance(exc, DiskFullError)
        text = str(exc) if plain else "".join(traceback.format_exception_only(exc)).strip()
        now = self.clock()
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            attempts = job.attempts if job is not None else 0
            error = f"attempt {attempts}: {text}"
            if isinstance(exc, DiskFullError):
                # Nothing was analysed: the attempt is not counted, so a long disk-full
                # episode never fails a job; it runs once space returns.
                retry_at = now + timedelta(seconds=self.retry.job_delay_s(1))
                if not transitions.requeue(
                    session,
                    job_id,
                    worker=self.name,
                    now=now,
                    error=error,
                    retry_at=retry_at,
                    attempt_counted=False,
                ):
                    return JobState.RUNNING
                LOG.warning("job %d waits for disk space: %s", job_id, text)
                return JobState.QUEUED
            if permanent or attempts >= self.retry.max_attempts:
                if not transitions.fail(session, job_id, worker=self.name, now=now, error=error):
                    return JobState.RUNNING
                LOG.error("job %d failed for good after %d attempts: %s", job_id, attempts, text)
                return JobState.FAILED
            delay = self.retry.job_delay_s(attempts)
            # The maintenance loop enqueues it when due.
            retry_at = now + timedelta(seconds=delay)
            if not transitions.requeue(
                session, job_id, worker=self.name, now=now, error=error, retry_at=retry_at
            ):
                return JobState.RUNNING
            LOG.warning(
                "job %d attempt %d failed, retry in %.0f s: %s", job_id, attempts, delay, text
            )
            return JobState.QUEUED
