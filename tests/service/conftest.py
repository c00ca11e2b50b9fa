"""Fixtures for the service tests: small CT files, databases (SQLite and a real PostgreSQL
started here), in-process DICOM listeners on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servicekit import (
    PACS_AE,
    Orthanc,
    Postgres,
    free_port,
    fresh_postgres_database,
    pg_bin,
    write_ct_files,
)
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.receive.scp import Receiver, start_server
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from tools import require_tool, tool_missing


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own STROKEFLOW_* variables must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("STROKEFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture
def ct_files(tmp_path: Path) -> list[Path]:
    return write_ct_files(tmp_path / "sent", 4)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Start PostgreSQL (initdb + pg_ctl into a temporary folder), stop it afterwards.

    As root the server runs as the ``postgres`` user (it refuses root). Missing binaries
    fail the PostgreSQL tests.
    """
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        tool_missing("PostgreSQL server binaries (initdb, pg_ctl; apt: postgresql) are missing")
    root = Path(tempfile.mkdtemp(prefix="strokeflow-pg-"))
    run: list[str] = []
    if os.geteuid() == 0:
        run = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    user, port, data = "strokeflow", free_port(), root / "data"
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        subprocess.run(
            [*run, initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *run,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "30",
                "-o",
                options,
                "start",
            ],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr.decode()} {log}")
    try:
        yield Postgres(port, user)
    finally:
        subprocess.run(
            [*run, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: SQLite in tmp, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return fresh_postgres_database(request.getfixturevalue("postgres"))


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated database (SQLite and PostgreSQL)."""
    engine = make_engine(database_url)
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


@dataclass
class Listener:
    """An in-process storage SCP."""

    settings: Settings
    sessions: sessionmaker[Session]
    receiver: Receiver
    port: int

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir


@pytest.fixture
def make_listener(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    """Start in-process listeners (a free port each); all are stopped at the end."""
    started = []

    def start(**overrides: object) -> Listener:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "dicom_port": 0,
            "bind_address": "127.0.0.1",
            "min_free_disk_mb": 0,
            "quiet_period_s": 1.0,
        }
        values.update(overrides)
        settings = Settings.model_validate(values)
        engine = make_engine(settings.effective_database_url)
        upgrade_to_head(engine)
        factory = make_session_factory(engine)
        receiver = Receiver(settings, factory)
        server = start_server(receiver)
        started.append((server, receiver, engine))
        return Listener(settings, factory, receiver, int(server.server_address[1]))

    yield start
    for server, receiver, engine in started:
        server.shutdown()
        receiver.close()
        engine.dispose()


@pytest.fixture
def listener(make_listener: Callable[..., Listener]) -> Listener:
    return make_listener()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """An Orthanc PACS that knows StrokeFlow's AE; stopped afterwards."""
    binary = require_tool("Orthanc", "orthanc")
    root = tmp_path / "orthanc"
    root.mkdir()
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "strokeflow-test-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "DicomAet": PACS_AE,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomModalities": {"strokeflow": ["STROKEFLOW", "127.0.0.1", 1]},
        "Plugins": [],
        "HttpServerEnabled": True,
        "StableAge": 1,
    }
    path = root / "orthanc.json"
    path.write_text(json.dumps(config))
    server = Orthanc(binary, path, dicom_port, http_port)
    server.start()
    yield server
    server.stop()
