"""A minimal HTTP health endpoint: ``GET /health`` → JSON (200 healthy, 503 not)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.store.models import Job

LOG = logging.getLogger(__name__)


def health_report(
    sessions: sessionmaker[Session], extra: Callable[[], dict[str, Any]] | None = None
) -> tuple[bool, dict[str, Any]]:
    """Whether the database answers, job counts per state, plus ``extra()`` fields.

    Returns
    -------
    (bool, dict)
        Healthy or not, and the JSON body.
    """
    body: dict[str, Any] = {}
    healthy = True
    try:
        with sessions() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        body["database"] = "ok"
        body["jobs"] = {state.value: int(count) for state, count in rows}
    except Exception as exc:
        healthy = False
        body["database"] = f"error: {exc.__class__.__name__}: {exc}"
    if extra is not None:
        try:
            more = extra()
        except Exception as exc:
            more = {"error": str(exc)}
        healthy = healthy and bool(more.pop("healthy", True))
        body.update(more)
    body["status"] = "ok" if healthy else "degraded"
    return healthy, body


def start_health_server(
    host: str,
    port: int,
    sessions: sessionmaker[Session],
    extra: Callable[[], dict[str, Any]] | None = None,
) -> ThreadingHTTPServer:
    """Serve ``/health`` on ``host:port`` in a daemon thread (``port`` 0: any free port).

    Returns
    -------
    ThreadingHTTPServer
        Call ``shutdown()`` to stop; ``server_address`` has the bound port.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/health":
                self.send_error(404, "only /health is served here")
                return
            healthy, body = health_report(sessions, extra)
            data = json.dumps(body).encode()
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            LOG.debug("health: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="strokeflow-health", daemon=True).start()
    LOG.info("health endpoint on http://%s:%d/health", host, server.server_address[1])
    return server
