"""Job versions keep their own data: a changed resend of a study creates a new version on
new files, and re-analysing the older version analyses that version's files again."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from servicekit import pynetdicom_store
from sqlalchemy import select

from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.models import Job, JobInput, JobState, Study
from strokeflow.store.studies import force_complete, queue_complete
from strokeflow.web.actions import reanalyse
from strokeflow.worker.jobs import JobRunner


def _study(folder: Path, lesion: str, patient_id: str) -> list[Path]:
    """A small phantom perfusion; the same seed gives the same UIDs for any lesion."""
    options = CtpPhantomOptions(matrix=48, slices=3, frames=20, lesion=lesion)
    files = [p for p in write_ctp_study(simulate_ctp(options), folder, extra_series=False)]
    files = sorted(p for p in files if p.suffix == ".dcm")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.save_as(path)
    return files


def _analysed_version(listener, files: list[Path]) -> int:  # type: ignore[no-untyped-def]
    assert set(pynetdicom_store(listener.port, files)) == {0}
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    now = datetime.now(UTC)
    with listener.sessions() as session, session.begin():
        force_complete(session, uid, now)
        (job,) = queue_complete(session, now)
        job_id = int(job.id)
    assert JobRunner(listener.settings, listener.sessions).run(job_id) is JobState.SUCCEEDED
    return job_id


def _core_ml(listener, job_id: int) -> float:  # type: ignore[no-untyped-def]
    with listener.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.results_path is not None
        results = json.loads((listener.data_dir / job.results_path / "results.json").read_text())
        assert job.core_ml == results["studies"][0]["analyses"][0]["core_ml"]
        return float(job.core_ml)


def test_a_changed_resend_then_a_reanalyse_of_the_old_version_keeps_both_versions_numbers(
    listener, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    first = _study(tmp_path / "v1", "none", "WRONG-ID")
    v1 = _analysed_version(listener, first)
    core_v1 = _core_ml(listener, v1)
    # The same instances again, new pixels (a lesion) and a corrected PatientID.
    v2 = _analysed_version(listener, _study(tmp_path / "v2", "large", "RIGHT-ID"))
    core_v2 = _core_ml(listener, v2)
    assert core_v2 > core_v1 + 10

    with listener.sessions() as session, session.begin():
        _, to_queue = reanalyse(session, v1, datetime.now(UTC))
    assert to_queue == [v1]
    assert JobRunner(listener.settings, listener.sessions).run(v1) is JobState.SUCCEEDED

    assert _core_ml(listener, v1) == core_v1  # v1 analysed on v1's files again
    assert _core_ml(listener, v2) == core_v2  # and v2 untouched
    with listener.sessions() as session:
        inputs = {
            job_id: {
                p
                for (p,) in session.execute(select(JobInput.path).where(JobInput.job_id == job_id))
            }
            for job_id in (v1, v2)
        }
        study = session.scalars(select(Study)).one()
        assert study.patient_id == "RIGHT-ID"  # the study follows its newest version
    assert len(inputs[v1]) == len(inputs[v2]) == len(first) and not inputs[v1] & inputs[v2]
    for paths in inputs.values():
        assert all((listener.data_dir / p).exists() for p in paths)
    first_file = listener.data_dir / sorted(inputs[v1])[0]
    assert pydicom.dcmread(first_file, stop_before_pixels=True).PatientID == "WRONG-ID"
