"""Queue and workers: huey carries job ids, the job table with leases is the truth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

import strokeflow.worker.jobs as jobs_module
from strokeflow.analyze import NothingToAnalyseError
from strokeflow.config import RetryPolicy, Settings
from strokeflow.queue import open_queue
from strokeflow.store.models import Job, JobState, Study, StudyState
from strokeflow.worker.jobs import JobRunner
from strokeflow.worker.maintenance import Maintenance, reap_expired
from strokeflow.worker.reruns import RerunError, reanalyse

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(lease_s=30.0, max_attempts=3, backoff_s=10.0)


class Clock:
    """A settable aware-UTC clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _queued_job(sessions: sessionmaker[Session]) -> int:
    with sessions() as session, session.begin():
        study = Study(study_uid="1.2.3.4", state=StudyState.QUEUED, version=1, instance_count=0)
        job = Job(study=study, version=1, state=JobState.QUEUED, attempts=0, instance_count=0)
        session.add(job)
        session.flush()
        return job.id


def _job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _runner(sessions: sessionmaker[Session], tmp_path: Path, clock: Clock, name: str) -> JobRunner:
    settings = Settings(data_dir=tmp_path / "data")
    return JobRunner(settings, sessions, POLICY, name=name, clock=clock)


def _failing_analysis(exc: Exception) -> Any:
    def analyze(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return analyze


def test_sqlite_queue_carries_job_ids_in_order(tmp_path: Path) -> None:
    seen: list[int] = []
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    open_queue(url).enqueue([7, 3])
    worker_side = open_queue(url, seen.append)
    assert worker_side.pending() == 2
    assert worker_side.run_next() and worker_side.run_next()
    assert not worker_side.run_next()
    assert seen == [7, 3]


def test_unknown_queue_url_is_refused() -> None:
    with pytest.raises(ValueError, match="expected sqlite"):
        open_queue("amqp://broker/")


def test_a_job_is_claimed_once(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    job_id = _queued_job(sessions)
    clock = Clock()
    assert _runner(sessions, tmp_path, clock, "a").claim(job_id)
    assert not _runner(sessions, tmp_path, clock, "b").claim(job_id)
    job = _job(sessions, job_id)
    assert job.state is JobState.RUNNING and job.worker == "a" and job.attempts == 1
    assert job.lease_until == T0 + timedelta(seconds=POLICY.lease_s)


def test_failures_are_retried_with_backoff_then_failed_and_reanalyse_requeues(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "analyze_paths", _failing_analysis(OSError("disk gone")))
    job_id = _queued_job(sessions)
    clock = Clock()
    runner = _runner(sessions, tmp_path, clock, "a")
    assert runner.run(job_id) is JobState.QUEUED
    job = _job(sessions, job_id)
    assert job.attempts == 1 and job.next_attempt_at == T0 + timedelta(seconds=10)
    assert job.error is not None and "disk gone" in job.error
    assert runner.run(job_id) is None, "not due during the back-off"
    clock.now = T0 + timedelta(seconds=10)
    assert runner.run(job_id) is JobState.QUEUED
    assert _job(sessions, job_id).next_attempt_at == clock.now + timedelta(seconds=20)
    clock.now += timedelta(seconds=20)
    assert runner.run(job_id) is JobState.FAILED
    job = _job(sessions, job_id)
    assert job.attempts == 3 and job.error is not None and job.error.startswith("attempt 3")
    with sessions() as session, session.begin():
        assert reanalyse(session, job_id, clock.now) == f"job {job_id} queued for analysis again"
    job = _job(sessions, job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.next_attempt_at is None
    with sessions() as session, session.begin(), pytest.raises(RerunError, match="already queued"):
        reanalyse(session, job_id, clock.now)


def test_nothing_to_analyse_fails_at_once(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        jobs_module, "analyze_paths", _failing_analysis(NothingToAnalyseError("no CT perfusion"))
    )
    job_id = _queued_job(sessions)
    assert _runner(sessions, tmp_path, Clock(), "a").run(job_id) is JobState.FAILED
    job = _job(sessions, job_id)
    assert job.attempts == 1 and "no CT perfusion" in (job.error or "")


def test_expired_lease_requeues_and_the_dead_attempt_cannot_finish(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(sessions)
    clock = Clock()
    dead = _runner(sessions, tmp_path, clock, "dead")
    assert dead.claim(job_id)
    enqueued: list[int] = []
    keeper = Maintenance(
        Settings(data_dir=tmp_path / "data"),
        sessions,
        enqueued.extend,
        POLICY,
        dispatch=False,
        clock=clock,
    )
    clock.now = T0 + timedelta(seconds=POLICY.lease_s - 1)
    assert keeper.run_once() == [] and _job(sessions, job_id).state is JobState.RUNNING
    clock.now = T0 + timedelta(seconds=POLICY.lease_s + 1)
    assert keeper.run_once() == [job_id] and enqueued == [job_id]
    job = _job(sessions, job_id)
    assert job.state is JobState.QUEUED and "dead stopped renewing" in (job.error or "")
    assert keeper.run_once() == [], "enqueued once, not on every pass"
    alive = _runner(sessions, tmp_path, clock, "alive")
    assert alive.claim(job_id)
    # The first worker comes back to life and reports a failure: it no longer owns the job.
    assert dead._fail(job_id, RuntimeError("late")) is JobState.RUNNING
    job = _job(sessions, job_id)
    assert job.worker == "alive" and job.attempts == 2 and job.state is JobState.RUNNING


def test_a_worker_dying_on_its_last_attempt_fails_the_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = _queued_job(sessions)
    clock = Clock()
    for attempt in range(POLICY.max_attempts):
        assert _runner(sessions, tmp_path, clock, f"w{attempt}").claim(job_id)
        clock.now += timedelta(seconds=POLICY.lease_s + 1)
        with sessions() as session, session.begin():
            reap_expired(session, POLICY, clock.now)
    job = _job(sessions, job_id)
    assert job.state is JobState.FAILED and job.attempts == POLICY.max_attempts


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_s=10, backoff_max_s=35)
    assert [policy.job_delay_s(n) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]
    with pytest.raises(ValueError, match="at least one attempt"):
        RetryPolicy(max_attempts=0)


def _phantom_job(sessions: sessionmaker[Session], tmp_path: Path) -> int:
    """A queued job whose study holds a small phantom CT perfusion in ``tmp_path/data``."""
    import shutil

    from pydicom import dcmread

    from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
    from strokeflow.phantom.ctp_dicom import write_ctp_study
    from strokeflow.store.models import Instance, Series

    data_dir = tmp_path / "data"
    files = write_ctp_study(
        simulate_ctp(CtpPhantomOptions(matrix=48, slices=3, frames=20)),
        tmp_path / "sent",
        extra_series=False,
    )
    job_id = _queued_job(sessions)
    with sessions() as session, session.begin():
        job = session.get(Job, job_id)
        assert job is not None
        series = Series(study_id=job.study_id, series_uid="1.2.3.4.5", instance_count=0)
        session.add(series)
        session.flush()
        for k, path in enumerate(p for p in files if p.suffix == ".dcm"):
            relative = Path("studies") / f"{k}.dcm"
            (data_dir / "studies").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data_dir / relative)
            ds = dcmread(path, stop_before_pixels=True)
            session.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=str(relative),
                    size_bytes=path.stat().st_size,
                    sha256="0" * 64,
                    received_at=T0,
                )
            )
    return job_id


def test_a_job_run_twice_analyses_once_and_plans_dispatch_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from servicekit import free_port
    from sqlalchemy import func, select

    from strokeflow.store.models import Dispatch, DispatchState

    data_dir = tmp_path / "data"
    job_id = _phantom_job(sessions, tmp_path)
    down = f"PACS@127.0.0.1:{free_port()}"  # nothing listens: rows stay pending
    settings = Settings(data_dir=data_dir, destinations=down)
    runner = JobRunner(settings, sessions, POLICY, name="a", clock=Clock())
    assert runner.run(job_id) is JobState.SUCCEEDED
    assert runner.run(job_id) is None
    job = _job(sessions, job_id)
    assert job.state is JobState.SUCCEEDED and job.attempts == 1
    assert job.core_ml is not None and job.tmax6_ml is not None and job.decisions
    assert job.results_path == "results/1.2.3.4/v1"
    written = sorted((data_dir / job.results_path / "dicom").rglob("*.dcm"))
    with sessions() as session:
        rows = session.scalars(select(Dispatch).where(Dispatch.job_id == job_id)).all()
        assert session.scalar(select(func.count()).select_from(Dispatch)) == len(written)
    assert written and {r.path for r in rows} == {str(p.relative_to(data_dir)) for p in written}
    assert all(r.state is DispatchState.PENDING and r.attempts == 1 for r in rows)


def test_cli_reanalyse_requeues_a_failed_job_and_job_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from strokeflow.service_cli import app
    from strokeflow.store.engine import make_engine, make_session_factory
    from strokeflow.store.migrate import upgrade_to_head

    data_dir = tmp_path / "data"
    monkeypatch.setenv("STROKEFLOW_DATA_DIR", str(data_dir))
    engine = make_engine(f"sqlite:///{data_dir / 'strokeflow.sqlite'}")
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    job_id = _queued_job(sessions)
    with sessions() as session, session.begin():
        job = session.get(Job, job_id)
        assert job is not None
        job.state, job.attempts, job.error = JobState.FAILED, 3, "attempt 3: disk gone"
    cli = CliRunner()
    shown = cli.invoke(app, ["job", str(job_id), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["error"] == "attempt 3: disk gone"
    retried = cli.invoke(app, ["reanalyse", str(job_id)])
    assert retried.exit_code == 0 and "queued for analysis again" in retried.output
    info = json.loads(cli.invoke(app, ["job", str(job_id), "--json"]).stdout)
    assert info["state"] == "queued" and info["attempts"] == 0
    assert open_queue(f"sqlite:///{data_dir / 'queue.sqlite'}").pending() == 1
    again = cli.invoke(app, ["reanalyse", str(job_id)])
    assert again.exit_code == 1 and "already queued" in again.output
    resend = cli.invoke(app, ["resend", str(job_id)])
    assert resend.exit_code == 1 and "only a finished analysis" in resend.output
    removed = cli.invoke(app, ["retry", str(job_id)])
    assert removed.exit_code == 2 and f"strokeflow reanalyse {job_id}" in removed.output
    missing = cli.invoke(app, ["job", "999"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    engine.dispose()


def test_every_log_line_of_a_job_carries_its_job_id(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    import io
    import json
    import logging

    from servicekit import free_port

    from strokeflow.logsetup import configure_logging

    job_id = _phantom_job(sessions, tmp_path)
    down = f"PACS@127.0.0.1:{free_port()}"  # dispatch logs its failure too
    runner = JobRunner(Settings(data_dir=tmp_path / "data", destinations=down), sessions, POLICY)
    text, json_lines = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        # Text and JSON lines of the same records: the JSON handler is set up first, then
        # kept beside the text one (a second set-up replaces the first).
        json_handler = configure_logging(log_format="json", stream=json_lines)
        root.removeHandler(json_handler)
        configure_logging(stream=text)
        root.addHandler(json_handler)
        assert runner.run(job_id) is JobState.SUCCEEDED
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = text.getvalue().splitlines()
    assert len(lines) >= 3, lines
    assert [line for line in lines if f"job_id={job_id}" not in line] == []
    assert any("stage=analysis" in line for line in lines)
    assert any("stage=dispatch" in line for line in lines)
    records = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert len(records) == len(lines)
    assert all(r["job_id"] == str(job_id) for r in records)
    assert {r["study_uid"] for r in records if "study_uid" in r} == {"1.2.3.4"}


def test_the_core_threshold_set_in_the_toml_file_reaches_a_workers_analysis(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from strokeflow.config import load_settings

    job_id = _phantom_job(sessions, tmp_path)
    toml = tmp_path / "strokeflow.toml"
    toml.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[analysis.ctp]\ncore_rcbf_threshold = 0.2\n'
    )
    settings = load_settings(toml)
    assert JobRunner(settings, sessions, POLICY).run(job_id) is JobState.SUCCEEDED
    job = _job(sessions, job_id)
    assert job.results_path is not None
    results = json.loads((tmp_path / "data" / job.results_path / "results.json").read_text())
    (analysis,) = results["studies"][0]["analyses"]
    assert analysis["thresholds"]["core_rcbf_below"] == 0.2


def test_analysis_settings_come_from_toml_and_environment_and_typos_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strokeflow.config import load_settings

    toml = tmp_path / "strokeflow.toml"
    toml.write_text("[analysis.ctp]\ncore_rcbf_threshold = 0.25\ntmax_thresholds_s = [4, 8]\n")
    settings = load_settings(toml)
    assert settings.analysis.ctp.core_rcbf_threshold == 0.25
    assert settings.analysis.ctp.tmax_thresholds_s == (4.0, 8.0)
    monkeypatch.setenv("STROKEFLOW_ANALYSIS__MRI__ADC_CORE_THRESHOLD_UM2_S", "600")
    assert load_settings(toml).analysis.mri.adc_core_threshold_um2_s == 600.0
    toml.write_text("[analysis.ctp]\ncore_rcbf_treshold = 0.25\n")
    with pytest.raises(ValueError, match="core_rcbf_treshold"):
        load_settings(toml)


def test_the_retry_policy_set_in_the_toml_file_reaches_a_worker(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from strokeflow.config import load_settings

    monkeypatch.setattr(jobs_module, "analyze_paths", _failing_analysis(OSError("disk gone")))
    toml = tmp_path / "strokeflow.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\n[retry]\nmax_attempts = 2\nbackoff_s = 7\n')
    settings = load_settings(toml)
    # A worker process gets the settings as serve's WorkerPool hands them over.
    in_worker = Settings.model_validate(settings.model_dump(mode="json"))
    assert in_worker.retry == RetryPolicy(max_attempts=2, backoff_s=7.0)
    job_id = _queued_job(sessions)
    clock = Clock()
    runner = JobRunner(in_worker, sessions, name="a", clock=clock)
    assert runner.run(job_id) is JobState.QUEUED
    assert _job(sessions, job_id).next_attempt_at == T0 + timedelta(seconds=7)
    clock.now += timedelta(seconds=7)
    assert runner.run(job_id) is JobState.FAILED, "the second of 2 attempts is the last"
    toml.write_text("[retry]\nmax_atempts = 2\n")
    with pytest.raises(ValueError, match="max_atempts"):
        load_settings(toml)
    toml.write_text("[retry]\nmax_attempts = 0\n")
    with pytest.raises(ValueError, match="at least one attempt"):
        load_settings(toml)
    monkeypatch.setenv("STROKEFLOW_RETRY__MAX_ATTEMPTS", "5")
    assert load_settings(toml).retry.max_attempts == 5, "the environment wins over the file"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/data`` on a 224 MiB tmpfs of its own: a disk that can really be filled."""
    import os
    import subprocess

    if os.geteuid() != 0:
        message = "mounting a small tmpfs needs root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI runs as root)")
        pytest.skip(message)  # outside CI only: under CI=true it failed above
    mount = tmp_path / "data"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=224m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_delays_the_analysis_until_space_returns_with_no_manual_step(
    sessions: sessionmaker[Session], tmp_path: Path, small_disk: Path
) -> None:
    from strokeflow.worker.jobs import OUTPUT_ALLOWANCE_MB, scratch_root
    from strokeflow.worker.runner import disk_state

    job_id = _phantom_job(sessions, tmp_path)
    settings = Settings(data_dir=small_disk, min_free_disk_mb=32)
    clock = Clock()
    runner = JobRunner(settings, sessions, POLICY, name="a", clock=clock)
    ballast = small_disk / "ballast"
    with ballast.open("wb") as out:  # the disk nearly full: less free than an analysis needs
        for _ in range(int(224 - 32 - OUTPUT_ALLOWANCE_MB / 2)):
            out.write(b"\0" * 2**20)
    stale = scratch_root(small_disk) / f"job-{job_id}-deadbeef"  # a killed attempt's folder
    stale.mkdir(parents=True)
    (stale / "half.nii.gz").write_bytes(b"\0" * 2**20)

    assert runner.run(job_id) is JobState.QUEUED
    job = _job(sessions, job_id)
    assert job.attempts == 0 and job.error is not None and "disk nearly full" in job.error
    assert list(scratch_root(small_disk).iterdir()) == [stale]
    enqueued: list[list[int]] = []
    Maintenance(settings, sessions, enqueued.append, POLICY, clock=clock).run_once()
    assert not stale.exists()  # its job is not running: the folder goes
    assert disk_state(settings)["state"] == "low: analyses wait"  # /health: degraded

    ballast.unlink()  # space returns
    clock.now += timedelta(seconds=POLICY.job_delay_s(1) + 1)
    Maintenance(settings, sessions, enqueued.append, POLICY, clock=clock).run_once()
    assert enqueued == [[job_id]]
    assert runner.run(job_id) is JobState.SUCCEEDED
    assert _job(sessions, job_id).attempts == 1
    assert list(scratch_root(small_disk).iterdir()) == []
    assert disk_state(settings)["state"] == "ok"
