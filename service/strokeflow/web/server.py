"""Run the dashboard in a background thread of ``strokeflow serve``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.ports import bind_listening, http_listen_port
from strokeflow.web.app import create_app


class WebServer:
    """A uvicorn server on its own thread; ``shutdown()`` stops it."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    def shutdown(self) -> None:
        """Ask uvicorn to exit and wait (bounded) for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start_web_server(
    settings: Settings,
    sessions: sessionmaker[Session],
    enqueue: Callable[[list[int]], Any],
    queue_pending: Callable[[], int],
    health_extra: Callable[[], dict[str, Any]],
) -> WebServer:
    """Serve the dashboard, API, ``/health`` and ``/metrics`` on the configured HTTP port.

    Raises
    ------
    PortInUseError
        The port is taken or the address is not this host's (the message names the setting).
    RuntimeError
        If the server has not started within 15 s.
    """
    app = create_app(
        settings,
        sessions=sessions,
        enqueue=enqueue,
        queue_pending=queue_pending,
        health_extra=health_extra,
        migrate=False,
    )
    listen = http_listen_port(settings)
    try:
        # Bound here, not in uvicorn's thread: a taken port is then an error of this call,
        # raised before serve starts its workers, instead of a log line and a dead thread.
        sock = bind_listening(listen.host, listen.port)
    except OSError as exc:
        raise listen.refusal(exc) from exc
    config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="strokeflow-web", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the web dashboard did not start on {listen.host}:{listen.port}")
        time.sleep(0.05)
    return WebServer(server, thread)
