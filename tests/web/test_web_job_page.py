"""The job page says what it measured: the MR core is an ADC core, a site's own Tmax
thresholds are labelled by their value, and after a Re-analyse the timeline and the header
are about the attempt the job is on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from webenv import (
    PASSWORD,
    USER,
    Env,
    csrf_of,
    login,
    make_settings,
    queue_study,
    receive_files,
)

from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.phantom.mri import MriPhantomOptions, simulate_mri
from strokeflow.phantom.mri_dicom import write_mri_study
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.web.accounts import add_user
from strokeflow.web.app import create_app
from strokeflow.worker.jobs import JobRunner

BASIC_AUTH = (USER, PASSWORD)


def _core_label(html: str) -> str:
    found = re.search(r'<th id="core-label">([^<]*)</th>', html)
    assert found, "no core row on the job page"
    return found.group(1)


def test_ct_job_page_labels_the_core_rcbf(client: TestClient) -> None:
    assert client.get("/api/jobs/1", auth=BASIC_AUTH).json()["core_measure"] == "rCBF"
    login(client)
    assert _core_label(client.get("/jobs/1").text) == "Core (rCBF)"


@pytest.fixture
def mr_client(tmp_path: Path) -> Iterator[TestClient]:
    """A dashboard on one small MR stroke phantom (DWI + ADC, no perfusion) analysed."""
    files = write_mri_study(
        simulate_mri(
            MriPhantomOptions(dwi_matrix=48, slices=6, perfusion=False, lesion="large", seed=2)
        ),
        tmp_path / "sent",
        distractors=False,
    )
    settings = make_settings(tmp_path / "data")
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    job_id = queue_study(sessions, receive_files(sessions, settings.data_dir, files))
    JobRunner(settings, sessions).run(job_id)
    with sessions() as session, session.begin():
        add_user(session, USER, PASSWORD, datetime.now(UTC))
    app = create_app(settings, sessions=sessions, enqueue=lambda _ids: None, queue_pending=int)
    with TestClient(app) as client:
        yield client
    engine.dispose()


def test_mr_job_page_labels_the_core_adc(mr_client: TestClient) -> None:
    job = mr_client.get("/api/jobs/1", auth=BASIC_AUTH).json()
    assert job["analysis_kind"] == "mri" and job["state"] == "succeeded", job["error"]
    assert job["core_measure"] == "ADC"
    login(mr_client)
    page = mr_client.get("/jobs/1").text
    assert _core_label(page) == "Core (ADC)" and "rCBF" not in page


def test_after_a_reanalyse_the_timeline_and_header_are_the_new_attempt(
    client: TestClient, env: Env
) -> None:
    login(client)
    assert 'id="job-attempt">attempt 1<' in client.get("/jobs/1").text
    token = csrf_of(client.get("/jobs/1").text)
    assert client.post("/jobs/1/reanalyse", data={"csrf": token}).status_code == 200
    page = client.get("/jobs/1").text
    assert 'id="job-attempt">attempt 2<' in page
    steps = [float(s) for s in re.findall(r"<small>\+(-?[0-9.]+) s</small>", page)]
    assert steps and all(s >= 0 for s in steps), steps
    job = client.get("/api/jobs/1", auth=BASIC_AUTH).json()
    assert job["current_attempt"] == 2 and job["attempts"] == 1
    started = {s["name"]: s["at"] for s in job["timeline"]}
    # The previous attempt's start and finish are not this attempt's.
    assert started["queued"] is not None and started["started"] is None
    assert started["finished"] is None
    assert all(s["since_previous_s"] is None or s["since_previous_s"] >= 0 for s in job["timeline"])


def test_job_page_shows_a_sites_extra_tmax_volumes_by_their_threshold(tmp_path: Path) -> None:
    files = write_ctp_study(
        simulate_ctp(CtpPhantomOptions(matrix=64, slices=4, frames=30, seed=1)), tmp_path / "sent"
    )
    settings = make_settings(tmp_path / "data", analysis={"ctp": {"tmax_thresholds_s": [4.0, 8.0]}})
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    job_id = queue_study(sessions, receive_files(sessions, settings.data_dir, files))
    JobRunner(settings, sessions).run(job_id)
    with sessions() as session, session.begin():
        add_user(session, USER, PASSWORD, datetime.now(UTC))
    app = create_app(settings, sessions=sessions, enqueue=lambda _ids: None, queue_pending=int)
    with TestClient(app) as client:
        job = client.get("/api/jobs/1", auth=BASIC_AUTH).json()
        assert job["state"] == "succeeded", job["error"]
        assert list(job["site_tmax_volumes_ml"]) == ["4", "8"]
        login(client)
        page = client.get("/jobs/1").text
    engine.dispose()
    # The published volumes keep their rows; the site's own follow, labelled by value.
    assert f"<th>Tmax &gt; 6 s</th><td>{job['tmax6_ml']:.1f} mL</td>" in page
    for threshold in ("4", "8"):
        volume = job["site_tmax_volumes_ml"][threshold]
        assert f"<th>Tmax &gt; {threshold} s</th><td>{volume:.1f} mL</td>" in page
