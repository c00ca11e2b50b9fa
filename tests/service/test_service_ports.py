"""A port already in use: one line naming it and its setting, exit 1, nothing started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from servicekit import free_port
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.ports import PortInUseError
from strokeflow.receive.scp import Receiver, start_server
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.web.server import start_web_server
from strokeflow.worker import runner

STROKEFLOW = str(Path(sys.executable).parent / "strokeflow")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run(tmp_path: Path, command: str, **values: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROKEFLOW_")}
    env.update(
        {
            "STROKEFLOW_DATA_DIR": str(tmp_path / "data"),
            "STROKEFLOW_BIND_ADDRESS": "127.0.0.1",
            "STROKEFLOW_WORKER_COUNT": "1",
        }
    )
    env.update({f"STROKEFLOW_{k.upper()}": str(v) for k, v in values.items()})
    return subprocess.run(
        [STROKEFLOW, command], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("which", "other", "setting"),
    [("http_port", "dicom_port", "STROKEFLOW_HTTP_PORT"), ("dicom_port", "http_port", "")],
)
def test_serve_on_a_taken_port_says_which_and_starts_nothing(
    tmp_path: Path, taken_port: int, which: str, other: str, setting: str
) -> None:
    setting = setting or f"STROKEFLOW_{which.upper()}"
    done = _run(tmp_path, "serve", **{which: taken_port, other: 0})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(taken_port) in lines[0] and setting in lines[0] and f"'{which}'" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
    # No database, no queue, no worker: the data folder was never even created.
    assert not (tmp_path / "data").exists()


def test_listener_on_a_taken_dicom_port_says_which(tmp_path: Path, taken_port: int) -> None:
    done = _run(tmp_path, "listener", dicom_port=taken_port)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "STROKEFLOW_DICOM_PORT" in done.stderr
    assert str(taken_port) in done.stderr and "Traceback" not in done.stderr


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings.model_validate(
        {"data_dir": tmp_path / "data", "bind_address": "127.0.0.1", **values}
    )


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


def test_the_servers_themselves_name_the_port_when_their_bind_fails(
    tmp_path: Path, taken_port: int, sqlite_sessions: sessionmaker[Session]
) -> None:
    sessions = sqlite_sessions
    settings = _settings(tmp_path, dicom_port=taken_port, http_port=taken_port)
    receiver = Receiver(settings, sessions)
    try:
        with pytest.raises(PortInUseError, match=f"DICOM port {taken_port}.*dicom_port"):
            start_server(receiver)
    finally:
        receiver.close()
    with pytest.raises(PortInUseError, match=f"HTTP port {taken_port}.*http_port"):
        start_web_server(settings, sessions, lambda _ids: None, lambda: 0, dict)


def test_serve_starts_no_worker_when_the_http_side_cannot_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is taken between the first check and the real bind (a race)."""
    pools: list[object] = []
    monkeypatch.setattr(runner, "WorkerPool", lambda *a: pools.append(a))

    def taken(*_args: object) -> runner.HttpHandle:
        raise PortInUseError(98, "HTTP port 1 is already in use")

    settings = _settings(tmp_path, dicom_port=0, http_port=0)
    with pytest.raises(PortInUseError):
        runner.run_serve(settings, stop=threading.Event(), start_http=taken)
    assert pools == []


def test_dicom_and_http_listen_on_their_own_addresses(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    settings = _settings(
        tmp_path,
        bind_address="0.0.0.0",
        dicom_bind_address="127.0.0.2",
        http_bind_address="127.0.0.1",
        dicom_port=0,
        http_port=free_port(),
    )
    view = settings.public_view()
    assert view["http_bind_address"] == "127.0.0.1" and view["dicom_bind_address"] == "127.0.0.2"
    receiver = Receiver(settings, sqlite_sessions)
    dicom = start_server(receiver)
    web = start_web_server(settings, sqlite_sessions, lambda _ids: None, lambda: 0, dict)
    try:
        assert dicom.server_address[0] == "127.0.0.2"
        with socket.create_connection(("127.0.0.1", settings.http_port), timeout=5):
            pass
        with socket.socket() as probe:
            # Nothing of ours on the DICOM address's HTTP port: the two are apart.
            assert probe.connect_ex(("127.0.0.2", settings.http_port)) != 0
    finally:
        web.shutdown()
        dicom.shutdown()
        receiver.close()
    both = _settings(tmp_path, bind_address="127.0.0.3")
    assert both.http_address == both.dicom_address == "127.0.0.3"
