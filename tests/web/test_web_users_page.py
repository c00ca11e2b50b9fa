"""The Users page: administrators manage users; the change ends the user's sessions."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy import select
from webenv import PASSWORD, USER, Env, csrf_of, login

from strokeflow.store.web_models import AuditEntry, User
from strokeflow.web.accounts import add_user

ADMIN, ADMIN_PASSWORD = "root", "admin password 1"


def _admin(env: Env) -> None:
    with env.sessions() as session, session.begin():
        add_user(session, ADMIN, ADMIN_PASSWORD, datetime.now(UTC)).is_admin = True


def test_only_administrators_see_the_users_page(client: TestClient, env: Env) -> None:
    _admin(env)
    login(client)  # alice, no administrator
    assert client.get("/users").status_code == 403
    assert 'href="/users"' not in client.get("/").text
    client.cookies.clear()
    login(client, ADMIN, ADMIN_PASSWORD)
    page = client.get("/users")
    assert page.status_code == 200 and USER in page.text and "(admin)" in page.text
    assert 'href="/users"' in client.get("/").text


def test_an_administrator_disables_a_user_and_her_session_ends_at_once(
    client: TestClient, env: Env
) -> None:
    _admin(env)
    with TestClient(env.app) as alice:
        login(alice)
        assert alice.get("/api/jobs").status_code == 200
        login(client, ADMIN, ADMIN_PASSWORD)
        token = csrf_of(client.get("/users").text)
        assert client.post(f"/users/{USER}/disable", data={"csrf": "forged"}).status_code == 403
        assert alice.get("/api/jobs").status_code == 200
        page = client.post(f"/users/{USER}/disable", data={"csrf": token})
        assert page.status_code == 200 and f"{USER} disabled" in page.text
        assert alice.get("/api/jobs").status_code == 401
        client.post(f"/users/{USER}/enable", data={"csrf": token})
        client.post(f"/users/{USER}/password", data={"csrf": token, "password": "a new one!"})
        assert alice.get("/api/jobs", auth=(USER, PASSWORD)).status_code == 401
        assert alice.get("/api/jobs", auth=(USER, "a new one!")).status_code == 200
    own = client.post(f"/users/{ADMIN}/disable", data={"csrf": token})
    assert "cannot disable your own account" in own.text
    client.post(f"/users/{USER}/remove", data={"csrf": token})
    with env.sessions() as session:
        assert session.scalars(select(User.username)).all() == [ADMIN]
        audit = session.scalars(
            select(AuditEntry.action).where(
                AuditEntry.username == ADMIN, AuditEntry.target.like("user:%")
            )
        ).all()
    assert audit == ["user_disable", "user_enable", "user_passwd", "user_disable", "user_remove"]
