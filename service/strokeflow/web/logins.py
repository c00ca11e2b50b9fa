"""Logging in: throttled password checks and server-side sessions.

Failed logins are counted from the audit log (``login_failed`` rows), per user name and
per client address, so every web process of a deployment sees the same counts. After
:data:`FREE_FAILURES` failures in :data:`WINDOW_S` the next attempt must wait, twice as
long after each further failure (up to :data:`MAX_DELAY_S`); a throttled attempt is
refused without checking the password, and audited as ``login_throttled``.

A session is a random token in the signed cookie whose SHA-256 has a ``web_sessions``
row: logout, a new password, disabling or removing the user revoke the rows, and a
replayed cookie is then refused.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.store.web_models import AuditEntry, User, WebSession
from strokeflow.web.accounts import authenticate, record_action, revoke_user_sessions

__all__ = [
    "LoginResult",
    "LoginThrottledError",
    "attempt_login",
    "open_session",
    "revoke_session",
    "revoke_user_sessions",
    "session_is_live",
    "throttle_delay_s",
]

#: Failures allowed in the window before attempts are slowed down.
FREE_FAILURES = 5
#: Failures older than this are forgotten.
WINDOW_S = 900.0
#: The longest wait between two attempts.
MAX_DELAY_S = 900.0


class LoginThrottledError(Exception):
    """Too many failed logins for this user or address; ``retry_after_s`` says how long."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


def throttle_delay_s(failures: int) -> float:
    """Wait required after ``failures`` failed attempts in the window (0 while few)."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(2.0 ** (failures - FREE_FAILURES), MAX_DELAY_S)


@dataclass(frozen=True)
class LoginResult:
    """A successful login: the user, and the new session's token for a form login."""

    username: str
    session_token: str | None = None


def attempt_login(
    sessions: sessionmaker[Session],
    username: str,
    password: str,
    now: datetime,
    *,
    client: str | None,
    session_max_age_s: float | None = None,
) -> LoginResult | None:
    """Check a password, throttled and audited, in a transaction of its own.

    Parameters
    ----------
    session_max_age_s : float, optional
        A form login: audit it as ``login`` and open a server-side session this long.
        ``None``: HTTP Basic, checked on every API call (only failures are audited).

    Returns
    -------
    LoginResult or None
        ``None`` for an unknown user, a disabled one or a wrong password.

    Raises
    ------
    LoginThrottledError
        The user or the address failed too often lately; the password was not checked
        (the refusal is audited as ``login_throttled``).
    """
    wait_s = 0.0
    with sessions() as session, session.begin():
        wait_s = _wait_s(session, username, client, now)
        if wait_s > 0:
            record_action(session, username, "login_throttled", now, client=client)
        else:
            user = authenticate(session, username, password)
            if user is None:
                record_action(session, username, "login_failed", now, client=client)
                return None
            if session_max_age_s is None:
                return LoginResult(user.username)
            user.last_login_at = now
            record_action(session, user.username, "login", now, client=client)
            return LoginResult(
                user.username, open_session(session, user.username, now, session_max_age_s)
            )
    raise LoginThrottledError(wait_s)


def _wait_s(session: Session, username: str, client: str | None, now: datetime) -> float:
    since = now - timedelta(seconds=WINDOW_S)
    wait_s = 0.0
    keys: list[tuple[Any, str]] = [(AuditEntry.username, username[:64])]
    if client:
        keys.append((AuditEntry.client, client[:64]))
    for column, value in keys:
        count, last = session.execute(
            select(func.count(), func.max(AuditEntry.at)).where(
                AuditEntry.action == "login_failed", AuditEntry.at >= since, column == value
            )
        ).one()
        if last is not None:
            remaining = (last - now).total_seconds() + throttle_delay_s(int(count))
            wait_s = max(wait_s, remaining)
    return wait_s


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, username: str, now: datetime, max_age_s: float) -> str:
    """A new session for ``username``; returns the token to keep in the cookie."""
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            token_sha256=_digest(token),
            username=username,
            created_at=now,
            expires_at=now + timedelta(seconds=max_age_s),
        )
    )
    return token


def session_is_live(session: Session, token: str, username: str, now: datetime) -> bool:
    """Whether the cookie's session still stands: not revoked, not expired, user enabled."""
    row = session.get(WebSession, _digest(token))
    if row is None or row.username != username or row.revoked_at is not None:
        return False
    if row.expires_at <= now:
        return False
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    return user is not None and not user.disabled


def revoke_session(session: Session, token: str, now: datetime) -> None:
    """End one session (logout)."""
    session.execute(
        update(WebSession)
        .where(WebSession.token_sha256 == _digest(token), WebSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
