"""Checks on every HTTP request: live sessions, no cross-site state changes, safe headers.

An ASGI middleware inside the session middleware, so it sees the decoded cookie:

- a cookie whose server-side session was revoked (logout, new password, user disabled or
  removed) or expired is emptied before any route sees it;
- a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` or ``Referer``
  names another site, or that the browser marks ``Sec-Fetch-Site: cross-site``, is refused
  with 403 whatever its authentication (cookie or HTTP Basic): a browser on another site
  must never act with a user's stored credentials;
- every answer carries a content security policy, ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff`` and a same-origin referrer policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from strokeflow.web.auth import SESSION_ID, SESSION_USER
from strokeflow.web.logins import session_is_live

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Our pages load only our own scripts, styles and images (and data: images).
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
#: The API documentation page starts Swagger UI with an inline script.
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")
DOCS_PATHS = ("/api/docs",)
_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def _netloc(url: str) -> str:
    return urlsplit(url).netloc.lower()


def cross_site(headers: dict[str, str], own_hosts: set[str]) -> str | None:
    """Why a state-changing request comes from another site, or ``None`` if it does not.

    Parameters
    ----------
    headers : dict
        Request headers, names in lower case.
    own_hosts : set of str
        ``host[:port]`` this service is reached at (the Host header, the public URL's).
    """
    if headers.get("sec-fetch-site") == "cross-site":
        return "the browser marks the request cross-site"
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value and value != "null":
            host = _netloc(value)
            if host not in own_hosts:
                return f"{name.capitalize()} {host or value!r} is not this site"
            return None
        if value == "null":
            return f"{name.capitalize()} is null (a sandboxed or cross-site document)"
    return None


class RequestGuard:
    """The checks above, as an ASGI middleware (add it before ``SessionMiddleware``)."""

    def __init__(
        self,
        app: ASGIApp,
        sessions: sessionmaker[Session],
        public_url: str,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.public_host = _netloc(public_url)
        self.now = now or (lambda: datetime.now(UTC))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] in UNSAFE_METHODS:
            own = {self.public_host, headers.get("host", "").lower()} - {""}
            why = cross_site(headers, own)
            if why is not None:
                await _forbidden(send, f"cross-site request refused: {why}")
                return
        cookie: dict[str, Any] | None = scope.get("session")
        if cookie and cookie.get(SESSION_USER):
            token, user = cookie.get(SESSION_ID), cookie[SESSION_USER]
            live = isinstance(token, str) and await anyio.to_thread.run_sync(
                self._live, token, str(user)
            )
            if not live:
                cookie.clear()
        csp = DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    *_HEADERS,
                    (b"content-security-policy", csp.encode()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _live(self, token: str, user: str) -> bool:
        with self.sessions() as session:
            return session_is_live(session, token, user, self.now())


async def _forbidden(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
