"""Worker processes and the all-in-one ``serve``: listener + workers + maintenance + health."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.logsetup import configure_logging
from strokeflow.ports import check_free, dicom_listen_port, http_listen_port
from strokeflow.queue.jobqueue import JobQueue, open_queue
from strokeflow.receive.storage import free_disk_mb
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.worker.health import start_health_server
from strokeflow.worker.jobs import OUTPUT_ALLOWANCE_MB, JobRunner
from strokeflow.worker.maintenance import Maintenance, mark_enqueued

LOG = logging.getLogger(__name__)


def enqueue_and_mark(queue: JobQueue, sessions: sessionmaker[Session]) -> Any:
    """A hook that puts job ids on ``queue`` and records when (for lost-message recovery)."""

    def hook(job_ids: list[int]) -> None:
        queue.enqueue(job_ids)
        with sessions() as session, session.begin():
            mark_enqueued(session, job_ids, datetime.now(UTC))

    return hook


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _s, _f: stop.set())


def run_worker(
    settings: Settings,
    *,
    maintenance: bool = True,
    stop: threading.Event | None = None,
    migrate: bool = True,
) -> None:
    """Take job ids off the queue and run them until SIGTERM/SIGINT (or ``stop``).

    Parameters
    ----------
    settings : Settings
        Its ``retry`` section is the lease and back-off policy.
    maintenance : bool
        Also run the maintenance loop in this process (split deployments).
    stop : threading.Event, optional
    migrate : bool
        Bring the database to head first.
    """
    stop = stop or threading.Event()
    _stop_on_signals(stop)
    engine = make_engine(settings.effective_database_url)
    if migrate:
        upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    runner = JobRunner(settings, sessions)
    queue = open_queue(settings.effective_queue_url, runner)
    LOG.info("worker %s taking jobs from %s", runner.name, queue.url.split("@")[-1])
    keeper = None
    if maintenance:
        keeper = threading.Thread(
            target=Maintenance(settings, sessions, enqueue_and_mark(queue, sessions)).run,
            args=(stop,),
            name="strokeflow-maintenance",
            daemon=True,
        )
        keeper.start()
    try:
        while not stop.is_set():
            try:
                if not queue.run_next():
                    stop.wait(0.5)
            except Exception:
                LOG.exception("worker loop error; going on")
                stop.wait(1.0)
    finally:
        if keeper is not None:
            keeper.join(timeout=10)
        engine.dispose()


def _worker_process(settings_data: dict[str, Any], parent_pid: int) -> None:
    settings = Settings.model_validate(settings_data)
    configure_logging(log_format=settings.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())

    def orphan_watch() -> None:
        # An orphan would keep taking jobs after serve is gone.
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                stop.set()

    threading.Thread(target=orphan_watch, daemon=True).start()
    run_worker(settings, maintenance=False, stop=stop, migrate=False)


class WorkerPool:
    """``count`` worker processes, restarted when one dies."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._context = multiprocessing.get_context("spawn")
        # The settings travel whole, ``retry`` section included.
        self._args = (settings.model_dump(mode="json"), os.getpid())
        self.processes: list[Any] = [self._start(i) for i in range(count)]
        self.restarts = 0

    def _start(self, index: int) -> Any:
        proc = self._context.Process(
            target=_worker_process, args=self._args, name=f"strokeflow-worker-{index}"
        )
        proc.start()
        return proc

    def alive(self) -> int:
        """How many worker processes are running."""
        return sum(p.is_alive() for p in self.processes)

    def supervise(self, stop: threading.Event) -> None:
        """Restart dead workers (their jobs come back through the lease) until ``stop``."""
        while not stop.wait(1.0):
            for i, proc in enumerate(self.processes):
                if not proc.is_alive():
                    LOG.error("%s exited with code %s; restarting it", proc.name, proc.exitcode)
                    self.processes[i] = self._start(i)
                    self.restarts += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every worker (it finishes its current job), then kill stragglers."""
        for proc in self.processes:
            if proc.is_alive():
                proc.terminate()
        for proc in self.processes:
            proc.join(timeout=timeout_s)
            if proc.is_alive():
                proc.kill()


class HttpHandle(Protocol):
    """Something serving HTTP in the background that can be stopped."""

    def shutdown(self) -> None:
        """Stop serving."""


#: Starts the HTTP side of ``serve``: (settings, sessions, enqueue, queue_pending, extra).
HttpStarter = Callable[
    [
        Settings,
        "sessionmaker[Session]",
        Callable[[list[int]], Any],
        Callable[[], int],
        Callable[[], dict[str, Any]],
    ],
    HttpHandle,
]


def disk_state(settings: Settings) -> dict[str, Any]:
    """Free space of the data directory against the reception watermark, for ``/health``.

    ``state`` is ``"ok"``; ``"low: analyses wait"`` when an analysis' output allowance no
    longer fits above the watermark; ``"full: ..."`` below the watermark, where the listener
    refuses associations too.
    """
    free_mb = free_disk_mb(settings.data_dir)
    if free_mb < settings.min_free_disk_mb:
        state = "full: associations refused, analyses wait"
    elif free_mb < settings.min_free_disk_mb + OUTPUT_ALLOWANCE_MB:
        state = "low: analyses wait"
    else:
        state = "ok"
    return {
        "state": state,
        "free_mb": round(free_mb),
        "min_free_mb": settings.min_free_disk_mb,
    }


def run_serve(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    start_http: HttpStarter | None = None,
) -> None:
    """Listener, ``settings.worker_count`` workers, maintenance and HTTP in one command.

    ``start_http`` serves the dashboard (the CLI passes the web application's starter);
    without it only ``/health`` is served. Runs until SIGTERM/SIGINT (or ``stop``).
    """
    from strokeflow.receive.listener import run_listener

    # Before anything else (and before any log line): a taken port is one clear error.
    check_free([dicom_listen_port(settings), http_listen_port(settings)])
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    queue = open_queue(settings.effective_queue_url)
    stop = stop or threading.Event()
    pools: list[WorkerPool] = []

    def extra() -> dict[str, Any]:
        alive = pools[0].alive() if pools else 0
        disk = disk_state(settings)
        return {
            "healthy": alive > 0 and disk["state"] == "ok",
            "disk": disk,
            "workers": {
                "alive": alive,
                "configured": settings.worker_count,
                "restarts": pools[0].restarts if pools else 0,
            },
            "queue_pending": queue.pending(),
        }

    hook = enqueue_and_mark(queue, sessions)
    health: HttpHandle
    if start_http is None:
        listen = http_listen_port(settings)
        try:
            health = start_health_server(listen.host, listen.port, sessions, extra)
        except OSError as exc:
            engine.dispose()
            raise listen.refusal(exc) from exc
    else:
        try:
            health = start_http(settings, sessions, hook, queue.pending, extra)
        except BaseException:
            engine.dispose()
            raise
    threads = [
        threading.Thread(
            target=Maintenance(settings, sessions, hook).run,
            args=(stop,),
            name="strokeflow-maintenance",
            daemon=True,
        ),
    ]

    def start_workers() -> None:
        # Only once both ports are ours: a serve that cannot listen starts no worker.
        pool = WorkerPool(settings, settings.worker_count)
        pools.append(pool)
        supervisor = threading.Thread(
            target=pool.supervise, args=(stop,), name="strokeflow-supervisor", daemon=True
        )
        threads.append(supervisor)
        supervisor.start()
        threads[0].start()

    try:
        run_listener(settings, on_queued=hook, stop=stop, on_listening=start_workers)
    finally:
        stop.set()
        health.shutdown()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=10)
        for pool in pools:
            pool.stop()
        engine.dispose()
