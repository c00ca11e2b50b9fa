"""Who is asking: the signed session cookie (pages) or HTTP Basic (API), and CSRF tokens."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from fastapi import HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.web.logins import LoginThrottledError, attempt_login

#: File in the data directory holding the generated session key (mode 0600).
SECRET_FILE = "web-session.key"
SESSION_USER = "user"
#: The server-side session's token (see :mod:`strokeflow.web.logins`).
SESSION_ID = "sid"
SESSION_CSRF = "csrf"


def session_secret(data_dir: Path, configured: str | None = None) -> str:
    """The key that signs session cookies: ``configured``, else one generated once and kept
    in ``<data_dir>/web-session.key`` (readable by the owner only) so logins survive a restart.
    """
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: when two processes start together, one writes and the other reads it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    token = request.session.get(SESSION_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[SESSION_CSRF] = token
    return token


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse a form whose token does not match the session's.

    Raises
    ------
    HTTPException
        403.
    """
    expected = request.session.get(SESSION_CSRF)
    if (
        not isinstance(expected, str)
        or not submitted
        or not hmac.compare_digest(expected, submitted)
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form expired or came from elsewhere; reload the page"
        )


def session_user(request: Request) -> str | None:
    """The user logged in on this session, if any."""
    user = request.session.get(SESSION_USER)
    return user if isinstance(user, str) else None


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` header, if well formed."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def api_user(request: Request, sessions: sessionmaker[Session]) -> str:
    """The user of an API request: the session, else HTTP Basic.

    Raises
    ------
    HTTPException
        401 with ``WWW-Authenticate: Basic``; 429 with ``Retry-After`` when the user or
        the address failed too often lately (see :mod:`strokeflow.web.logins`).
    """
    user = session_user(request)
    if user:
        return user
    credentials = basic_credentials(request)
    if credentials is not None:
        client = request.client.host if request.client else None
        try:
            found = attempt_login(sessions, *credentials, datetime.now(UTC), client=client)
        except LoginThrottledError as exc:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                str(exc),
                headers={"Retry-After": str(max(1, round(exc.retry_after_s)))},
            ) from exc
        if found is not None:
            return found.username
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "log in, or send HTTP Basic credentials of a StrokeFlow user",
        headers={"WWW-Authenticate": 'Basic realm="StrokeFlow"'},
    )
