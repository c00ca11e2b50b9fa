"""End to end with real peers: DCMTK storescu → `strokeflow serve` → Orthanc as the PACS.

Orthanc and redis-server are started here on free loopback ports; missing binaries fail
these tests (apt: orthanc, redis-server).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from servicekit import (
    Orthanc,
    Postgres,
    free_port,
    fresh_postgres_database,
    storescu,
    wait_for,
)
from sqlalchemy import select

from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.models import Dispatch, DispatchState, Job, JobState
from tools import require_tool

#: The installed console script, next to the interpreter running the tests.
STROKEFLOW = [str(Path(sys.executable).parent / "strokeflow")]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server on a free loopback port, no persistence."""
    binary = require_tool("redis-server", "redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    wait_for(lambda: _pings(client), 15, "redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=15)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def phantom_study() -> Iterator[list[Path]]:
    """A small CT perfusion phantom study (4 slices × 20 frames of 64²)."""
    folder = Path(tempfile.mkdtemp(prefix="strokeflow-e2e-"))
    phantom = simulate_ctp(CtpPhantomOptions(matrix=64, slices=4, frames=20))
    files = write_ctp_study(phantom, folder, extra_series=False)
    yield [f for f in files if f.suffix == ".dcm"]
    shutil.rmtree(folder, ignore_errors=True)


class Service:
    """A `strokeflow` sub-command running as its own process group."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*STROKEFLOW, *args], env=env, stdout=out, stderr=out, start_new_session=True
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def _env(tmp_path: Path, **values: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROKEFLOW_")}
    env.update(
        {
            "STROKEFLOW_DATA_DIR": str(tmp_path / "data"),
            "STROKEFLOW_BIND_ADDRESS": "127.0.0.1",
            "STROKEFLOW_MIN_FREE_DISK_MB": "0",
            "STROKEFLOW_QUIET_PERIOD_S": "1",
            "STROKEFLOW_WORKER_COUNT": "1",
        }
    )
    env.update({f"STROKEFLOW_{k.upper()}": str(v) for k, v in values.items()})
    return env


def _job(database_url: str) -> Job | None:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return session.scalars(select(Job).order_by(Job.id)).first()
    except Exception:
        return None  # not migrated yet
    finally:
        engine.dispose()


def _dispatches(database_url: str, job_id: int) -> list[Dispatch]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(Dispatch).where(Dispatch.job_id == job_id)))
    finally:
        engine.dispose()


def _ml_values(ds: Any) -> list[float]:
    """Every numeric SR value measured in mL."""
    found = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "NUM":
            value = item.MeasuredValueSequence[0]
            if value.MeasurementUnitsCodeSequence[0].CodeValue == "cm3":
                found.append(float(value.get("FloatingPointValue", value.NumericValue)))
        found.extend(_ml_values(item))
    return found


#: Secondary Capture Image Storage and its multi-frame variants.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def _check_pacs_holds_results(pacs: Orthanc, database_url: str, job: Job) -> None:
    rows = _dispatches(database_url, job.id)
    assert rows and all(r.state is DispatchState.SENT and r.status == 0 for r in rows)
    stored = {r.sent_sop_instance_uid for r in rows}
    instances = pacs.get("/instances")
    uids = {}
    secondary_captures = []
    for orthanc_id in instances:
        tags = pacs.get(f"/instances/{orthanc_id}/simplified-tags")
        uids[tags["SOPInstanceUID"]] = (orthanc_id, tags.get("Modality"))
        if str(tags.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
            secondary_captures.append(orthanc_id)
    assert stored <= set(uids), "some dispatched objects are not in the PACS"
    # The PACS can render every summary/lesion/map page (what a viewer shows).
    assert secondary_captures
    for orthanc_id in secondary_captures:
        preview = pacs.get(f"/instances/{orthanc_id}/preview")
        assert isinstance(preview, bytes) and preview.startswith(b"\x89PNG"), orthanc_id
    sr_ids = [oid for uid, (oid, modality) in uids.items() if modality == "SR" and uid in stored]
    assert len(sr_ids) == 1
    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(pacs.get(f"/instances/{sr_ids[0]}/file"))
        handle.flush()
        report = dcmread(handle.name)
    volumes = _ml_values(report)
    assert job.core_ml is not None and job.tmax6_ml is not None
    assert any(abs(v - job.core_ml) < 0.05 for v in volumes), (job.core_ml, volumes)
    assert any(abs(v - job.tmax6_ml) < 0.05 for v in volumes), (job.tmax6_ml, volumes)


def _send_and_wait(
    files: list[Path], port: int, database_url: str, state: JobState, timeout_s: float = 90
) -> Job:
    wait_for(lambda: _listening(port), 60, "the DICOM listener")
    sent = storescu(port, files)
    assert sent.returncode == 0, sent.stderr
    job = wait_for(
        lambda: (j := _job(database_url)) is not None and j.state is state and j,
        timeout_s,
        f"a job in state {state.value}",
    )
    assert isinstance(job, Job)
    return job


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return dict(json.loads(response.read()))


def test_serve_analyses_a_study_and_orthanc_receives_the_results(
    tmp_path: Path, orthanc: Orthanc, phantom_study: list[Path]
) -> None:
    dicom_port, http_port = free_port(), free_port()
    env = _env(
        tmp_path, dicom_port=dicom_port, http_port=http_port, destinations=orthanc.destination
    )
    database_url = f"sqlite:///{tmp_path / 'data' / 'strokeflow.sqlite'}"
    serve = Service(["serve"], env, tmp_path / "serve.log")
    try:
        job = _send_and_wait(phantom_study, dicom_port, database_url, JobState.DISPATCHED)
        health = _health(http_port)
        assert health["status"] == "ok" and health["jobs"] == {"dispatched": 1}
        assert health["workers"]["alive"] == 1
    finally:
        serve.stop()
    assert job.attempts == 1 and job.dispatched_at is not None and job.finished_at is not None
    assert job.started_at is not None and job.queued_at is not None
    assert job.queued_at <= job.started_at <= job.finished_at <= job.dispatched_at
    _check_pacs_holds_results(orthanc, database_url, job)
    _check_log_is_per_study(tmp_path / "serve.log", len(phantom_study))


#: Most log lines one study may take at INFO from start to stop of `serve`, whatever its
#: number of images (measured: 17 for the phantom's 80 images, then 8 result objects).
MAX_LOG_LINES_PER_STUDY = 40


def _check_log_is_per_study(log: Path, images: int) -> None:
    """Per-image messages are DEBUG: at INFO the log is a few lines per association/study."""
    lines = log.read_text().splitlines()
    assert len(lines) < MAX_LOG_LINES_PER_STUDY < images, "\n".join(lines)
    summary = [line for line in lines if "association" in line and "ended:" in line]
    assert len(summary) == 1 and f"{images} instances ({images} new)" in summary[0]
    assert not any("Traceback" in line or " ERROR " in line for line in lines)


def test_serve_with_postgresql_and_redis_delivers_to_orthanc(
    tmp_path: Path,
    orthanc: Orthanc,
    phantom_study: list[Path],
    postgres: Postgres,
    redis_url: str,
) -> None:
    dicom_port, http_port = free_port(), free_port()
    database_url = fresh_postgres_database(postgres)
    env = _env(
        tmp_path,
        dicom_port=dicom_port,
        http_port=http_port,
        destinations=orthanc.destination,
        database_url=database_url,
        queue_url=redis_url,
    )
    serve = Service(["serve"], env, tmp_path / "serve.log")
    try:
        job = _send_and_wait(phantom_study, dicom_port, database_url, JobState.DISPATCHED)
    finally:
        serve.stop()
    assert not (tmp_path / "data" / "queue.sqlite").exists(), "Redis, not SQLite, carried the job"
    _check_pacs_holds_results(orthanc, database_url, job)


def test_killed_worker_mid_job_completes_after_restart(
    tmp_path: Path, orthanc: Orthanc, phantom_study: list[Path]
) -> None:
    dicom_port = free_port()
    env = _env(tmp_path, dicom_port=dicom_port, destinations=orthanc.destination)
    database_url = f"sqlite:///{tmp_path / 'data' / 'strokeflow.sqlite'}"
    listener = Service(["listener"], env, tmp_path / "listener.log")
    worker_args = ["worker", "--lease-s", "3"]
    worker = Service(worker_args, env, tmp_path / "worker1.log")
    restarted = None
    try:
        running = _send_and_wait(phantom_study, dicom_port, database_url, JobState.RUNNING)
        worker.kill()  # SIGKILL: no clean-up, the lease just stops being renewed
        assert _job(database_url).state is JobState.RUNNING  # type: ignore[union-attr]
        restarted = Service(worker_args, env, tmp_path / "worker2.log")
        job = wait_for(
            lambda: (j := _job(database_url)) is not None and j.state is JobState.DISPATCHED and j,
            90,
            "the job to complete after the worker restart",
        )
    finally:
        listener.stop()
        if restarted is not None:
            restarted.stop()
    assert isinstance(job, Job)
    assert job.attempts == 2 and job.worker != running.worker
    _check_pacs_holds_results(orthanc, database_url, job)


def test_results_arrive_when_the_pacs_comes_back(
    tmp_path: Path, orthanc: Orthanc, phantom_study: list[Path]
) -> None:
    orthanc.stop()
    dicom_port, http_port = free_port(), free_port()
    env = _env(
        tmp_path, dicom_port=dicom_port, http_port=http_port, destinations=orthanc.destination
    )
    database_url = f"sqlite:///{tmp_path / 'data' / 'strokeflow.sqlite'}"
    serve = Service(["serve", "--dispatch-backoff-s", "1"], env, tmp_path / "serve.log")
    try:
        job = _send_and_wait(phantom_study, dicom_port, database_url, JobState.SUCCEEDED)
        wait_for(
            lambda: all(r.attempts >= 2 for r in _dispatches(database_url, job.id)),
            30,
            "a second delivery attempt while the PACS is down",
        )
        rows = _dispatches(database_url, job.id)
        assert all(r.state is DispatchState.PENDING and r.error for r in rows)
        orthanc.start()
        job = wait_for(
            lambda: (j := _job(database_url)) is not None and j.state is JobState.DISPATCHED and j,
            60,
            "delivery after the PACS came back",
        )
    finally:
        serve.stop()
    assert isinstance(job, Job)
    _check_pacs_holds_results(orthanc, database_url, job)
