"""The service sub-commands: config, complete, jobs, echo, send."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from servicekit import write_ct_files
from sqlalchemy import select
from typer.testing import CliRunner

from strokeflow.service_cli import app
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.store.models import Instance
from strokeflow.store.repository import InstanceRecord
from strokeflow.store.studies import note_instance

runner = CliRunner()


def test_config_prints_the_effective_configuration_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STROKEFLOW_DATABASE_URL", "postgresql+psycopg://sf:hunter2@db/sf")
    monkeypatch.setenv("STROKEFLOW_DESTINATIONS", "PACS@pacs:104")
    monkeypatch.setenv("STROKEFLOW_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["database_url"] == "postgresql+psycopg://sf:***@db/sf"
    assert shown["destinations"] == ["PACS@pacs:104"]
    assert shown["data_dir"] == str(tmp_path)
    assert "hunter2" not in result.output


def test_invalid_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROKEFLOW_DESTINATIONS", "nonsense")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "not of the form AE@host:port" in result.output


def test_complete_forces_a_study_and_jobs_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STROKEFLOW_DATA_DIR", str(tmp_path))
    engine = make_engine(f"sqlite:///{tmp_path / 'strokeflow.sqlite'}")
    upgrade_to_head(engine)
    with make_session_factory(engine)() as session, session.begin():
        note_instance(
            session,
            InstanceRecord(
                "1.2.3",
                "1.2.3.1",
                "1.2.3.1.1",
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.840.10008.1.2.1",
                "x.dcm",
                1,
                "0" * 64,
            ),
            datetime.now(UTC),
        )
    engine.dispose()

    assert runner.invoke(app, ["jobs"]).output.strip() == "no jobs"
    result = runner.invoke(app, ["complete", "1.2.3"])
    assert result.exit_code == 0, result.output
    assert "study 1.2.3: job 1 version 1 queued (1 instances)" in result.output
    again = runner.invoke(app, ["complete", "1.2.3"])
    assert again.exit_code == 1 and "already queued as job version 1" in again.output
    unknown = runner.invoke(app, ["complete", "9.9.9"])
    assert unknown.exit_code == 1 and "has not been received" in unknown.output

    listed = runner.invoke(app, ["jobs", "--json"])
    assert listed.exit_code == 0, listed.output
    job = json.loads(listed.output.strip())
    assert (job["study_uid"], job["version"], job["state"], job["instances"]) == (
        "1.2.3",
        1,
        "queued",
        1,
    )
    assert runner.invoke(app, ["jobs", "--state", "failed"]).output.strip() == "no jobs"
    assert runner.invoke(app, ["jobs", "--state", "bogus"]).exit_code == 2

    header, row = runner.invoke(app, ["jobs"]).output.splitlines()
    assert header.split() == [
        "JOB",
        "VER",
        "STATE",
        "ATTEMPT",
        "INSTANCES",
        "QUEUED",
        "FINISHED",
        "STUDY",
        "UID",
    ]
    # Each value stands in its column.
    assert row.index("queued") == header.index("STATE") and row.endswith("1.2.3")
    assert row.split()[:5] == ["1", "v1", "queued", "0", "1"]


@pytest.mark.parametrize("command", ["serve", "listener", "worker", "jobs"])
def test_help_shows_flags_without_a_bool_metavar(command: str) -> None:
    shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"}).output
    assert "--help" in shown and "<bool>" not in shown
    assert "<int>" in shown or "<path>" in shown  # options with a value keep their type


def test_analyze_help_shows_flags_without_a_bool_metavar() -> None:
    from strokeflow.cli import app as main_app

    shown = runner.invoke(main_app, ["analyze", "--help"], env={"COLUMNS": "120"}).output
    assert "--no-maps" in shown and "<bool>" not in shown and "<float>" in shown


def test_echo_and_send_to_a_listener(listener, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = f"STROKEFLOW@127.0.0.1:{listener.port}"
    result = runner.invoke(app, ["echo", dest])
    assert result.exit_code == 0, result.output
    assert "C-ECHO ok" in result.output

    write_ct_files(tmp_path / "outgoing" / "a", 2)
    write_ct_files(tmp_path / "outgoing" / "b", 3, study="study-b", series="series-b")
    (tmp_path / "outgoing" / "notes.txt").write_text("not DICOM")
    result = runner.invoke(app, ["send", str(tmp_path / "outgoing"), "--to", dest])
    assert result.exit_code == 0, result.output
    assert "sent 5 of 5 files" in result.output
    with listener.sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 5


def test_echo_to_nobody_fails_clearly() -> None:
    from servicekit import free_port

    result = runner.invoke(app, ["echo", f"NOBODY@127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "could not be reached" in result.output


def test_retry_flags_override_the_retry_section_of_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strokeflow.config import RetryPolicy, Settings
    from strokeflow.worker import runner as worker_runner

    started: list[Settings] = []
    monkeypatch.setattr(worker_runner, "run_worker", started.append)
    toml = tmp_path / "strokeflow.toml"
    toml.write_text("[retry]\nmax_attempts = 2\nlease_s = 20\n")
    result = runner.invoke(app, ["worker", "--config", str(toml), "--lease-s", "5"])
    assert result.exit_code == 0, result.output
    assert [s.retry for s in started] == [RetryPolicy(max_attempts=2, lease_s=5.0)]
    refused = runner.invoke(app, ["worker", "--config", str(toml), "--max-attempts", "0"])
    assert refused.exit_code == 2 and "at least one attempt" in refused.output
    assert len(started) == 1
