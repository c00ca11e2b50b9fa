"""The receiver's index: the writer gathers instances into one transaction (flushes and
releases not kept waiting), and placement lookups keep their read-only connections."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from servicekit import pynetdicom_store, storescu, wait_for, write_ct_files
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.receive import index
from strokeflow.receive.index import IndexWriter, PendingInstance
from strokeflow.receive.storage import instance_relpath
from strokeflow.store.models import Instance, Study


def _pending(path: Path) -> PendingInstance:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return PendingInstance(
        ds=ds,
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        relpath=instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        size_bytes=path.stat().st_size,
        calling_ae_title="CT01",
        sha256="0" * 64,
    )


def _count_commits(sessions: sessionmaker[Session]) -> list[int]:
    commits = [0]
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)

    @event.listens_for(engine, "commit")
    def _committed(_conn: object) -> None:
        commits[0] += 1

    return commits


def test_instances_queued_together_are_written_in_one_transaction(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gathering longer than the flush's timeout: the flush must cut it short.
    monkeypatch.setattr(index, "GATHER_S", 30.0)
    files = write_ct_files(tmp_path / "sent", 5)
    commits = _count_commits(sessions)
    writer = IndexWriter(sessions, tmp_path / "data", lambda: datetime.now(UTC))
    try:
        for path in files:
            writer.put(_pending(path))
        assert writer.flush(10.0)
        assert commits[0] == 1
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 5
    finally:
        writer.close()


def test_a_release_is_written_without_waiting_for_the_gathering(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index, "GATHER_S", 30.0)
    files = write_ct_files(tmp_path / "sent", 3, study="released")
    writer = IndexWriter(sessions, tmp_path / "data", lambda: datetime.now(UTC))
    try:
        for path in files:
            writer.put(_pending(path))
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        writer.release({study_uid})

        def released() -> bool:
            with sessions() as session:
                study = session.scalars(select(Study)).one_or_none()
                return study is not None and study.released

        wait_for(released, 10, "the study to be released")
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 3
    finally:
        writer.close()


def test_placement_lookups_reuse_their_connections_on_both_databases(
    make_listener: Callable[..., Any], database_url: str, tmp_path: Path
) -> None:
    listener = make_listener(database_url=database_url)
    first = write_ct_files(tmp_path / "a", 3, study="lookups-a")
    second = write_ct_files(tmp_path / "b", 3, study="lookups-b", series="series-b")
    assert storescu(listener.port, first).returncode == 0
    assert storescu(listener.port, second).returncode == 0
    # A series that belongs to another study is still refused by the kept connections.
    moved = pydicom.dcmread(second[0])
    moved.StudyInstanceUID = pydicom.dcmread(first[0]).StudyInstanceUID
    moved.SOPInstanceUID = moved.file_meta.MediaStorageSOPInstanceUID = moved.SOPInstanceUID + ".9"
    moved.save_as(tmp_path / "moved.dcm")
    # An instance already stored in another series too.
    regrouped = pydicom.dcmread(first[1])
    regrouped.SeriesInstanceUID = regrouped.SeriesInstanceUID + ".7"
    regrouped.save_as(tmp_path / "regrouped.dcm")
    assert pynetdicom_store(
        listener.port, [tmp_path / "moved.dcm", tmp_path / "regrouped.dcm"]
    ) == [
        0xA900,
        0xA900,
    ]
    reasons = " ".join(p.read_text() for p in (listener.data_dir / "quarantine").glob("*.txt"))
    assert "already belongs to another study" in reasons
    assert "already stored in another series" in reasons
    assert listener.receiver.index.flush(10)
    with listener.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 6
    # One kept connection served every lookup of these sequential associations.
    assert len(listener.receiver._readers) == 1
