"""Run the listener: migrate, resume, receive (one or several processes), complete studies.

The parent process migrates the database, indexes files a previous run acknowledged but
did not index (:mod:`strokeflow.receive.reconcile`), marks studies orphaned by a previous
run as released, starts the receivers and runs the completion sweep once a second. With
``receiver_processes > 1`` each receiver is its own process accepting on the one
listening socket this process opens, a new connection going to the least busy one
(:mod:`strokeflow.receive.shared_port`), so decoding and hashing are not held back by one
interpreter's GIL.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, configure_mappers, sessionmaker

from strokeflow.config import Settings
from strokeflow.logsetup import configure_logging
from strokeflow.ports import check_free, dicom_listen_port
from strokeflow.receive.limits import LimitedAssociationServer
from strokeflow.receive.reconcile import reconcile
from strokeflow.receive.scp import Receiver, start_server
from strokeflow.receive.shared_port import AcceptBoard, board_memory, bound_socket
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.store.studies import CompletionRules, release_orphaned, sweep

LOG = logging.getLogger(__name__)

#: How often (s) a thread holding the GIL hands it over to one that waits for it. In a
#: receiving process, a disk writer whose fsync has returned waits for the GIL while the
#: association thread checks the next element; Python's default 5 ms cost ~1.4 ms an
#: instance (benchmarks/ingest.py: 66 -> 72 instances/s with 0.5 ms).
RECEIVER_SWITCH_INTERVAL_S = 0.0005

#: The youngest generation's threshold of the cyclic garbage collector in a receiving
#: process. Each instance makes thousands of short-lived objects (decoded elements,
#: primitives), nearly all freed by reference counting; at Python's default (700) the
#: collector ran several times an instance, ~2-3 % of the process's CPU with 4 senders.
RECEIVER_GC_THRESHOLD = 20_000

#: How often (s) the completion sweep runs: a released whole study waits for the next one.
SWEEP_INTERVAL_S = 0.25

#: Called with the ids of newly queued jobs after they are committed.
OnQueued = Callable[[list[int]], None]


@dataclass
class Sweeper:
    """The completion loop: receiving → complete → queued, once per ``interval_s``."""

    sessions: sessionmaker[Session]
    rules: CompletionRules
    on_queued: OnQueued | None = None
    interval_s: float = 1.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def run_once(self) -> list[int]:
        """One sweep; returns the new job ids (already committed)."""
        with self.sessions() as session, session.begin():
            job_ids = [job.id for job in sweep(session, self.rules, self.clock())]
        if job_ids and self.on_queued is not None:
            self.on_queued(job_ids)
        return job_ids

    def run(self, stop: threading.Event) -> None:
        """Sweep until ``stop`` is set; database errors are logged and retried."""
        while not stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError as exc:
                LOG.error("completion sweep failed, retrying: %s", exc)
            except Exception:
                # The loop must outlive a faulty on_queued hook: it is what completes studies.
                LOG.exception("completion sweep failed, retrying")
            stop.wait(self.interval_s)


def prepare_database(settings: Settings) -> sessionmaker[Session]:
    """Migrate the database to head; return a session factory on it."""
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    return make_session_factory(engine)


def receiver_sessions(settings: Settings) -> sessionmaker[Session]:
    """Sessions for a receiver: its index writer commits with SQLite ``synchronous=NORMAL``
    (rows a power cut takes are rebuilt by :func:`~strokeflow.receive.reconcile.reconcile`
    at the next start; the file, fsynced before the answer, is what the answer promises)."""
    engine = make_engine(settings.effective_database_url, sqlite_synchronous="NORMAL")
    return make_session_factory(engine)


def resume_orphaned(sessions: sessionmaker[Session]) -> int:
    """Once the receivers listen: give studies left receiving by a previous run a fresh
    quiet period, so that their interrupted senders can reconnect and go on."""
    with sessions() as session, session.begin():
        resumed = release_orphaned(session, datetime.now(UTC))
    if resumed:
        LOG.info("resuming %d half-received studies from a previous run", resumed)
    return resumed


def tune_interpreter() -> None:
    """Set a receiving process's GIL switch interval and garbage collector, once its
    modules are imported: what exists now (modules, tables, dictionaries) is frozen out
    of the collector's passes, and the youngest generation is collected less often.

    The ORM's mappers are set up first: otherwise the index writer's first transaction
    does it, ~20 ms of CPU in each receiving process while the first senders wait."""
    configure_mappers()
    sys.setswitchinterval(RECEIVER_SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(RECEIVER_GC_THRESHOLD, older, oldest)


def _receiver_process(
    settings_data: dict[str, Any],
    ready: Any,
    parent_pid: int,
    listen_socket: socket.socket,
    board: tuple[ctypes.Array[ctypes.c_int], int],
) -> None:
    settings = Settings.model_validate(settings_data)
    configure_logging(log_format=settings.log_format)
    # A plain threading.Event set by SIGTERM, not a multiprocessing one: a process killed
    # while holding a shared lock would leave the others waiting on it for ever.
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    accept_board = AcceptBoard(*board)
    receiver = Receiver(settings, receiver_sessions(settings), board=accept_board)
    receiver.open_index()
    server = start_server(receiver, shared=(listen_socket, accept_board))
    tune_interpreter()
    ready.release()
    # Also stop when the parent is gone (killed): an orphan would keep the port.
    while not stop.wait(1.0) and os.getppid() == parent_pid:
        pass
    server.shutdown()
    receiver.close()


def _watch_receivers(
    children: list[Any], counts: ctypes.Array[ctypes.c_int], stop: threading.Event
) -> None:
    """Log a receiving process that exits, and take it off the accept board so that the
    others stop leaving connections to it."""
    gone: set[int] = set()
    while not stop.wait(1.0):
        for i, child in enumerate(children):
            if i not in gone and not child.is_alive():
                gone.add(i)
                AcceptBoard(counts, i).mark_gone()
                LOG.error(
                    "receiving process %s exited (code %s); %d of %d still receive",
                    child.name,
                    child.exitcode,
                    len(children) - len(gone),
                    len(children),
                )


def run_listener(
    settings: Settings,
    *,
    on_queued: OnQueued | None = None,
    stop: threading.Event | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Receive and complete studies until SIGTERM/SIGINT (or ``stop`` is set).

    Parameters
    ----------
    settings : Settings
    on_queued : callable, optional
        Told the ids of new jobs (e.g. to put them on the task queue).
    stop : threading.Event, optional
        Set it to stop (tests); otherwise signals stop the listener.
    on_listening : callable, optional
        Called once the DICOM port is bound (``serve`` starts its workers then).

    Raises
    ------
    PortInUseError
        The DICOM port is taken (checked first, before the database is touched).
    """
    check_free([dicom_listen_port(settings)])
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = prepare_database(settings)
    # Before any receiver runs: rows lost by a crash come back from the files.
    reconcile(settings.data_dir, sessions, datetime.now(UTC))
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _stop(signum: int, _frame: FrameType | None) -> None:
            LOG.info("signal %d: stopping the listener", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    rules = CompletionRules(
        settings.quiet_period_s,
        settings.quiet_timeout_s,
        data_dir=settings.data_dir if settings.complete_when_whole else None,
    )
    sweeper = Sweeper(sessions, rules, on_queued, interval_s=SWEEP_INTERVAL_S)
    if settings.receiver_processes == 1:
        receiver = Receiver(settings, receiver_sessions(settings))
        try:
            receiver.open_index()
            # Tuned before it listens: a sender may start at once, and the collection
            # that precedes the freeze takes ~0.1 s of CPU.
            tune_interpreter()
            server = start_server(receiver)
        except (OSError, SQLAlchemyError):
            receiver.close()
            raise
        resume_orphaned(sessions)
        try:
            if on_listening is not None:
                on_listening()
            sweeper.run(stop)
        finally:
            server.shutdown()
            receiver.close()
        return
    if settings.dicom_port == 0:
        raise ValueError("several receiver processes need a fixed DICOM port, not 0")
    context = multiprocessing.get_context("spawn")
    ready = context.Semaphore(0)
    address = (settings.dicom_address, settings.dicom_port)
    try:
        listen_socket = bound_socket(address)
    except OSError as exc:
        raise dicom_listen_port(settings).refusal(exc) from exc
    counts = board_memory(context, settings.receiver_processes)
    children = [
        context.Process(
            target=_receiver_process,
            args=(settings.model_dump(mode="json"), ready, os.getpid(), listen_socket, (counts, i)),
            name=f"strokeflow-receiver-{i}",
        )
        for i in range(settings.receiver_processes)
    ]
    try:
        try:
            for child in children:
                child.start()
            for _ in children:
                while not ready.acquire(timeout=1.0):
                    dead = [c.name for c in children if not c.is_alive()]
                    if dead:
                        raise RuntimeError(f"receiver processes {', '.join(dead)} failed to start")
                    if stop.is_set():
                        return
            listen_socket.listen(LimitedAssociationServer.request_queue_size)
        finally:
            # The children hold it now: once they are gone, connections are refused.
            listen_socket.close()
        resume_orphaned(sessions)
        watcher = threading.Thread(
            target=_watch_receivers,
            args=(children, counts, stop),
            name="receiver-watch",
            daemon=True,
        )
        watcher.start()
        if on_listening is not None:
            on_listening()
        sweeper.run(stop)
    finally:
        started = [child for child in children if child.pid is not None]
        for child in started:
            if child.is_alive():
                child.terminate()  # SIGTERM: the child finishes its associations' last reply
        for child in started:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
