"""Fixtures of the dashboard tests: a data directory holding one phantom study analysed by
the real worker code (built once per session, copied per test), users, a TestClient."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.assemble.studies import force_complete, queue_complete
from strokeflow.config import Settings
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.store.repository import InstanceRecord, record_instance
from strokeflow.web.accounts import add_user
from strokeflow.web.app import create_app
from strokeflow.web.options import WebOptions
from strokeflow.worker.jobs import JobRunner

USER, PASSWORD = "alice", "correct horse battery"
PATIENT_ID = "PAT-0042"
ACCESSION = "ACC123"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own STROKEFLOW_* variables must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("STROKEFLOW_"):
            monkeypatch.delenv(name)


def make_settings(data_dir: Path, **values: object) -> Settings:
    return Settings.model_validate(
        {"data_dir": data_dir, "dicom_port": 1, "min_free_disk_mb": 0, **values}
    )


def receive_files(sessions: sessionmaker[Session], data_dir: Path, files: list[Path]) -> str:
    """Record phantom files as the listener would (copied under the data directory)."""
    now = datetime.now(UTC)
    study_uid = ""
    with sessions() as session, session.begin():
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            rel = Path("incoming") / path.name
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data_dir / rel)
            study_uid = str(ds.StudyInstanceUID)
            record_instance(
                session,
                InstanceRecord(
                    study_uid=study_uid,
                    series_uid=str(ds.SeriesInstanceUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=str(rel),
                    size_bytes=path.stat().st_size,
                    sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                    patient_id=PATIENT_ID,
                    accession_number=ACCESSION,
                    study_date="20261123",
                    modality=str(ds.get("Modality", "")),
                    series_number=int(ds.get("SeriesNumber", 0) or 0),
                    series_description=str(ds.get("SeriesDescription", "")),
                ),
                now,
            )
    return study_uid


def queue_study(sessions: sessionmaker[Session], study_uid: str) -> int:
    now = datetime.now(UTC)
    with sessions() as session, session.begin():
        force_complete(session, study_uid, now)
        return next(j.id for j in queue_complete(session, now))


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


@dataclass
class Env:
    """A ready dashboard on a copy of the analysed data directory."""

    settings: Settings
    sessions: sessionmaker[Session]
    app: FastAPI
    enqueued: list[int]

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir


@pytest.fixture
def env(analysed_template: Path, tmp_path: Path) -> Iterator[Env]:
    data_dir = tmp_path / "data"
    shutil.copytree(analysed_template, data_dir)
    settings = make_settings(data_dir)
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as session, session.begin():
        add_user(session, USER, PASSWORD, datetime.now(UTC))
    enqueued: list[int] = []
    app = create_app(
        settings,
        options=WebOptions(public_url="https://stroke.example.org"),
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


def login(client: TestClient, user: str = USER, password: str = PASSWORD) -> None:
    form = client.get("/login")
    token = form.text.split('name="csrf" value="')[1].split('"')[0]
    answer = client.post(
        "/login",
        data={"username": user, "password": password, "csrf": token, "next": "/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="')[1].split('"')[0]
