"""Shared helpers of the dashboard tests: users, a phantom study recorded as the listener
would, a queued job, the test environment and the login/CSRF steps."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.store.repository import InstanceRecord, record_instance
from strokeflow.store.studies import force_complete, queue_complete

USER, PASSWORD = "alice", "correct horse battery"
PATIENT_ID = "PAT-0042"
ACCESSION = "ACC123"


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
