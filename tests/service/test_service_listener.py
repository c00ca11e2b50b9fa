"""The whole listener as a process: restart mid-study, several receiving processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from servicekit import free_port, need_tool, storescu, wait_for, write_ct_files
from sqlalchemy import select

from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.models import Instance, Job, Study


class ListenerProcess:
    """``strokeflow listener`` in its own process group, configured by environment."""

    def __init__(self, data_dir: Path, port: int, receivers: int) -> None:
        self.port = port
        self.env = {
            **os.environ,
            "STROKEFLOW_DATA_DIR": str(data_dir),
            "STROKEFLOW_DICOM_PORT": str(port),
            "STROKEFLOW_BIND_ADDRESS": "127.0.0.1",
            "STROKEFLOW_QUIET_PERIOD_S": "3",
            "STROKEFLOW_MIN_FREE_DISK_MB": "0",
            "STROKEFLOW_RECEIVER_PROCESSES": str(receivers),
        }
        self.log = data_dir.parent / "listener.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        echoscu = need_tool("echoscu")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "strokeflow.service_cli", "listener"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            done = subprocess.run(
                [echoscu, "-aec", "STROKEFLOW", "127.0.0.1", str(self.port)],
                capture_output=True,
                timeout=10,
            )
            return done.returncode == 0

        wait_for(answers, 30, "the listener to answer C-ECHO")

    def kill(self) -> None:
        """Kill -9 the whole process group, as a crash or power cut would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(30)
        return int(self.proc.returncode)


@pytest.fixture
def listener_process(tmp_path: Path) -> Iterator[ListenerProcess]:
    process = ListenerProcess(tmp_path / "data", free_port(), receivers=2)
    yield process
    if process.proc is not None and process.proc.poll() is None:
        os.killpg(process.proc.pid, signal.SIGKILL)
        process.proc.wait(10)


def test_restart_mid_study_loses_nothing_and_the_study_completes(
    listener_process: ListenerProcess, tmp_path: Path
) -> None:
    files = write_ct_files(tmp_path / "sent", 6, study="restart")
    listener_process.start()
    assert storescu(listener_process.port, files[:3]).returncode == 0
    listener_process.kill()  # before the 3 s quiet period is over

    listener_process.start()
    assert storescu(listener_process.port, files[3:]).returncode == 0

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'strokeflow.sqlite'}")
    sessions = make_session_factory(engine)

    def job() -> Job | None:
        with sessions() as session:
            return session.scalars(select(Job)).one_or_none()

    queued = wait_for(job, 20, "the study to be queued")
    assert isinstance(queued, Job)
    assert (queued.version, queued.instance_count) == (1, 6)
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.completion_reason == "quiet_period"
        paths = session.scalars(select(Instance.path)).all()
    assert len(paths) == 6
    assert all((tmp_path / "data" / p).is_file() for p in paths)
    engine.dispose()
    assert listener_process.stop() == 0
    log = listener_process.log.read_text()
    assert "resuming 1 half-received studies" in log
    assert "Test^Phantom" not in log  # no patient names in the logs


def _send_noting_acks(port: int, files: list[Path], acked: list[str]) -> None:
    """Send over one association; note each SOP Instance UID answered 0x0000, until the
    association breaks."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="STROKEFLOW")
    assert assoc.is_established
    for path in files:
        ds = pydicom.dcmread(path)
        try:
            status = assoc.send_c_store(ds)
        except (OSError, RuntimeError):
            return
        if not assoc.is_established or "Status" not in status:
            return
        if int(status.Status) == 0x0000:
            acked.append(str(ds.SOPInstanceUID))
    assoc.release()


def test_kill_mid_send_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "sent", 200, study="killed", size=128)
    data = tmp_path / "data"
    process = ListenerProcess(data, free_port(), receivers=1)
    process.start()
    acked: list[str] = []
    sender = threading.Thread(target=_send_noting_acks, args=(process.port, files, acked))
    try:
        sender.start()
        wait_for(lambda: len(acked) >= 10, 60, "10 instances acknowledged")
        # Another writer holds the database: the receiver goes on acknowledging (the file
        # is what the answer waits for) while its rows queue up, then it is killed.
        blocker = sqlite3.connect(data / "strokeflow.sqlite", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        held_at = len(acked)
        wait_for(lambda: len(acked) >= held_at + 30, 60, "30 more instances acknowledged")
        process.kill()
        blocker.rollback()
        blocker.close()
        sender.join(30)
        assert len(acked) < len(files)

        process.start()  # reconciles before it answers
        engine = make_engine(f"sqlite:///{data / 'strokeflow.sqlite'}")
        with make_session_factory(engine)() as session:
            rows = dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())
            study = session.scalars(select(Study)).one()
        engine.dispose()
        assert set(acked) <= set(rows)
        assert study.instance_count == len(rows)
        for sop in acked:
            stored = pydicom.dcmread(data / rows[sop])
            assert str(stored.SOPInstanceUID) == sop
        assert process.stop() == 0
        assert "stored files without an index row indexed" in process.log.read_text()
    finally:
        if process.proc is not None and process.proc.poll() is None:
            os.killpg(process.proc.pid, signal.SIGKILL)
            process.proc.wait(10)


def test_simultaneous_associations_go_to_different_receiving_processes(
    listener_process: ListenerProcess, tmp_path: Path
) -> None:
    files = write_ct_files(tmp_path / "sent", 4, study="spread")
    listener_process.start()
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage)
    # One association after the other is open: the second must not join the first's
    # process while the other one is idle (under SO_REUSEPORT it did, one time in two).
    first = ae.associate("127.0.0.1", listener_process.port, ae_title="STROKEFLOW")
    assert first.is_established
    assert int(first.send_c_store(pydicom.dcmread(files[0])).Status) == 0x0000
    second = ae.associate("127.0.0.1", listener_process.port, ae_title="STROKEFLOW")
    assert second.is_established
    assert int(second.send_c_store(pydicom.dcmread(files[1])).Status) == 0x0000
    first.release()
    second.release()
    assert listener_process.stop() == 0
    ended = [
        line.split()[3]  # the process name, after date, time and level
        for line in listener_process.log.read_text().splitlines()
        if "association CT01@" in line and " ended: " in line
    ]
    assert len(ended) == 2
    assert ended[0] != ended[1]
    assert all(name.startswith("strokeflow-receiver-") for name in ended)
