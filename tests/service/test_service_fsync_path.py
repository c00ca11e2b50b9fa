"""Where a received file's fsyncs run: in the disk pool beside the checks for a lone
association, in the association's own thread when others are open in the process; the
answer waits for them either way, and the receiving process's collector is tuned."""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from servicekit import wait_for, write_ct_files
from sqlalchemy import func, select

from strokeflow.receive import listener as listener_module
from strokeflow.receive import scp
from strokeflow.store.models import Instance


def _associate(port: int) -> Any:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="STROKEFLOW")
    assert assoc.is_established
    return assoc


def _wait_open(listener: Any, count: int) -> None:
    wait_for(lambda: len(listener.receiver._tallies) == count, 10, f"{count} associations")


def test_fsyncs_leave_the_association_thread_only_when_it_is_alone(  # type: ignore[no-untyped-def]
    listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []  # the thread each file's fsyncs ran in
    sync_new = scp.sync_new

    def recorded(new: Any) -> None:
        synced.append(threading.current_thread().name)
        sync_new(new)

    monkeypatch.setattr(scp, "sync_new", recorded)
    files = write_ct_files(tmp_path / "sent", 5)
    alone = _associate(listener.port)
    assert int(alone.send_c_store(files[0]).Status) == 0x0000
    assert synced[0].startswith("disk-write")

    other = _associate(listener.port)
    _wait_open(listener, 2)
    assert int(alone.send_c_store(files[1]).Status) == 0x0000
    assert int(other.send_c_store(files[2]).Status) == 0x0000
    assert not any(name.startswith("disk-write") for name in synced[1:3])
    other.release()
    alone.release()

    last = _associate(listener.port)
    _wait_open(listener, 1)
    assert int(last.send_c_store(files[3]).Status) == 0x0000
    last.release()
    assert synced[3].startswith("disk-write")
    listener.receiver.index.flush(10)
    with listener.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 4
    assert len(list((listener.settings.data_dir / "studies").rglob("*.dcm"))) == 4


def test_an_fsync_failure_in_the_association_thread_answers_out_of_resources(  # type: ignore[no-untyped-def]
    listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(new: Any) -> None:
        scp.sync_and_close(new.fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(scp, "sync_new", failing)
    files = write_ct_files(tmp_path / "sent", 2)
    first, second = _associate(listener.port), _associate(listener.port)
    _wait_open(listener, 2)
    assert int(first.send_c_store(files[0]).Status) == 0xA700
    assert int(second.send_c_store(files[1]).Status) == 0xA700
    first.release()
    second.release()
    assert not list((listener.settings.data_dir / "studies").rglob("*.dcm"))


def test_receiving_process_collector_is_tuned() -> None:
    before, switch_s = gc.get_threshold(), sys.getswitchinterval()
    try:
        listener_module.tune_interpreter()
        assert gc.get_threshold()[0] == listener_module.RECEIVER_GC_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(switch_s)
