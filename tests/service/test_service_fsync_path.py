"""A received file's fsync and its folder's run side by side in the disk pool (both
before the answer); the hash too for a lone association, in the association's thread when
others are open; and the receiving process's collector is tuned."""

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


def test_the_file_and_its_folder_are_fsynced_in_the_pool_and_hashed_beside(  # type: ignore[no-untyped-def]
    listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, list[str]] = {"file": [], "folder": [], "hash": []}
    sync_and_close, sync_folders = scp.sync_and_close, scp.sync_folders

    def file_synced(fd: int) -> None:
        threads["file"].append(threading.current_thread().name)
        sync_and_close(fd)

    def folders_synced(folders: Any) -> None:
        threads["folder"].append(threading.current_thread().name)
        sync_folders(folders)

    sha256 = scp._sha256

    def hashed(*parts: Any) -> str:
        threads["hash"].append(threading.current_thread().name)
        return sha256(*parts)

    monkeypatch.setattr(scp, "_sha256", hashed)
    monkeypatch.setattr(scp, "sync_and_close", file_synced)
    monkeypatch.setattr(scp, "sync_folders", folders_synced)
    files = write_ct_files(tmp_path / "sent", 4)
    first, second = _associate(listener.port), _associate(listener.port)
    wait_for(lambda: len(listener.receiver._tallies) == 2, 10, "two associations")
    senders = (first, second, first)
    statuses = [int(a.send_c_store(f).Status) for a, f in zip(senders, files[:3], strict=True)]
    first.release()
    second.release()
    assert statuses == [0x0000] * 3
    assert len(threads["file"]) == 3 and all(t.startswith("disk-write") for t in threads["file"])
    assert len(threads["folder"]) == 3
    assert all(t.startswith("disk-write") for t in threads["folder"])
    # Two associations were open: each hash in the association's thread.
    assert len(threads["hash"]) == 3
    assert not any(t.startswith("disk-write") for t in threads["hash"])
    threads["hash"].clear()
    wait_for(lambda: not listener.receiver._tallies, 10, "the two associations to end")
    alone = _associate(listener.port)
    wait_for(lambda: len(listener.receiver._tallies) == 1, 10, "only this association")
    assert int(alone.send_c_store(files[3]).Status) == 0x0000
    alone.release()
    assert threads["hash"][-1].startswith("disk-write")  # alone: hashed in the pool
    listener.receiver.index.flush(10)
    with listener.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 4


def test_a_folder_fsync_failure_answers_out_of_resources(  # type: ignore[no-untyped-def]
    listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(folders: Any) -> None:
        raise OSError(5, "Input/output error")

    files = write_ct_files(tmp_path / "sent", 2)
    monkeypatch.setattr(scp, "sync_folders", failing)
    assoc = _associate(listener.port)
    assert int(assoc.send_c_store(files[0]).Status) == 0xA700
    monkeypatch.undo()
    assert int(assoc.send_c_store(files[1]).Status) == 0x0000  # and it keeps serving
    assoc.release()
    # Nothing answered 0xA700 is left behind.
    assert len(list((listener.data_dir / "studies").rglob("*.dcm"))) == 1


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
