"""A bounded soak of the service: several senders, random kills of the listener and the
worker, a disk-full episode and fuzzed instances, on loopback only.

    python benchmarks/soak.py [--minutes 20] [--senders 3] [--kill-every-s 60] [--seed 0]

`strokeflow listener` and `strokeflow worker` run as separate processes; this script is
their supervisor (as systemd would be): a killed one is started again after a second.
Senders are pynetdicom SCUs that, like a PACS, send a study's remaining instances again
when an association fails. Fuzzed instances (bytes flipped after the file meta, a study of
their own) are mixed in. As root the data directory is a tmpfs of its own, filled to below
the reception watermark for ``--disk-full-s`` in the middle of the run; otherwise that
episode is skipped, and the output says so.

It prints instances sent / acknowledged / stored (row and file with the SHA-256 recorded) /
lost, studies analysed, the faults injected, and the largest RSS and number of open file
descriptors of the listener and the worker processes. Every loop is bounded by the run's
deadline; the script stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from harness import Server, free_port, listening, strokeflow_env, wait_until
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.models import Instance, Job, JobState, Study

#: The console script installed beside this interpreter (``pip install -e .``).
STROKEFLOW = [str(Path(sys.executable).parent / "strokeflow")]
FINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.DISPATCHED)
MIN_FREE_MB = 64


@dataclass
class Tally:
    """What the senders did, shared between their threads."""

    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    refused: int = 0
    #: Refusals by C-STORE status.
    refusals: dict[int, int] = field(default_factory=dict)
    failed_associations: int = 0
    #: Why pynetdicom could not send a file at all, by message.
    unsendable: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_studies(work: Path, count: int, seed: int) -> list[list[Path]]:
    """``count`` small phantom perfusion studies (own UIDs each: the seed sets them)."""
    studies = []
    for k in range(count):
        options = CtpPhantomOptions(matrix=48, slices=3, frames=16, seed=seed + k)
        files = write_ctp_study(simulate_ctp(options), work / f"study{k}", extra_series=False)
        studies.append(sorted(p for p in files if p.suffix == ".dcm"))
    return studies


def make_fuzzed(source: list[Path], folder: Path, count: int, rng: random.Random) -> list[Path]:
    """Copies of instances with study, series and SOP UIDs of their own and bytes flipped."""
    folder.mkdir(parents=True)
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    out = []
    for k in range(count):
        ds = pydicom.dcmread(rng.choice(source))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        path = folder / f"fuzz{k}.dcm"
        ds.save_as(path)
        raw = bytearray(path.read_bytes())
        start = 132 + 200  # past the preamble and the file meta
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(start, min(len(raw), start + 1500))] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        out.append(path)
    return out


def send_until_acknowledged(
    port: int, files: list[Path], tally: Tally, deadline: float, calling: str
) -> None:
    """Send ``files`` as they are; after a failed association, send what was not answered.

    A file pynetdicom cannot send at all (a fuzzed one whose command UIDs are garbled) is
    counted as refused.
    """
    left = list(files)
    while left and time.monotonic() < deadline:
        ae = AE(ae_title=calling)
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            # One syntax a context: the files go as they are, nothing converted.
            ae.add_requested_context(CTImageStorage, syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title="STROKEFLOW")
        if not assoc.is_established:
            with tally.lock:
                tally.failed_associations += 1
            time.sleep(1.0)
            continue
        try:
            while left and assoc.is_established and time.monotonic() < deadline:
                path = left[0]
                try:
                    status = assoc.send_c_store(path)
                except (AttributeError, ValueError, OSError) as exc:
                    left.pop(0)
                    reason = f"{type(exc).__name__}: {str(exc)[:80]}"
                    with tally.lock:
                        tally.unsendable[reason] = tally.unsendable.get(reason, 0) + 1
                    continue
                with tally.lock:
                    tally.sent += 1
                if "Status" not in status:
                    break  # no answer: the association broke, send it again
                left.pop(0)
                uid = _sop_uid(path)
                with tally.lock:
                    code = int(status.Status)
                    if code == 0:
                        tally.acknowledged.add(uid)
                    else:
                        tally.refused += 1
                        tally.refusals[code] = tally.refusals.get(code, 0) + 1
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                with tally.lock:
                    tally.failed_associations += 1


def _sop_uid(path: Path) -> str:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except Exception:  # a fuzzed file: its bytes stand for it
        return hashlib.sha256(path.read_bytes()).hexdigest()


class Supervisor:
    """Runs listener and worker, restarts whichever dies, kills one at random on demand."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.servers: dict[str, Server] = {}
        self.kills: dict[str, int] = {"listener": 0, "worker": 0}
        self.peak_rss_mb: dict[str, float] = {"listener": 0.0, "worker": 0.0}
        self.peak_fds: dict[str, int] = {"listener": 0, "worker": 0}
        for role in ("listener", "worker"):
            self.start(role)

    def start(self, role: str) -> None:
        log = self.work / f"{role}.log"
        self.servers[role] = Server(role, [*STROKEFLOW, role], log, self.env)

    def kill_one(self, rng: random.Random) -> str:
        role = rng.choice(["listener", "worker"])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.servers[role].process.pid, signal.SIGKILL)
        self.servers[role].process.wait(timeout=30)
        self.kills[role] += 1
        return role

    def keep_alive(self) -> None:
        for role, server in self.servers.items():
            if server.process.poll() is not None:
                time.sleep(1.0)
                self.start(role)

    def sample(self) -> None:
        for role, server in self.servers.items():
            for pid in _group(server.process.pid):
                self.peak_rss_mb[role] = max(self.peak_rss_mb[role], _rss_mb(pid))
                self.peak_fds[role] = max(self.peak_fds[role], _open_fds(pid))

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def fill_disk(data_dir: Path, keep_free_mb: float) -> Path:
    """Write a ballast file until less than ``keep_free_mb`` is free."""
    ballast = data_dir / "ballast"
    with ballast.open("wb") as out:
        while shutil.disk_usage(data_dir).free / 2**20 > keep_free_mb:
            out.write(b"\0" * 2**22)
            out.flush()
    return ballast


def verify(database_url: str, data_dir: Path, tally: Tally) -> dict[str, Any]:
    """Acknowledged instances with a row and a file whose SHA-256 matches; studies' jobs."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
            jobs = session.scalars(select(Job)).all()
            studies = session.scalars(select(Study)).all()
    finally:
        engine.dispose()
    stored = 0
    for uid in tally.acknowledged:
        row = rows.get(uid)
        path = data_dir / row.path if row is not None else None
        if path is not None and path.exists():
            stored += hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
    by_study: dict[int, list[Job]] = {}
    for job in jobs:
        by_study.setdefault(job.study_id, []).append(job)
    return {
        "stored": stored,
        "lost": len(tally.acknowledged) - stored,
        "studies": len(studies),
        "analysed": sum(any(j.state in FINAL for j in js) for js in by_study.values()),
        "succeeded": sum(
            any(j.state in (JobState.SUCCEEDED, JobState.DISPATCHED) for j in js)
            for js in by_study.values()
        ),
        "versions_over_one": sum(len(js) > 1 for js in by_study.values()),
        "failures": [
            f"job {j.id}: {(j.error or '')[:160]}" for j in jobs if j.state is JobState.FAILED
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--studies", type=int, default=0, help="default: 2 per sender")
    parser.add_argument("--kill-every-s", type=float, default=60.0)
    parser.add_argument("--disk-full-s", type=float, default=20.0)
    parser.add_argument("--fuzzed", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="strokeflow-soak-"))
    data_dir = work / "data"
    data_dir.mkdir()
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(data_dir)], check=True
        )
    started = time.monotonic()
    deadline = started + args.minutes * 60
    supervisor: Supervisor | None = None
    try:
        studies = make_studies(work / "sent", args.studies or 2 * args.senders, args.seed)
        fuzzed = make_fuzzed(studies[0], work / "fuzzed", args.fuzzed, rng)
        port = free_port()
        env = strokeflow_env(
            data_dir,
            port,
            min_free_disk_mb=MIN_FREE_MB,
            quiet_period_s=3,
            worker_count=1,
        )
        supervisor = Supervisor(work, env)
        wait_until(lambda: listening(port), 60, "the listener")
        tally = Tally()
        shares = [studies[k :: args.senders] for k in range(args.senders)]
        shares[0] = [fuzzed, *shares[0]]
        send_deadline = started + args.minutes * 60 * 0.7

        def sender(k: int) -> None:
            # Each sender goes over its studies again and again, as a PACS resends:
            # identical resends must change nothing.
            calling = f"CT{k:02d}"
            while time.monotonic() < send_deadline:
                for files in shares[k]:
                    send_until_acknowledged(port, files, tally, send_deadline, calling)
                if shares[k] and shares[k][0] is fuzzed:
                    shares[k] = shares[k][1:]  # fuzzed instances once

        threads = [
            threading.Thread(target=sender, args=(k,), daemon=True) for k in range(args.senders)
        ]
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the files' bytes unchanged
        for thread in threads:
            thread.start()
        disk_full_at = started + args.minutes * 60 * 0.4 if mounted else None
        next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every_s)
        faults = {"disk_full_episodes": 0}
        while time.monotonic() < deadline:
            supervisor.keep_alive()
            supervisor.sample()
            now = time.monotonic()
            if now >= next_kill and now < send_deadline:
                supervisor.kill_one(rng)
                next_kill = now + rng.expovariate(1 / args.kill_every_s)
            if disk_full_at is not None and now >= disk_full_at:
                ballast = fill_disk(data_dir, MIN_FREE_MB / 2)
                time.sleep(args.disk_full_s)
                ballast.unlink()
                faults["disk_full_episodes"] += 1
                disk_full_at = None
            if not any(t.is_alive() for t in threads) and _all_final(env, len(studies)):
                break
            time.sleep(1.0)
        for thread in threads:
            thread.join(timeout=5)
        figures = verify(env_database_url(data_dir), data_dir, tally)
    finally:
        if supervisor is not None:
            supervisor.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(data_dir)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    elapsed_s = time.monotonic() - started
    print(f"soak: {elapsed_s / 60:.1f} min, {args.senders} senders, seed {args.seed}")
    print(
        f"instances: sent {tally.sent}, acknowledged {len(tally.acknowledged)}, "
        f"refused {tally.refused} "
        f"({', '.join(f'0x{c:04X}: {n}' for c, n in sorted(tally.refusals.items())) or 'none'}), "
        f"stored {figures['stored']}, lost {figures['lost']}"
    )
    print(
        f"studies: {figures['studies']} received, {figures['analysed']} analysed "
        f"({figures['succeeded']} succeeded), {figures['versions_over_one']} with more than "
        f"one job version"
    )
    print(
        f"faults: listener killed {supervisor.kills['listener'] if supervisor else 0}x, "
        f"worker killed {supervisor.kills['worker'] if supervisor else 0}x, "
        f"disk-full episodes {faults['disk_full_episodes']}"
        + ("" if mounted else " (not root: no tmpfs, episode skipped)")
        + f", fuzzed instances {len(fuzzed)}, failed associations {tally.failed_associations}"
    )
    for failure in figures["failures"]:
        print(f"failed {failure}")
    for reason, count in sorted(tally.unsendable.items(), key=lambda kv: -kv[1])[:3]:
        print(f"not sendable ({count}x): {reason}")
    if supervisor is not None:
        print(
            f"peak RSS: listener {supervisor.peak_rss_mb['listener']:.0f} MB, worker "
            f"{supervisor.peak_rss_mb['worker']:.0f} MB; peak open files: listener "
            f"{supervisor.peak_fds['listener']}, worker {supervisor.peak_fds['worker']}"
        )
    return 0 if figures["lost"] == 0 else 1


def env_database_url(data_dir: Path) -> str:
    """The embedded SQLite database of a data directory."""
    return f"sqlite:///{(data_dir / 'strokeflow.sqlite').resolve()}"


def _all_final(env: dict[str, str], n_studies: int) -> bool:
    data_dir = Path(env["STROKEFLOW_DATA_DIR"])
    if not (data_dir / "strokeflow.sqlite").exists():
        return False
    engine = make_engine(env_database_url(data_dir))
    try:
        with make_session_factory(engine)() as session:
            states = session.scalars(select(Job.state)).all()
    except Exception:  # the database may be mid-migration right after a restart
        return False
    finally:
        engine.dispose()
    return len(states) >= n_studies and all(s in FINAL for s in states)


if __name__ == "__main__":
    raise SystemExit(main())
