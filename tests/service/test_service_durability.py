"""Rows written after the answer: batch recording, and start-up reconciliation of the files
that a crash left without rows."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from servicekit import pynetdicom_store, write_ct_files
from sqlalchemy import delete, select

from strokeflow.receive.reconcile import reconcile
from strokeflow.store.models import Instance, Series, Study
from strokeflow.store.repository import InstanceChange, InstanceRecord
from strokeflow.store.studies import note_instance, note_instances

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def _record(study: str, series: str, n: int, sha: str = "a") -> InstanceRecord:
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_instance_uid=f"{series}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"studies/{study}/{series}/{series}.{n}_{sha}.dcm",
        size_bytes=10 + n,
        sha256=sha * 64,
        expected_study_instances=5 if n == 2 else None,
    )


def _state(sessions) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        studies = session.execute(
            select(
                Study.study_uid,
                Study.instance_count,
                Study.expected_instances,
                Study.state,
                Study.released,
            ).order_by(Study.study_uid)
        ).all()
        series = session.execute(
            select(Series.series_uid, Series.instance_count).order_by(Series.series_uid)
        ).all()
        instances = session.execute(
            select(Instance.sop_instance_uid, Instance.sha256, Instance.times_received).order_by(
                Instance.sop_instance_uid
            )
        ).all()
    return tuple(map(tuple, studies)), tuple(map(tuple, series)), tuple(map(tuple, instances))


def test_batch_recording_counts_as_one_by_one(sessions, database_url) -> None:  # type: ignore[no-untyped-def]
    first = [_record("1.1", "1.1.1", n) for n in range(3)] + [_record("1.2", "1.2.1", 0)]
    # A resend, a changed resend, new ones (one reaching the announced count of 5).
    second = [
        _record("1.1", "1.1.1", 0),
        _record("1.1", "1.1.1", 1, sha="b"),
        _record("1.1", "1.1.2", 3),
        _record("1.1", "1.1.2", 4),
        _record("1.2", "1.2.1", 1),
    ]
    with sessions() as session, session.begin():
        assert set(note_instances(session, first, T0).values()) == {InstanceChange.NEW}
    with sessions() as session, session.begin():
        changes = note_instances(session, second, T0 + timedelta(seconds=1))
    assert changes == {
        "1.1.1.0": InstanceChange.DUPLICATE,
        "1.1.1.1": InstanceChange.REPLACED,
        "1.1.2.3": InstanceChange.NEW,
        "1.1.2.4": InstanceChange.NEW,
        "1.2.1.1": InstanceChange.NEW,
    }
    batched = _state(sessions)
    with sessions() as session:
        replaced = session.scalar(
            select(Instance.path).where(Instance.sop_instance_uid == "1.1.1.1")
        )
    assert replaced == "studies/1.1/1.1.1/1.1.1.1_b.dcm"  # where the file is: kept as given

    with sessions() as session, session.begin():
        session.execute(delete(Study))
    with sessions() as session, session.begin():
        for record in first:
            note_instance(session, record, T0)
    with sessions() as session, session.begin():
        for record in second:
            note_instance(session, record, T0 + timedelta(seconds=1))
    assert _state(sessions) == batched
    studies = batched[0]
    assert studies[0][1:4] == (5, 5, "complete")  # the announced count is reached


def _stored(listener) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with listener.sessions() as session:
        return dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())


def _counts(listener) -> dict[str, tuple[object, ...]]:  # type: ignore[no-untyped-def]
    """The counting elements each row holds (what completion reads instead of the files)."""
    with listener.sessions() as session:
        rows = session.execute(
            select(
                Instance.sop_instance_uid,
                Instance.slice_key,
                Instance.number_of_frames,
                Instance.acquisition_number,
            )
        ).all()
    return {uid: tuple(values) for uid, *values in rows}


def test_reconciliation_indexes_acknowledged_files_and_quarantines_remains(
    listener, tmp_path: Path
) -> None:
    files = write_ct_files(tmp_path / "sent", 4)
    assert pynetdicom_store(listener.port, files[:3]) == [0x0000] * 3
    indexed = _stored(listener)
    assert len(indexed) == 3
    written = _counts(listener)  # by the index writer, from the datasets it was given
    assert set(written.values()) == {(f"0.0,0.0,{5.0 * i}", 1, None) for i in range(3)}
    data = listener.data_dir
    # A crash before the rows were committed: the files are there, the rows are not.
    with listener.sessions() as session, session.begin():
        session.execute(delete(Study))
    # A file cut short by the crash (never acknowledged), at the place its UIDs give.
    whole = files[3].read_bytes()
    sop = pydicom.dcmread(files[3]).SOPInstanceUID
    cut = data / Path(next(iter(indexed.values()))).parent / f"{sop}.dcm"
    cut.write_bytes(whole[: len(whole) - 100])

    done = reconcile(data, listener.sessions, datetime.now(UTC))

    assert (done.indexed, done.quarantined) == (3, 1)
    assert _stored(listener) == indexed
    assert _counts(listener) == written  # rebuilt from the files, as the writer had them
    with listener.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 3
    assert not cut.exists()
    reasons = [p.read_text() for p in (data / "quarantine").glob("*.txt")]
    assert len(reasons) == 1 and "truncated" in reasons[0] and "without an index row" in reasons[0]
    # Run again: nothing left to do.
    again = reconcile(data, listener.sessions, datetime.now(UTC))
    assert (again.indexed, again.quarantined) == (0, 0)


def test_reconciliation_indexes_a_lost_replacement_but_not_an_older_version(
    listener, tmp_path: Path
) -> None:
    files = write_ct_files(tmp_path / "sent", 1)
    assert pynetdicom_store(listener.port, files) == [0x0000]
    changed = pydicom.dcmread(files[0])
    changed.PatientID = "SF-TEST-002"
    changed.save_as(tmp_path / "changed.dcm")
    assert pynetdicom_store(listener.port, [tmp_path / "changed.dcm"]) == [0x0000]
    ((sop, newest),) = _stored(listener).items()
    assert "_" in Path(newest).name
    data = listener.data_dir
    first = data / Path(newest).parent / f"{sop}.dcm"
    assert first.is_file()
    # The older version is no row's file; it stays unindexed, as it was.
    assert reconcile(data, listener.sessions, datetime.now(UTC)).indexed == 0
    # A power cut took the replacement's row (SQLite synchronous=NORMAL): the row still
    # names the first file, older than the replacement's.
    with listener.sessions() as session, session.begin():
        row = session.scalars(select(Instance)).one()
        row.path, row.sha256 = first.relative_to(data).as_posix(), "0" * 64
        row.received_at = datetime.now(UTC) - timedelta(hours=1)

    done = reconcile(data, listener.sessions, datetime.now(UTC))

    assert (done.indexed, done.quarantined) == (1, 0)
    assert _stored(listener) == {sop: newest}
    with listener.sessions() as session:
        assert session.scalars(select(Study.patient_id)).one() == "SF-TEST-002"


def test_reconciliation_quarantines_a_file_its_uids_do_not_place(listener, tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "sent", 1)
    assert pynetdicom_store(listener.port, files) == [0x0000]
    data = listener.data_dir
    ((_, path),) = _stored(listener).items()
    elsewhere = data / "studies" / "1.2.3" / "4.5.6" / "7.8.9.dcm"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes((data / path).read_bytes())

    done = reconcile(data, listener.sessions, datetime.now(UTC))

    assert (done.indexed, done.quarantined) == (0, 1)
    (reason,) = (p.read_text() for p in (data / "quarantine").glob("*.txt"))
    assert "its UIDs place it at" in reason
    assert len(_stored(listener)) == 1


def test_batch_with_a_contradicting_record_raises(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session, session.begin():
        note_instances(session, [_record("1.1", "1.1.1", 0)], T0)
    moved = dataclasses.replace(_record("1.1", "1.1.1", 1), study_uid="1.9")
    with (
        pytest.raises(ValueError, match="already belongs to another study"),
        sessions() as session,
        session.begin(),
    ):
        note_instances(session, [_record("1.1", "1.1.1", 2), moved], T0)
    assert len(_state(sessions)[2]) == 1  # nothing of the failed batch was committed
