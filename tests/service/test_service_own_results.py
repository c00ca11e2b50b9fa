"""StrokeFlow's own result objects sent back to its listener are stored and reopen nothing.

A PACS routing the whole study back, or a user re-sending it, must not start job v2 (which
would send the results again, and again, through the same route).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from servicekit import storescu, wait_for
from sqlalchemy import func, select

from strokeflow.analyze import analyze_paths
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.models import Dispatch, DispatchState, Instance, Job, Study, StudyState
from strokeflow.store.studies import CompletionRules, sweep

RULES = CompletionRules(quiet_period_s=0.01, quiet_timeout_s=300.0)


@pytest.fixture(scope="module")
def analysed_study() -> Iterator[tuple[list[Path], list[Path]]]:
    """A small CT perfusion phantom study and the SC, SR and SEG objects analysing it wrote."""
    root = Path(tempfile.mkdtemp(prefix="strokeflow-own-"))
    study = write_ctp_study(
        simulate_ctp(CtpPhantomOptions(matrix=48, slices=3, frames=20)),
        root / "study",
        extra_series=False,
    )
    analyze_paths([p for p in study if p.suffix == ".dcm"], root / "out")
    results = sorted((root / "out" / "dicom").rglob("*.dcm"))
    yield [p for p in study if p.suffix == ".dcm"], results
    shutil.rmtree(root, ignore_errors=True)


def _sweep(listener) -> list[int]:  # type: ignore[no-untyped-def]
    """Complete what is due now and queue it; the new jobs' versions."""
    with listener.sessions() as session, session.begin():
        return [job.version for job in sweep(session, RULES, datetime.now(UTC))]


def _count(listener, model) -> int:  # type: ignore[no-untyped-def]
    with listener.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _study_state(listener) -> StudyState:  # type: ignore[no-untyped-def]
    with listener.sessions() as session:
        return session.scalars(select(Study)).one().state


def _send(listener, files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    # -R: propose exactly the files' classes (DCMTK's default list has no SEG).
    done = storescu(listener.port, files, options=["-R"])
    assert done.returncode == 0, done.stderr


def _rewritten(source: Path, folder: Path, manufacturer: str) -> Path:
    """A copy of a result object as a PACS that rewrote its manufacturer would send it."""
    ds = pydicom.dcmread(source)
    ds.Manufacturer = manufacturer
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(exist_ok=True)
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target


def test_own_results_sent_back_are_stored_and_reopen_nothing(
    make_listener, analysed_study: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    images, results = analysed_study
    classes = {str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in results}
    assert {"OT", "SR", "SEG"} <= classes, classes  # SC pages (OT), the report, the masks
    listener = make_listener()
    _send(listener, images)
    assert wait_for(lambda: _sweep(listener), 15, "job version 1") == [1]

    _send(listener, results)
    time.sleep(0.5)  # the association's end is handled after storescu has exited
    assert _sweep(listener) == []
    assert _count(listener, Job) == 1 and _study_state(listener) is StudyState.QUEUED
    with listener.sessions() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    for path in results:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.SOPInstanceUID) in stored
        where = (
            listener.data_dir
            / "studies"
            / ds.StudyInstanceUID
            / ds.SeriesInstanceUID
            / f"{ds.SOPInstanceUID}.dcm"
        )
        assert where.exists()

    # A PACS rewrote the manufacturer: the UID we recorded at dispatch still says "ours".
    page = next(p for p in results if pydicom.dcmread(p).Modality == "OT")
    routed = _rewritten(page, tmp_path / "routed", "PACS VENDOR")
    with listener.sessions() as session, session.begin():
        job = session.scalars(select(Job)).one()
        session.add(
            Dispatch(
                job_id=job.id,
                destination="PACS@127.0.0.1:104",
                sop_instance_uid=pydicom.dcmread(routed).SOPInstanceUID,
                sop_class_uid=pydicom.dcmread(routed).SOPClassUID,
                path="results/page.dcm",
                state=DispatchState.SENT,
                attempts=1,
            )
        )
    _send(listener, [routed])
    time.sleep(0.5)
    assert _sweep(listener) == [] and _count(listener, Job) == 1

    # Someone else's secondary capture of this study is new data: it does reopen it.
    foreign = _rewritten(page, tmp_path / "foreign", "OTHER VENDOR")
    _send(listener, [foreign])
    assert _study_state(listener) is StudyState.RECEIVING
