"""Dispatch: C-STORE of a job's result objects, one association per destination, every
answer recorded, retries while a destination is down, SR class fallback."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from servicekit import Orthanc, free_port
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.analyze import analyze_paths
from strokeflow.config import Destination, RetryPolicy
from strokeflow.dispatch import dispatch_due, dispatch_job, plan_dispatch
from strokeflow.dispatch.store_scu import StoreItem, is_permanent_failure, store_objects
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.report.structured_report import SR_SOP_CLASSES
from strokeflow.store.models import Dispatch, DispatchState, Job, JobState, Study, StudyState
from strokeflow.worker.reruns import resend

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(dispatch_max_attempts=3, dispatch_backoff_s=5.0)


@pytest.fixture(scope="module")
def result_files() -> Iterator[list[Path]]:
    """The DICOM result objects (SC pages, SEG, SR) of one small phantom analysis."""
    root = Path(tempfile.mkdtemp(prefix="strokeflow-dispatch-"))
    study = write_ctp_study(
        simulate_ctp(CtpPhantomOptions(matrix=48, slices=3, frames=20)),
        root / "study",
        extra_series=False,
    )
    outcome = analyze_paths([p for p in study if p.suffix == ".dcm"], root / "out")
    yield sorted((root / "out" / "dicom").rglob("*.dcm"))
    del outcome
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Pacs:
    """An in-process storage SCP that records what it got."""

    port: int
    received: list[Dataset] = field(default_factory=list)
    #: Transfer syntax of each received object.
    syntaxes: list[str] = field(default_factory=list)
    associations: int = 0
    status: int = 0x0000

    @property
    def destination(self) -> Destination:
        return Destination("PACS", "127.0.0.1", self.port)


@pytest.fixture
def make_pacs() -> Iterator[Callable[..., Pacs]]:
    servers: list[Any] = []

    def start(*, without: tuple[str, ...] = (), port: int | None = None, rle: bool = False) -> Pacs:
        pacs = Pacs(port or free_port())
        ae = AE(ae_title="PACS")
        extra = [RLELossless] if rle else []
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax not in without:
                ae.add_supported_context(
                    context.abstract_syntax,
                    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, *extra],
                )

        def on_store(event: Any) -> int:
            if pacs.status == 0:
                ds = event.dataset
                ds.file_meta = event.file_meta
                pacs.received.append(ds)
                pacs.syntaxes.append(str(event.context.transfer_syntax))
            return pacs.status

        def on_assoc(_event: Any) -> None:
            pacs.associations += 1

        handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, on_assoc)]
        servers.append(
            ae.start_server(("127.0.0.1", pacs.port), block=False, evt_handlers=handlers)
        )
        return pacs

    yield start
    for server in servers:
        server.shutdown()


def _succeeded_job(
    sessions: sessionmaker[Session], files: list[Path], data_dir: Path, dests: list[Destination]
) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in files:
        target = data_dir / "results" / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
        copied.append(target)
    with sessions() as session, session.begin():
        study = Study(study_uid="1.2.3", state=StudyState.QUEUED, version=1, instance_count=1)
        job = Job(study=study, version=1, state=JobState.SUCCEEDED, attempts=1, instance_count=1)
        session.add(job)
        session.flush()
        plan_dispatch(session, job, copied, dests, data_dir)
        return job.id


def _rows(sessions: sessionmaker[Session], job_id: int) -> list[Dispatch]:
    with sessions() as session:
        return list(session.scalars(select(Dispatch).where(Dispatch.job_id == job_id)))


def _state(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _send(
    sessions: sessionmaker[Session],
    job_id: int,
    dests: list[Destination],
    data_dir: Path,
    when: datetime,
) -> Any:
    return dispatch_job(
        sessions,
        job_id,
        destinations=dests,
        data_dir=data_dir,
        calling_ae_title="STROKEFLOW",
        policy=POLICY,
        clock=lambda: when,
    )


def test_every_object_reaches_every_destination_over_one_association_each(
    sessions: sessionmaker[Session],
    result_files: list[Path],
    make_pacs: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    first, second = make_pacs(), make_pacs()
    dests = [first.destination, Destination("VIEWER", "127.0.0.1", second.port)]
    job_id = _succeeded_job(sessions, result_files, tmp_path, dests)
    summary = _send(sessions, job_id, dests, tmp_path, T0)
    n = len(result_files)
    assert summary.sent == 2 * n and summary.failed == 0
    assert (first.associations, second.associations) == (1, 1)
    assert len(first.received) == len(second.received) == n
    assert all(r.state is DispatchState.SENT and r.status == 0 for r in _rows(sessions, job_id))
    job = _state(sessions, job_id)
    assert job.state is JobState.DISPATCHED and job.dispatched_at == T0
    # Sending again sends nothing: the rows are the record, not the queue message.
    assert _send(sessions, job_id, dests, tmp_path, T0) is None
    assert len(first.received) == n


def test_sr_falls_back_to_a_class_the_destination_accepts(
    sessions: sessionmaker[Session],
    result_files: list[Path],
    make_pacs: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = make_pacs(without=(SR_SOP_CLASSES["comprehensive3d"],))
    job_id = _succeeded_job(sessions, result_files, tmp_path, [pacs.destination])
    _send(sessions, job_id, [pacs.destination], tmp_path, T0)
    sr_rows = [r for r in _rows(sessions, job_id) if r.sop_class_uid in SR_SOP_CLASSES.values()]
    assert len(sr_rows) == 1
    row = sr_rows[0]
    assert row.state is DispatchState.SENT
    assert row.sop_class_uid == SR_SOP_CLASSES["comprehensive3d"]
    assert row.sent_sop_class_uid == SR_SOP_CLASSES["comprehensive"]
    reports = [ds for ds in pacs.received if ds.Modality == "SR"]
    assert [str(ds.SOPClassUID) for ds in reports] == [SR_SOP_CLASSES["comprehensive"]]
    assert str(reports[0].SOPInstanceUID) == row.sent_sop_instance_uid
    assert _state(sessions, job_id).state is JobState.DISPATCHED


def test_destination_without_any_sr_class_fails_that_object_only(
    sessions: sessionmaker[Session],
    result_files: list[Path],
    make_pacs: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = make_pacs(without=tuple(SR_SOP_CLASSES.values()))
    job_id = _succeeded_job(sessions, result_files, tmp_path, [pacs.destination])
    summary = _send(sessions, job_id, [pacs.destination], tmp_path, T0)
    assert summary.failed == 1 and summary.sent == len(result_files) - 1
    job = _state(sessions, job_id)
    assert job.state is JobState.SUCCEEDED
    assert job.error is not None and "1 of" in job.error


def test_down_destination_is_retried_with_backoff_until_it_answers(
    sessions: sessionmaker[Session],
    result_files: list[Path],
    make_pacs: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    port = free_port()
    dest = Destination("PACS", "127.0.0.1", port)
    job_id = _succeeded_job(sessions, result_files, tmp_path, [dest])
    kwargs: dict[str, Any] = {
        "destinations": [dest],
        "data_dir": tmp_path,
        "calling_ae_title": "STROKEFLOW",
        "policy": POLICY,
    }
    dispatch_due(sessions, clock=lambda: T0, **kwargs)
    rows = _rows(sessions, job_id)
    assert all(r.state is DispatchState.PENDING and r.attempts == 1 for r in rows)
    assert all(r.next_attempt_at == T0 + timedelta(seconds=5) for r in rows)
    assert all("could not be reached" in (r.error or "") for r in rows)
    # Not due yet: nothing is tried.
    assert dispatch_due(sessions, clock=lambda: T0 + timedelta(seconds=4), **kwargs) == []
    dispatch_due(sessions, clock=lambda: T0 + timedelta(seconds=5), **kwargs)
    assert all(r.attempts == 2 for r in _rows(sessions, job_id))
    assert all(r.next_attempt_at == T0 + timedelta(seconds=15) for r in _rows(sessions, job_id)), (
        "second delay doubles"
    )
    pacs = make_pacs(port=port)
    dispatch_due(sessions, clock=lambda: T0 + timedelta(seconds=15), **kwargs)
    assert len(pacs.received) == len(result_files)
    assert _state(sessions, job_id).state is JobState.DISPATCHED


def test_refused_objects_fail_after_max_attempts_and_resend_sends_them_again(
    sessions: sessionmaker[Session],
    result_files: list[Path],
    make_pacs: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = make_pacs()
    pacs.status = 0xA700  # out of resources
    job_id = _succeeded_job(sessions, result_files[:2], tmp_path, [pacs.destination])
    for k in range(POLICY.dispatch_max_attempts):
        _send(sessions, job_id, [pacs.destination], tmp_path, T0 + timedelta(hours=k))
    rows = _rows(sessions, job_id)
    assert all(r.state is DispatchState.FAILED and r.status == 0xA700 for r in rows)
    assert all(r.attempts == POLICY.dispatch_max_attempts for r in rows)
    assert "could not be delivered" in (_state(sessions, job_id).error or "")
    with sessions() as session, session.begin():
        message = resend(
            session,
            job_id,
            destinations=[pacs.destination],
            data_dir=tmp_path,
            undelivered_only=True,
        )
        assert message.startswith(f"job {job_id}: 2 objects will be sent again")
    pacs.status = 0x0000
    _send(sessions, job_id, [pacs.destination], tmp_path, T0 + timedelta(days=1))
    assert _state(sessions, job_id).state is JobState.DISPATCHED
    assert len(pacs.received) == 2


def test_an_object_the_pacs_cannot_understand_fails_at_once_without_retries(
    sessions: sessionmaker[Session],
    result_files: list[Path],
    make_pacs: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = make_pacs()
    pacs.status = 0xC000  # cannot understand: the same answer on every retry
    job_id = _succeeded_job(sessions, result_files[:1], tmp_path, [pacs.destination])
    _send(sessions, job_id, [pacs.destination], tmp_path, T0)
    rows = _rows(sessions, job_id)
    assert [(r.state, r.status, r.attempts) for r in rows] == [(DispatchState.FAILED, 0xC000, 1)]
    assert "permanent" in (rows[0].error or "")
    assert "could not be delivered" in (_state(sessions, job_id).error or "")


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (0xA700, False),
        (0xA7FF, False),
        (0x0110, False),
        (0x0213, False),
        (None, False),
        (0xA900, True),
        (0xA9FF, True),
        (0xC000, True),
        (0xCFFF, True),
        (0x0122, True),
        (0x0124, True),
    ],
)
def test_failure_statuses_are_split_into_transient_and_permanent(
    status: int | None, permanent: bool
) -> None:
    assert is_permanent_failure(status) is permanent


def _pages(files: list[Path]) -> list[Path]:
    return [p for p in files if str(dcmread(p, stop_before_pixels=True).SOPClassUID) == SC]


SC = SecondaryCaptureImageStorage


def _items(files: list[Path]) -> list[StoreItem]:
    items = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        items.append(StoreItem(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return items


def test_pages_reach_orthanc_rle_compressed_with_the_same_pixels(
    orthanc: Orthanc, result_files: list[Path]
) -> None:
    pages = _pages(result_files)
    assert pages and all(
        dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        for p in pages
    )
    dest = Destination.parse(orthanc.destination)
    outcomes = store_objects(_items(result_files), dest, "STROKEFLOW")
    assert all(o.stored for o in outcomes), [o.error for o in outcomes]
    stored = {}
    for orthanc_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        stored[tags["SOPInstanceUID"]] = orthanc_id
    assert len(stored) == len(result_files), (len(stored), len(result_files), outcomes)
    written = sent = 0
    for page in pages:
        original = dcmread(page)
        with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
            handle.write(orthanc.get(f"/instances/{stored[original.SOPInstanceUID]}/file"))
            handle.flush()
            received = dcmread(handle.name)
        assert received.file_meta.TransferSyntaxUID == RLELossless
        np.testing.assert_array_equal(received.pixel_array, original.pixel_array)
        written += page.stat().st_size
        sent += len(received.PixelData)
    assert sent < written / 2, (sent, written)


def test_pages_go_as_written_where_rle_is_not_accepted_or_compression_is_off(
    make_pacs: Callable[..., Pacs], result_files: list[Path]
) -> None:
    pages = _pages(result_files)
    plain = make_pacs()
    assert all(o.stored for o in store_objects(_items(pages), plain.destination, "SF"))
    assert set(plain.syntaxes) == {ExplicitVRLittleEndian}
    for page, received in zip(pages, plain.received, strict=True):
        np.testing.assert_array_equal(received.pixel_array, dcmread(page).pixel_array)
    willing = make_pacs(rle=True)
    off = store_objects(_items(pages), willing.destination, "SF", compress_pages=False)
    assert all(o.stored for o in off) and set(willing.syntaxes) == {ExplicitVRLittleEndian}
    on = store_objects(_items(pages), willing.destination, "SF")
    assert all(o.stored for o in on) and willing.syntaxes[len(pages) :] == [RLELossless] * len(
        pages
    )


def test_an_attempt_is_counted_before_its_objects_are_sent(
    sessions: sessionmaker[Session], result_files: list[Path], tmp_path: Path
) -> None:
    """A worker killed while a PACS holds its answer has used the attempt all the same."""
    import threading

    release = threading.Event()
    port = free_port()
    ae = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian])

    def slow_store(_event: Any) -> int:
        release.wait(30)
        return 0x0000

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, slow_store)]
    )
    dest = Destination("PACS", "127.0.0.1", port)
    job_id = _succeeded_job(sessions, result_files[:1], tmp_path / "data", [dest])
    sender = threading.Thread(
        target=_send, args=(sessions, job_id, [dest], tmp_path / "data", T0), daemon=True
    )
    try:
        sender.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _rows(sessions, job_id)[0].attempts == 0:
            time.sleep(0.05)
        # The object is on its way and unanswered: the attempt is already on record.
        (row,) = _rows(sessions, job_id)
        assert row.attempts == 1 and row.state is DispatchState.PENDING
    finally:
        release.set()
        sender.join(timeout=30)
        server.shutdown()
    (row,) = _rows(sessions, job_id)
    assert row.state is DispatchState.SENT and row.attempts == 1
