"""End-to-end latency: a study sent to ``strokeflow serve``, its result objects in the PACS.

Usage: ``python benchmarks/e2e.py [--matrix 512 --slices 16 --frames 40]
[--time-tag acquisition|temporal_position] [--quiet-period-s 2] [--senders 1] [--study DIR]
[--keep DIR]``; ``python benchmarks/ingest.py`` runs it after the ingest table.

A CT perfusion phantom (default 640 files, 512x512) is sent by DCMTK ``storescu`` to
``strokeflow serve`` (SQLite, its default worker count) with an Orthanc (else a DCMTK
storescp) as the PACS destination. The latency is from storescu's exit to the last result
object stored in the PACS (Orthanc ``/statistics`` polled every 0.1 s). The stages come
from the job row (``strokeflow job ID --json``) and the job's ``results.json``:

- receive: storescu's wall time;
- completion: last instance sent -> study complete (why: quiet period, known-whole
  acquisition, ...), then -> job started by a worker;
- analysis: read, assemble and engines (``results.json`` total less the objects);
- objects: building and writing the DICOM result objects;
- dispatch: from the job's end to the last object acknowledged by the PACS (objects are
  sent as they are built, so this is what is left after the analysis).

``--time-tag temporal_position`` writes NumberOfTemporalPositions and
TemporalPositionIdentifier (vendors that fill them let a study complete as soon as it is
whole); ``acquisition`` (the default, like most CT vendors) leaves completion to the quiet
period.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from harness import Server, free_port, listening, strokeflow_env, wait_until
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.models import Dispatch, DispatchState, Job, JobState, Study

#: End-to-end latency target for the 640-image CT perfusion study on 2 cores (issue 16).
E2E_TARGET_S = 10.0
STROKEFLOW = str(Path(sys.executable).parent / "strokeflow")
AE_TITLE = "STROKEFLOW"
PACS_AE = "PACS"


def dcmtk_env() -> dict[str, str]:
    """DCMTK with Nagle's algorithm off (see benchmarks/ingest.py)."""
    return dict(os.environ, TCP_NODELAY="1")


def listening_processes(log: Path) -> int:
    """How many strokeflow receiving processes logged that they listen."""
    return log.read_text(errors="replace").count("listening for DICOM") if log.exists() else 0


def send_files(port: int, shares: list[list[Path]], called: str = AE_TITLE) -> float:
    """One ``storescu`` per share, all at once; wall seconds until the last one exits."""
    exe = shutil.which("storescu")
    if exe is None:
        raise SystemExit("storescu is not installed (apt: dcmtk)")
    t0 = time.perf_counter()
    senders = [
        subprocess.Popen(
            [exe, "-aet", "CT01", "-aec", called, "127.0.0.1", str(port), *map(str, share)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dcmtk_env(),
        )
        for share in shares
        if share
    ]
    failures = []
    for i, sender in enumerate(senders):
        _, err = sender.communicate(timeout=600)
        if sender.returncode != 0:
            failures.append(f"sender {i + 1} exit {sender.returncode}: {err.decode()[-500:]}")
    if failures:
        raise SystemExit("storescu failed:\n" + "\n".join(failures))
    return time.perf_counter() - t0


def deal(files: list[Path], senders: int) -> list[list[Path]]:
    """The files dealt round-robin into ``senders`` shares."""
    return [list(files[i::senders]) for i in range(senders)]


def phantom_study(
    out: Path, matrix: int, slices: int, frames: int, time_tag: str, seed: int = 0
) -> list[Path]:
    """The perfusion files of a CT perfusion phantom (``seed`` makes its UIDs distinct)."""
    phantom = simulate_ctp(
        CtpPhantomOptions(matrix=matrix, slices=slices, frames=frames, seed=seed)
    )
    return sorted(write_ctp_study(phantom, out, extra_series=False, time_tag=time_tag))


class Pacs:
    """The PACS destination: Orthanc when installed, else DCMTK storescp into a folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.port = free_port()
        self.folder = folder
        orthanc = shutil.which("Orthanc") or (
            "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
        )
        self.http_port = free_port() if orthanc else None
        if orthanc is not None:
            config = {
                "Name": "strokeflow-benchmark-pacs",
                "StorageDirectory": str(folder / "storage"),
                "IndexDirectory": str(folder / "index"),
                "DicomAet": PACS_AE,
                "DicomPort": self.port,
                "HttpPort": self.http_port,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomModalities": {"strokeflow": [AE_TITLE, "127.0.0.1", 1]},
                "Plugins": [],
            }
            (folder / "orthanc.json").write_text(json.dumps(config))
            argv = [orthanc, str(folder / "orthanc.json")]
            self.name = "Orthanc"
            self.server = Server("Orthanc", argv, folder / "pacs.log", dict(os.environ))
            wait_until(lambda: self.server.check_alive() and self._rest_answers(), 60, "Orthanc")
        else:
            (folder / "out").mkdir()
            argv = ["storescp", "--fork", "-aet", PACS_AE, "-od", str(folder / "out")]
            self.name = "DCMTK storescp"
            self.server = Server(
                "storescp", [*argv, str(self.port)], folder / "pacs.log", dcmtk_env()
            )
            wait_until(lambda: self.server.check_alive() and listening(self.port), 30, "storescp")

    def _rest_answers(self) -> bool:
        try:
            self.instances()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def instances(self) -> int:
        """Instances the PACS holds now."""
        if self.http_port is None:
            return sum(1 for p in (self.folder / "out").iterdir() if p.is_file())
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.loads(response.read())["CountInstances"])

    @property
    def destination(self) -> str:
        return f"{PACS_AE}@127.0.0.1:{self.port}"


def jobs_sent(database_url: str) -> list[tuple[Job, int, str]]:
    """Every job with how many of its result objects are sent and why its study completed."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            jobs = list(session.scalars(select(Job).order_by(Job.id)))
            out = []
            for job in jobs:
                sent = session.scalar(
                    select(func.count())
                    .select_from(Dispatch)
                    .where(Dispatch.job_id == job.id, Dispatch.state == DispatchState.SENT)
                )
                study = session.get(Study, job.study_id)
                reason = study.completion_reason if study is not None else None
                out.append((job, int(sent or 0), reason or "?"))
            return out
    except Exception:
        return []  # not migrated yet
    finally:
        engine.dispose()


def job_info(job_id: int, env: dict[str, str]) -> dict[str, Any]:
    """``strokeflow job ID --json``."""
    done = subprocess.run(
        [STROKEFLOW, "job", str(job_id), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise SystemExit(f"strokeflow job {job_id} --json failed: {done.stderr}")
    return dict(json.loads(done.stdout))


@dataclass(frozen=True)
class Stages:
    """One job's stage times (s) after the last instance was sent."""

    completed_s: float
    completion_reason: str
    started_s: float
    analysis_s: float
    objects_s: float
    finished_s: float
    in_pacs_s: float
    objects: int


def job_stages(
    info: dict[str, Any], reason: str, data_dir: Path, sent_utc: datetime, in_pacs_s: float
) -> Stages:
    """The stages of one job from its row and its ``results.json``."""

    def after(name: str) -> float:
        return (datetime.fromisoformat(info[name]) - sent_utc).total_seconds()

    results = json.loads((data_dir / info["results_path"] / "results.json").read_text())
    objects_s = sum(
        a.get("timings_s", {}).get("dicom_objects", 0.0)
        for s in results["studies"]
        for a in s["analyses"]
    )
    return Stages(
        completed_s=after("completed_at"),
        completion_reason=reason,
        started_s=after("started_at"),
        analysis_s=float(results["total_time_s"]) - objects_s,
        objects_s=objects_s,
        finished_s=after("finished_at"),
        in_pacs_s=in_pacs_s,
        objects=len(info.get("dispatches", [])),
    )


def print_stages(send_s: float, stages: Stages) -> None:
    """The stage lines of one study."""
    print(f"  receive     {send_s:6.1f} s  (storescu wall time)")
    print(
        f"  completion  {stages.completed_s:6.1f} s  after the send ({stages.completion_reason}); "
        f"worker started at {stages.started_s:.1f} s"
    )
    print(f"  analysis    {stages.analysis_s:6.1f} s  (read, assemble, engines)")
    print(f"  objects     {stages.objects_s:6.1f} s  ({stages.objects} objects built and written)")
    print(
        f"  dispatch    {stages.in_pacs_s - stages.finished_s:6.1f} s  after the job's end "
        f"(finished at {stages.finished_s:.1f} s, last object in the PACS at "
        f"{stages.in_pacs_s:.1f} s)"
    )


def end_to_end(
    files: list[Path],
    work: Path,
    *,
    senders: int = 1,
    quiet_period_s: float = 2.0,
    timeout_s: float = 300.0,
) -> float:
    """``strokeflow serve`` -> PACS: latency (s) from the last instance sent to the last
    result object in the PACS; prints the stage times."""
    folder = work / "e2e"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.sync()
    pacs = Pacs(folder / "pacs")
    serve: Server | None = None
    try:
        port = free_port()
        env = strokeflow_env(
            folder / "data",
            port,
            http_port=free_port(),
            quiet_period_s=quiet_period_s,
            destinations=pacs.destination,
        )
        serve = Server("strokeflow serve", [STROKEFLOW, "serve"], folder / "serve.log", env)
        wait_until(
            lambda: serve is not None and serve.check_alive() and listening_processes(serve.log),
            60,
            "strokeflow serve to listen",
        )
        # The workers start after the listener; give them their imports before the send.
        time.sleep(5)
        database_url = f"sqlite:///{folder / 'data' / 'strokeflow.sqlite'}"
        send_s = send_files(port, deal(files, senders))
        sent_at = time.monotonic()
        sent_utc = datetime.now(UTC)
        seen: dict[int, float] = {}
        deadline = sent_at + timeout_s
        job: Job | None = None
        while time.monotonic() < deadline:
            serve.check_alive()
            count = pacs.instances()
            seen.setdefault(count, time.monotonic())
            rows = jobs_sent(database_url)
            job, sent, reason = rows[-1] if rows else (None, 0, "?")
            if job is not None and job.state is JobState.FAILED:
                raise SystemExit(f"job {job.id} failed: {job.error} (log: {serve.log})")
            if job is not None and job.state is JobState.DISPATCHED and count >= sent > 0:
                break
            time.sleep(0.1)
        else:
            state = job.state.value if job is not None else "no job"
            raise SystemExit(
                f"no result in {pacs.name} after {timeout_s:.0f} s ({state}; log: {serve.log})"
            )
        assert job is not None
        latency_s = seen[max(seen)] - sent_at
        info = job_info(job.id, env)
        stages = job_stages(info, reason, folder / "data", sent_utc, latency_s)
    finally:
        if serve is not None:
            serve.stop()
        pacs.server.stop()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"== end to end: {len(files)} instances by {senders} sender(s) to strokeflow serve "
        f"(quiet period {quiet_period_s:g} s) -> {pacs.name}; {os.cpu_count()} cores, "
        f"load average {load}"
    )
    print_stages(send_s, stages)
    print(
        f"result: core {info.get('core_ml')} mL, Tmax>6 {info.get('tmax6_ml')} mL; "
        f"{stages.objects} result objects"
    )
    verdict = "PASS" if latency_s < E2E_TARGET_S else "FAIL"
    print(f"{verdict}: end-to-end latency {latency_s:.1f} s (target < {E2E_TARGET_S:.0f} s)")
    return latency_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument(
        "--time-tag", choices=["acquisition", "content", "temporal_position"], default="acquisition"
    )
    parser.add_argument("--study", type=Path, help="send these *.dcm files instead of a phantom")
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--quiet-period-s", type=float, default=2.0)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--keep", type=Path, help="work (study, logs) here and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="strokeflow-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.study is not None:
            files = sorted(args.study.glob("*.dcm"))
            if not files:
                raise SystemExit(f"--study {args.study}: no *.dcm files")
        else:
            files = phantom_study(
                work / "study", args.matrix, args.slices, args.frames, args.time_tag
            )
        end_to_end(
            files,
            work,
            senders=args.senders,
            quiet_period_s=args.quiet_period_s,
            timeout_s=args.timeout_s,
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
