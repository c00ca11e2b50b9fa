"""Throughput: N studies arriving together, one worker against two, on PostgreSQL + Redis.

Usage: ``python benchmarks/throughput.py [--studies 2,4,8] [--workers 1,2] [--matrix 256
--slices 8 --frames 30] [--senders 4] [--pin] [--quick] [--keep DIR]``

N CT perfusion phantoms (distinct UIDs, Number of Temporal Positions filled) are sent at
once by ``--senders`` DCMTK ``storescu`` processes (the studies dealt round-robin, each
sender sends its studies on one association) to ``strokeflow listener``; ``--workers``
``strokeflow worker`` processes take the jobs from Redis, share the PostgreSQL database and
the data directory, and send the results to an Orthanc (else DCMTK storescp). Each worker
process stands for one machine; on one machine they share its cores (``--pin`` puts worker
i on CPU i, so that two workers get the CPU of two one-core machines and one worker one
core). Every (workers, N) run starts afresh: a new database, an empty Redis, a new data
directory, new listener and workers.

Per run: the send's wall time; the latency of the last study (last instance sent -> its
last result object acknowledged by the PACS, from the dispatch rows); studies per hour
(N over the time from the start of the send to that last acknowledgement); the median
analysis time per job and how the jobs were spread over the workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, text

from e2e import STROKEFLOW, Pacs, phantom_study, send_files
from harness import Server, free_port, listening, strokeflow_env, wait_until
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.models import Dispatch, Job, JobState

INITDB_FLAGS = ("--auth=trust", "-E", "UTF8", "--no-sync")


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise SystemExit(f"{name} is not installed (apt: postgresql)")
    return str(found)


class Postgres:
    """A throw-away PostgreSQL on a loopback port (as the ``postgres`` user when root)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.root, self.port, self.user = root, free_port(), "strokeflow"
        self.run: list[str] = []
        if os.geteuid() == 0:
            self.run = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self.data = root / "data"
        subprocess.run(
            [*self.run, _pg_bin("initdb"), "-D", str(self.data), "-U", self.user, *INITDB_FLAGS],
            check=True,
            capture_output=True,
        )
        # Durable as deployed (fsync on): the index writes are part of what is measured.
        options = f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        start = ["-l", str(root / "log"), "-w", "-t", "60", "-o", options, "start"]
        subprocess.run(
            [*self.run, _pg_bin("pg_ctl"), "-D", str(self.data), *start],
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        name = f"tp_{uuid.uuid4().hex[:10]}"
        admin = make_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.run, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )


class Redis:
    """A redis-server on a loopback port, no persistence."""

    def __init__(self, folder: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt: redis-server)")
        folder.mkdir(parents=True)
        self.port = free_port()
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(folder)]
        self.server = Server("redis-server", argv, folder / "redis.log", dict(os.environ))
        wait_until(lambda: self.server.check_alive() and listening(self.port), 30, "redis")

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@dataclass(frozen=True)
class RunResult:
    """One (workers, studies) run."""

    workers: int
    studies: int
    images: int
    send_s: float
    last_latency_s: float
    makespan_s: float
    analysis_median_s: float
    per_worker: list[int]

    @property
    def per_hour(self) -> float:
        return 3600.0 * self.studies / self.makespan_s


def _progress(database_url: str) -> tuple[int, int, list[Job], datetime | None]:
    """(dispatched jobs, failed jobs, every job, last acknowledgement) now."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            jobs = list(session.scalars(select(Job)))
            last = session.scalar(select(func.max(Dispatch.sent_at)))
    except Exception:
        return 0, 0, [], None  # not migrated yet
    finally:
        engine.dispose()
    done = sum(j.state is JobState.DISPATCHED for j in jobs)
    failed = sum(j.state is JobState.FAILED for j in jobs)
    return done, failed, jobs, last


def one_run(
    studies: list[list[Path]],
    workers: int,
    *,
    pg: Postgres,
    redis: Redis,
    pacs: Pacs,
    folder: Path,
    senders: int,
    pin: bool,
    redis_db: int,
    timeout_s: float,
) -> RunResult:
    """Fresh listener and ``workers`` worker processes; send ``studies`` at once; wait."""
    folder.mkdir(parents=True)
    database_url = pg.fresh_database()
    port = free_port()
    env = strokeflow_env(
        folder / "data",
        port,
        database_url=database_url,
        queue_url=redis.url(redis_db),
        destinations=pacs.destination,
        quiet_period_s=2.0,
    )
    servers: list[Server] = []
    try:
        listener = Server("strokeflow listener", [STROKEFLOW, "listener"], folder / "l.log", env)
        servers.append(listener)
        wait_until(lambda: listener.check_alive() and listening(port), 120, "strokeflow listener")
        for i in range(workers):
            argv = [STROKEFLOW, "worker"]
            if pin:
                argv = ["taskset", "-c", str(i % (os.cpu_count() or 1)), *argv]
            servers.append(Server(f"worker {i}", argv, folder / f"w{i}.log", env))
        wait_until(
            lambda: (
                all(s.check_alive() for s in servers)
                and all("taking jobs" in (folder / f"w{i}.log").read_text() for i in range(workers))
            ),
            180,
            f"{workers} strokeflow worker(s)",
        )
        # Each sender sends its studies one after the other on one association.
        shares = [[f for study in share for f in study] for share in deal_studies(studies, senders)]
        send_s = send_files(port, shares)
        sent_utc = datetime.now(UTC)
        start_utc = datetime.fromtimestamp(sent_utc.timestamp() - send_s, UTC)
        deadline = time.monotonic() + timeout_s
        while True:
            for server in servers:
                server.check_alive()
            done, failed, jobs, last = _progress(database_url)
            if failed:
                errors = "; ".join(str(j.error) for j in jobs if j.state is JobState.FAILED)
                raise SystemExit(f"{failed} job(s) failed: {errors} (logs in {folder})")
            if done >= len(studies) and last is not None:
                break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{done} of {len(studies)} studies dispatched after {timeout_s:.0f} s "
                    f"(logs in {folder})"
                )
            time.sleep(0.2)
        assert last is not None
    finally:
        for server in reversed(servers):
            server.stop()
    analysis = [
        (j.finished_at - j.started_at).total_seconds()
        for j in jobs
        if j.finished_at is not None and j.started_at is not None
    ]
    names = sorted({j.worker for j in jobs if j.worker})
    return RunResult(
        workers=workers,
        studies=len(studies),
        images=sum(len(s) for s in studies),
        send_s=send_s,
        last_latency_s=(last - sent_utc).total_seconds(),
        makespan_s=(last - start_utc).total_seconds(),
        analysis_median_s=statistics.median(analysis),
        per_worker=[sum(j.worker == n for j in jobs) for n in names],
    )


def deal_studies(studies: list[list[Path]], senders: int) -> list[list[list[Path]]]:
    """Whole studies dealt round-robin to ``senders`` (fewer senders than studies idle)."""
    return [studies[i::senders] for i in range(senders) if studies[i::senders]]


def _int_list(value: str) -> list[int]:
    values = [int(v) for v in value.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: comma-separated positive integers")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=_int_list, default=[2, 4, 8])
    parser.add_argument("--workers", type=_int_list, default=[1, 2])
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--pin", action="store_true", help="worker i on CPU i (taskset)")
    parser.add_argument("--quick", action="store_true", help="64x64x4x20, N = 2,4")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--keep", type=Path, help="work (studies, logs) here and keep it")
    args = parser.parse_args()
    if args.quick:
        args.matrix, args.slices, args.frames, args.studies = 64, 4, 20, [2, 4]
    work = args.keep or Path(tempfile.mkdtemp(prefix="strokeflow-throughput-"))
    # mkdtemp makes it 0700: the postgres user (when run as root) must reach its folder in it.
    work.chmod(work.stat().st_mode | 0o011)
    work.mkdir(parents=True, exist_ok=True)
    pg = redis = pacs = None
    try:
        t0 = time.perf_counter()
        studies = [
            phantom_study(
                work / f"study-{i}",
                args.matrix,
                args.slices,
                args.frames,
                "temporal_position",
                seed=i + 1,
            )
            for i in range(max(args.studies))
        ]
        print(
            f"== {len(studies)} CT perfusion phantoms {args.matrix}x{args.matrix}x{args.slices} "
            f"slices x {args.frames} frames ({len(studies[0])} images each) written in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        pg = Postgres(work / "pg")
        redis = Redis(work / "redis")
        pacs = Pacs(work / "pacs")
        results = []
        run = 0
        for n in args.studies:
            for w in args.workers:
                result = one_run(
                    studies[:n],
                    w,
                    pg=pg,
                    redis=redis,
                    pacs=pacs,
                    folder=work / f"run-{run}",
                    senders=args.senders,
                    pin=args.pin,
                    redis_db=run % 16,
                    timeout_s=args.timeout_s,
                )
                run += 1
                results.append(result)
                load = " ".join(f"{v:.1f}" for v in os.getloadavg())
                print(
                    f"   N={n} workers={w}: last study {result.last_latency_s:.1f} s after the "
                    f"send, {result.per_hour:.0f} studies/h (load {load})"
                )
    finally:
        if pacs is not None:
            pacs.server.stop()
        if redis is not None:
            redis.server.stop()
        if pg is not None:
            pg.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"cores: {os.cpu_count()}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        f"; {args.senders} senders; PostgreSQL + Redis; pinned: {args.pin}"
    )
    print(
        f"  {'N':>3}{'workers':>8}{'images':>8}{'send s':>8}{'last s':>8}{'studies/h':>11}"
        f"{'analysis s':>11}  jobs per worker"
    )
    for r in results:
        print(
            f"  {r.studies:>3}{r.workers:>8}{r.images:>8}{r.send_s:>8.1f}{r.last_latency_s:>8.1f}"
            f"{r.per_hour:>11.0f}{r.analysis_median_s:>11.1f}  {r.per_worker}"
        )
    by = {(r.studies, r.workers): r for r in results}
    for n in args.studies:
        if (n, 1) in by and (n, 2) in by:
            gain = by[(n, 2)].per_hour / by[(n, 1)].per_hour
            print(f"  N={n}: two workers give {gain:.2f}x the studies per hour of one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
