"""The storage SCP over real loopback sockets: storescu/echoscu (DCMTK) and pynetdicom."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless
from servicekit import need_tool, pynetdicom_store, storescu, wait_for, write_ct_files
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from dicomfactory import StudyTags, uid, write_ct_instance
from strokeflow.receive import index, scp
from strokeflow.store.models import Instance, Series, Study
from strokeflow.store.studies import note_instances


def _count(listener, model) -> int:  # type: ignore[no-untyped-def]
    with listener.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_storescu_files_are_stored_as_received_and_recorded(listener, tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "sent", 3)
    rle = write_ct_instance(
        tmp_path / "sent" / "rle.dcm",
        pydicom.dcmread(files[0]).pixel_array.astype(float) - 1024,
        study=StudyTags(study_uid=uid("study-a")),
        series_uid=uid("series-rle"),
        sop_uid=uid("rle-1"),
        position_mm=(0, 0, 0),
        transfer_syntax=RLELossless,
    )
    done = storescu(listener.port, files)
    assert done.returncode == 0, done.stderr
    done = storescu(listener.port, [rle], options=["-xr"])  # propose RLE: send it as it is
    assert done.returncode == 0, done.stderr

    with listener.sessions() as session:
        study = session.scalars(select(Study)).one()
        instances = session.scalars(select(Instance)).all()
        assert study.study_uid == uid("study-a")
        assert study.instance_count == 4
        assert study.patient_id == "SF-TEST-001"
        assert len(instances) == 4
    for sent in [*files, rle]:
        original = pydicom.dcmread(sent)
        stored_path = (
            listener.data_dir
            / "studies"
            / original.StudyInstanceUID
            / original.SeriesInstanceUID
            / f"{original.SOPInstanceUID}.dcm"
        )
        stored = pydicom.dcmread(stored_path)
        # Not transcoded: same transfer syntax, same pixel bytes.
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.PixelData == original.PixelData
    # Written straight to their place: no temporary or partial files anywhere.
    assert sorted(p.name for p in listener.data_dir.rglob("*.dcm")) == sorted(
        f"{pydicom.dcmread(sent).SOPInstanceUID}.dcm" for sent in [*files, rle]
    )


def test_same_instance_twice_is_idempotent(listener, ct_files: list[Path]) -> None:
    assert storescu(listener.port, ct_files).returncode == 0
    assert storescu(listener.port, ct_files).returncode == 0
    with listener.sessions() as session:
        assert session.scalar(select(Study.instance_count)) == len(ct_files)
        assert session.scalar(select(Series.instance_count)) == len(ct_files)
        assert set(session.scalars(select(Instance.times_received))) == {2}
    assert _count(listener, Instance) == len(ct_files)


def test_echoscu_is_answered(listener) -> None:
    echoscu = need_tool("echoscu")
    done = subprocess.run(
        [echoscu, "-aet", "CT01", "-aec", "STROKEFLOW", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_disallowed_calling_ae_and_wrong_called_ae_are_rejected(
    make_listener, ct_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    listener = make_listener(allowed_calling_aets=["CT01"])
    with caplog.at_level(logging.WARNING, logger="strokeflow.receive.scp"):
        refused = storescu(listener.port, ct_files, calling="INTRUDER")
        wrong_called = storescu(listener.port, ct_files, called="SOMEONE")
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower()
    assert wrong_called.returncode != 0
    assert "calling AE title 'INTRUDER' is not allowed" in caplog.text
    assert "called AE title 'SOMEONE' is not ours" in caplog.text
    assert _count(listener, Instance) == 0
    assert storescu(listener.port, ct_files, calling="CT01").returncode == 0
    assert _count(listener, Instance) == len(ct_files)


def test_low_disk_refuses_associations(make_listener, ct_files, caplog) -> None:  # type: ignore[no-untyped-def]
    listener = make_listener(min_free_disk_mb=1e12)
    with caplog.at_level(logging.WARNING, logger="strokeflow.receive.scp"):
        assert storescu(listener.port, ct_files).returncode != 0
    assert "below the" in caplog.text and "watermark" in caplog.text


def _malformed_files(folder: Path) -> dict[str, Path]:
    """Files whose meta is fine but whose dataset is not storable, and one good file."""
    good, spare = write_ct_files(folder / "src", 2)
    files: dict[str, Path] = {}

    ds = pydicom.dcmread(spare)
    ds.Rows = 64  # pixel data is 16 x 16: length does not match
    files["pixel_length"] = folder / "pixel_length.dcm"
    ds.save_as(files["pixel_length"], enforce_file_format=True)

    ds = pydicom.dcmread(spare)
    ds.SOPInstanceUID = "../../../../etc/evil"
    ds.file_meta.MediaStorageSOPInstanceUID = "../../../../etc/evil"
    files["path_traversal"] = folder / "path_traversal.dcm"
    ds.save_as(files["path_traversal"], enforce_file_format=True)

    ds = pydicom.dcmread(spare)
    del ds.StudyInstanceUID
    files["missing_study_uid"] = folder / "missing_study_uid.dcm"
    ds.save_as(files["missing_study_uid"], enforce_file_format=True)

    raw = spare.read_bytes()
    files["truncated"] = folder / "truncated.dcm"
    files["truncated"].write_bytes(raw[:-100])  # transfer cut off inside the pixel data

    rows = b"\x28\x00\x10\x00US\x02\x00"
    at = raw.index(rows)
    files["undecodable"] = folder / "undecodable.dcm"
    # Rows (US) with a 3-byte value: well framed, but no unsigned short can be read from it.
    files["undecodable"].write_bytes(
        raw[:at] + b"\x28\x00\x10\x00US\x03\x00" + raw[at + 8 : at + 10] + b"\x00" + raw[at + 10 :]
    )
    files["good"] = good
    return files


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malformed_instances_are_quarantined_and_the_association_goes_on(
    listener, tmp_path: Path
) -> None:
    files = _malformed_files(tmp_path)
    order = [
        "pixel_length",
        "path_traversal",
        "missing_study_uid",
        "truncated",
        "undecodable",
        "good",
    ]
    sent = pynetdicom_store(listener.port, [files[k] for k in order])
    statuses = dict(zip(order, sent, strict=True))

    assert statuses == {
        "pixel_length": 0xA900,
        "path_traversal": 0xA900,
        "missing_study_uid": 0xA900,
        "truncated": 0xC000,
        "undecodable": 0xC000,
        "good": 0x0000,
    }
    assert _count(listener, Instance) == 1
    reasons = sorted(p.read_text() for p in (listener.data_dir / "quarantine").glob("*.txt"))
    assert len(reasons) == 5
    assert len(list((listener.data_dir / "quarantine").glob("*.dcm"))) == 5
    text = "\n".join(reasons)
    assert "dataset is truncated: element (7FE0,0010) declares 512 bytes, 412 arrived" in text
    assert "dataset cannot be decoded" in text and "(0028,0010)" in text
    assert "PixelData is 512 bytes" in text
    assert "SOPInstanceUID '../../../../etc/evil' is not a valid UID" in text
    assert "StudyInstanceUID is missing" in text
    assert not (listener.data_dir.parent / "etc").exists()


def _encoded_as(ds: pydicom.Dataset, implicit_vr: bool) -> bytes:
    """Preamble, the dataset's own file meta, then the dataset in the other VR encoding."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = DicomBytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, implicit_vr
    write_dataset(body, ds)
    return meta.getvalue() + body.getvalue()


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_unknown_vrs_and_misencoded_data_are_refused_and_what_is_stored_reads_back(
    listener, tmp_path: Path
) -> None:
    """Fuzzers send implicit-VR data under an explicit syntax and unknown VRs; what is
    answered 0x0000 must be readable by another DICOM reader (DCMTK), the rest quarantined."""
    dcmdump = need_tool("dcmdump")
    sources = write_ct_files(tmp_path / "src", 5)
    files = []
    for k, (tag, vr) in enumerate(
        [(b"\x08\x00\x70\x00", b"LO"), (b"\x10\x00\x10\x00", b"PN"), (b"\x20\x00\x13\x00", b"IS")]
    ):
        raw = sources[k].read_bytes()
        assert tag + vr in raw
        files.append(tmp_path / f"unknown_vr_{k}.dcm")
        files[-1].write_bytes(raw.replace(tag + vr, tag + b"XX", 1))
    implicit = tmp_path / "implicit_as_explicit.dcm"
    implicit.write_bytes(_encoded_as(pydicom.dcmread(sources[3]), implicit_vr=True))
    files += [implicit, sources[4]]

    statuses = pynetdicom_store(listener.port, files)

    assert statuses == [0xC000, 0xC000, 0xC000, 0xC000, 0x0000]
    reasons = "\n".join(p.read_text() for p in (listener.data_dir / "quarantine").glob("*.txt"))
    assert reasons.count("Unknown Value Representation 'XX'") == 3
    assert "encoded with implicit VR but the transfer syntax Explicit VR Little Endian" in reasons
    stored = sorted((listener.data_dir / "studies").rglob("*.dcm"))
    assert len(stored) == 1 and _count(listener, Instance) == 1
    for path in stored:
        subprocess.run([dcmdump, "-q", str(path)], check=True, capture_output=True)


@pytest.mark.parametrize("step", ["create_new", "sync_and_close"])
def test_disk_failure_answers_out_of_resources_and_keeps_serving(
    listener, ct_files: list[Path], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    real = getattr(scp, step)
    calls = {"n": 0}

    def failing_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            if step == "sync_and_close":
                os.close(args[0])
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(scp, step, failing_once)
    statuses = pynetdicom_store(listener.port, ct_files)
    assert statuses[0] == 0xA700
    assert statuses[1:] == [0x0000] * (len(ct_files) - 1)
    # Nothing half-written is left behind: only the instances answered 0x0000 are there.
    stored = list((listener.data_dir / "studies").glob("*/*/*.dcm"))
    assert len(stored) == len(ct_files) - 1
    # The sender retries the failed one: now everything is there.
    assert pynetdicom_store(listener.port, ct_files[:1]) == [0x0000]
    assert _count(listener, Instance) == len(ct_files)


def test_unreadable_index_answers_out_of_resources(
    listener, ct_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("SELECT", {}, Exception("unable to open database file"))

    monkeypatch.setattr(scp, "placement", broken)
    assert pynetdicom_store(listener.port, ct_files[:2]) == [0xA700, 0xA700]
    assert not list(listener.data_dir.rglob("*.dcm"))
    monkeypatch.undo()
    assert pynetdicom_store(listener.port, ct_files[:2]) == [0x0000, 0x0000]
    assert _count(listener, Instance) == 2


def test_index_writer_failure_keeps_what_was_acknowledged_and_refuses_more(
    listener, ct_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rows are written after the answer: an instance acknowledged before the database
    # failed is on disk and indexed once the database is back; while the writer cannot
    # write, new instances are answered 0xA700 (the release does not wait for ever).
    def broken(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(index, "note_instances", broken)
    monkeypatch.setattr(scp, "FLUSH_TIMEOUT_S", 0.5)
    writer = listener.receiver.index
    assert pynetdicom_store(listener.port, ct_files[:1]) == [0x0000]
    wait_for(lambda: writer.failure is not None, 10, "the index writer to fail")
    assert pynetdicom_store(listener.port, ct_files[1:2]) == [0xA700]
    assert _count(listener, Instance) == 0
    monkeypatch.setattr(index, "note_instances", note_instances)
    assert writer.flush(10)
    assert writer.failure is None
    assert _count(listener, Instance) == 1
    assert pynetdicom_store(listener.port, ct_files[1:2]) == [0x0000]
    assert _count(listener, Instance) == 2
