"""Attacks on the dashboard and API, reproduced: password guessing, a replayed cookie after
logout, a cross-site request with stored Basic credentials, framing and sniffing."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from webenv import PASSWORD, USER, Env, csrf_of, login

from strokeflow.store.web_models import AuditEntry
from strokeflow.web.accounts import set_disabled, set_password
from strokeflow.web.logins import FREE_FAILURES


def _audited(env: Env, action: str) -> int:
    with env.sessions() as session:
        query = select(func.count()).where(AuditEntry.action == action)
        return int(session.scalar(query) or 0)


def test_password_guessing_over_basic_is_throttled_and_audited(
    client: TestClient, env: Env
) -> None:
    answers = [client.get("/api/jobs", auth=(USER, f"guess-{k}")) for k in range(30)]
    codes = [a.status_code for a in answers]
    assert codes[:FREE_FAILURES] == [401] * FREE_FAILURES
    assert set(codes[FREE_FAILURES:]) == {429}  # no more password checks: no more guesses
    assert int(answers[-1].headers["retry-after"]) >= 1
    # Even the right password waits out the back-off: a guesser cannot tell it is right.
    assert client.get("/api/jobs", auth=(USER, PASSWORD)).status_code == 429
    assert _audited(env, "login_failed") == FREE_FAILURES
    assert _audited(env, "login_throttled") == 30 - FREE_FAILURES + 1


def test_password_guessing_on_the_form_is_throttled_per_address(
    client: TestClient, env: Env
) -> None:
    token = csrf_of(client.get("/login").text)
    codes = []
    for k in range(FREE_FAILURES + 3):  # another user name each time: the address counts
        answer = client.post(
            "/login", data={"username": f"user{k}", "password": "wrong-one", "csrf": token}
        )
        codes.append(answer.status_code)
    assert codes[:FREE_FAILURES] == [401] * FREE_FAILURES
    assert set(codes[FREE_FAILURES:]) == {429}
    assert "too many failed logins" in answer.text.lower()


def test_a_cookie_replayed_after_logout_is_refused(client: TestClient) -> None:
    login(client)
    assert client.get("/api/jobs").status_code == 200
    stolen = dict(client.cookies)
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    client.cookies.clear()
    for name, value in stolen.items():
        client.cookies.set(name, value)
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/", follow_redirects=False).status_code == 303  # to the login form


def test_disabling_a_user_or_a_new_password_ends_its_sessions(client: TestClient, env: Env) -> None:
    login(client)
    assert client.get("/api/jobs").status_code == 200
    with env.sessions() as session, session.begin():
        set_disabled(session, USER, True, datetime.now(UTC))
    assert client.get("/api/jobs").status_code == 401
    with env.sessions() as session, session.begin():
        set_disabled(session, USER, False, datetime.now(UTC))
    login(client)
    assert client.get("/api/jobs").status_code == 200
    with env.sessions() as session, session.begin():
        set_password(session, USER, "another-password", datetime.now(UTC))
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs", auth=(USER, "another-password")).status_code == 200


def test_a_cross_site_post_with_basic_credentials_is_refused(client: TestClient, env: Env) -> None:
    evil = {"Origin": "https://evil.example"}
    answer = client.post("/api/jobs/1/reanalyse", auth=(USER, PASSWORD), headers=evil)
    assert answer.status_code == 403 and "cross-site" in answer.json()["detail"]
    referer = {"Referer": "https://evil.example/page"}
    assert (
        client.post("/api/jobs/1/reanalyse", auth=(USER, PASSWORD), headers=referer).status_code
        == 403
    )
    fetch = {"Sec-Fetch-Site": "cross-site"}
    assert (
        client.post("/api/jobs/1/reanalyse", auth=(USER, PASSWORD), headers=fetch).status_code
        == 403
    )
    assert env.enqueued == [] and _audited(env, "reanalyse") == 0
    # The site itself (its Host or its public URL) may post.
    own = {"Origin": "https://stroke.example.org"}
    assert (
        client.post("/api/jobs/1/reanalyse", auth=(USER, PASSWORD), headers=own).status_code == 200
    )
    assert env.enqueued == [1]


def test_every_answer_forbids_framing_and_sniffing(client: TestClient) -> None:
    for path in ("/login", "/health", "/api/jobs", "/static/app.js"):
        headers = client.get(path).headers
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]
