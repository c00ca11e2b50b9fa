"""The JSON API, /health and /metrics, and the pages' login and CSRF rules."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from webenv import ACCESSION, PASSWORD, PATIENT_ID, USER, Env, csrf_of, login

from strokeflow.store.models import Job, JobState, Study
from strokeflow.store.web_models import AuditEntry

BASIC = (USER, PASSWORD)


def _study_uid(env: Env) -> str:
    with env.sessions() as session:
        return session.scalars(select(Study.study_uid)).one()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/jobs"),
        ("get", "/api/jobs/1"),
        ("get", "/api/studies/1.2.3"),
        ("post", "/api/jobs/1/reanalyse"),
        ("post", "/api/jobs/1/resend"),
        ("post", "/api/studies/1.2.3/complete"),
    ],
)
def test_api_refuses_without_login(client: TestClient, method: str, path: str) -> None:
    answer = getattr(client, method)(path)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    wrong = getattr(client, method)(path, auth=(USER, "wrong password"))
    assert wrong.status_code == 401


@pytest.mark.parametrize("path", ["/", "/jobs/1", "/system", "/jobs/1/summary/1.png"])
def test_pages_redirect_to_login(client: TestClient, path: str) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login?next=")


def test_job_list_shows_the_analysed_job_with_filters(client: TestClient) -> None:
    jobs = client.get("/api/jobs", auth=BASIC).json()["jobs"]
    assert [j["id"] for j in jobs] == [1]
    job = jobs[0]
    assert job["state"] == "succeeded"
    assert job["patient_id"] == PATIENT_ID
    assert job["core_ml"] is not None and job["decisions"]
    assert [s["name"] for s in job["timeline"]][:4] == [
        "first_instance",
        "last_instance",
        "complete",
        "queued",
    ]
    assert job["timeline"][5]["at"] is not None  # finished
    assert job["quality_ok"] is not None
    for params, expected in [
        ({"state": "failed"}, 0),
        ({"state": "succeeded"}, 1),
        ({"accession_number": ACCESSION}, 1),
        ({"accession_number": "OTHER"}, 0),
        ({"patient_id": PATIENT_ID}, 1),
        ({"since": "2000-01-01", "until": "2000-01-02"}, 0),
        ({"since": "2000-01-01"}, 1),
    ]:
        assert client.get("/api/jobs", params=params, auth=BASIC).json()["count"] == expected
    assert client.get("/api/jobs", params={"state": "bogus"}, auth=BASIC).status_code == 422


def test_job_detail_has_curves_series_and_summary_image(client: TestClient) -> None:
    job = client.get("/api/jobs/1", auth=BASIC).json()
    assert job["aif"]["curve_hu"] and len(job["aif"]["times_s"]) == len(job["aif"]["curve_hu"])
    assert job["vof"] is not None
    used = {s["kind"] for s in job["series"] if s["used"]}
    ignored = {s["kind"]: s["reason"] for s in job["series"] if not s["used"]}
    assert used == {"ctp"}
    assert ignored.get("localizer")
    assert job["summary_images"] == ["/jobs/1/summary/1.png"]
    assert client.get("/api/jobs/999", auth=BASIC).status_code == 404
    login(client)
    png = client.get("/jobs/1/summary/1.png")
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.width > 200 and image.height > 200
    assert client.get("/jobs/1/summary/2.png").status_code == 404
    page = client.get("/jobs/1").text
    assert 'src="/jobs/1/summary/1.png"' in page and "<polyline" in page
    assert "ignored" in page and "ImageType LOCALIZER" in page


def test_study_detail_lists_series_and_jobs(client: TestClient, env: Env) -> None:
    uid = _study_uid(env)
    study = client.get(f"/api/studies/{uid}", auth=BASIC).json()
    assert study["state"] == "queued" and study["accession_number"] == ACCESSION
    assert [j["id"] for j in study["jobs"]] == [1]
    assert len(study["series"]) == 4
    assert client.get("/api/studies/1.2.3", auth=BASIC).status_code == 404
    assert client.get("/api/studies/not-a-uid", auth=BASIC).status_code == 422


def test_reanalyse_requeues_a_finished_job_and_is_audited(client: TestClient, env: Env) -> None:
    answer = client.post("/api/jobs/1/reanalyse", auth=BASIC)
    assert answer.status_code == 200, answer.text
    assert "attempt 2" in answer.json()["message"]
    assert env.enqueued == [1]
    with env.sessions() as session:
        job = session.get(Job, 1)
        assert job is not None and job.state is JobState.QUEUED and job.enqueued_at
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "reanalyse")).one()
        assert audit.username == USER and audit.target == "job:1"
    again = client.post("/api/jobs/1/reanalyse", auth=BASIC)
    assert again.status_code == 409 and "already queued" in again.json()["detail"]


def test_resend_without_destination_is_refused_with_a_reason(client: TestClient) -> None:
    answer = client.post("/api/jobs/1/resend", auth=BASIC)
    assert answer.status_code == 409
    assert "no destination" in answer.json()["detail"]


def test_force_complete_unknown_study_is_refused(client: TestClient) -> None:
    answer = client.post("/api/studies/1.2.3/complete", auth=BASIC)
    assert answer.status_code == 409 and "has not been received" in answer.json()["detail"]


def test_session_api_post_needs_csrf_header(client: TestClient) -> None:
    login(client)
    assert client.post("/api/jobs/1/reanalyse").status_code == 403
    token = csrf_of(client.get("/").text)
    answer = client.post("/api/jobs/1/reanalyse", headers={"X-CSRF-Token": token})
    assert answer.status_code == 200


def test_form_actions_need_csrf_and_flash_the_outcome(client: TestClient, env: Env) -> None:
    login(client)
    assert client.post("/jobs/1/reanalyse", data={"csrf": "forged"}).status_code == 403
    assert env.enqueued == []
    token = csrf_of(client.get("/jobs/1").text)
    page = client.post("/jobs/1/reanalyse", data={"csrf": token})
    assert page.status_code == 200 and "queued for attempt 2" in page.text
    assert env.enqueued == [1]


def test_login_rejects_wrong_password_and_records_it(client: TestClient, env: Env) -> None:
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"username": USER, "password": "nope-nope", "csrf": token})
    assert answer.status_code == 401 and "wrong password" in answer.text
    assert client.get("/", follow_redirects=False).status_code == 303
    with env.sessions() as session:
        actions = session.scalars(select(AuditEntry.action)).all()
    assert "login_failed" in actions


def test_login_does_not_redirect_off_site(client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    answer = client.post(
        "/login",
        data={"username": USER, "password": PASSWORD, "csrf": token, "next": "//evil.example"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"


def test_jobs_page_and_system_page_render(client: TestClient) -> None:
    login(client)
    jobs = client.get("/", params={"state": "succeeded"}).text
    assert PATIENT_ID in jobs and 'href="/jobs/1"' in jobs
    assert "not a date" in client.get("/", params={"since": "yesterday"}).text
    system = client.get("/system").text
    assert "DICOM listener" in system and "GB free" in system and "login" in system


def test_health_and_metrics_are_open_and_carry_no_patient_data(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["jobs"] == {"succeeded": 1}
    metrics = client.get("/metrics").text
    assert 'strokeflow_jobs{state="succeeded"} 1.0' in metrics
    assert "strokeflow_instances_received_total 145.0" in metrics
    assert 'strokeflow_job_stage_seconds_count{stage="analysis"} 1.0' in metrics
    assert PATIENT_ID not in metrics and ACCESSION not in metrics


def test_openapi_schema_lists_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/studies/{study_uid}", "/health"} <= set(paths)
