"""Fixtures of the dashboard tests: a data directory holding one phantom study analysed by
the real worker code (built once per session, copied per test), users, a TestClient."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from webenv import PASSWORD, USER, Env, make_settings, queue_study, receive_files

from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.web.accounts import add_user
from strokeflow.web.app import create_app
from strokeflow.worker.jobs import JobRunner


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own STROKEFLOW_* variables must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("STROKEFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def analysed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with one phantom study received, queued and analysed (job 1)."""
    root = tmp_path_factory.mktemp("web-template")
    phantom = simulate_ctp(CtpPhantomOptions(matrix=64, slices=4, frames=30, seed=1))
    files = write_ctp_study(phantom, root / "sent")
    data_dir = root / "data"
    settings = make_settings(data_dir)
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    study_uid = receive_files(sessions, data_dir, files)
    job_id = queue_study(sessions, study_uid)
    JobRunner(settings, sessions).run(job_id)
    engine.dispose()
    return data_dir


@pytest.fixture
def env(analysed_template: Path, tmp_path: Path) -> Iterator[Env]:
    data_dir = tmp_path / "data"
    shutil.copytree(analysed_template, data_dir)
    settings = make_settings(data_dir, public_url="https://stroke.example.org")
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as session, session.begin():
        add_user(session, USER, PASSWORD, datetime.now(UTC))
    enqueued: list[int] = []
    app = create_app(
        settings,
        sessions=sessions,
        enqueue=enqueued.extend,
        queue_pending=lambda: len(enqueued),
    )
    yield Env(settings, sessions, app, enqueued)
    engine.dispose()


@pytest.fixture
def client(env: Env) -> Iterator[TestClient]:
    with TestClient(env.app) as test_client:
        yield test_client
