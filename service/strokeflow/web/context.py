"""The per-application context handed to request handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings

LOG = logging.getLogger(__name__)

#: Puts job ids on the task queue.
Enqueue = Callable[[list[int]], None]


@dataclass
class WebContext:
    """What every request handler needs; one per application (``app.state.ctx``)."""

    settings: Settings
    sessions: sessionmaker[Session]
    templates: Jinja2Templates
    registry: CollectorRegistry
    enqueue: Enqueue | None = None
    queue_pending: Callable[[], int] | None = None
    health_extra: Callable[[], dict[str, Any]] | None = None
    owned_engine: Engine | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def now(self) -> datetime:
        """Aware UTC now."""
        return datetime.now(UTC)


class LoginRequiredError(Exception):
    """A page was asked for without a session; the handler redirects to the login form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def get_ctx(request: Request) -> WebContext:
    """The application's context (a FastAPI dependency)."""
    ctx: WebContext = request.app.state.ctx
    return ctx


def enqueue_jobs(ctx: WebContext, job_ids: list[int]) -> None:
    """Put job ids on the task queue and note when; on failure the service's maintenance
    loop enqueues them later (the job rows are already ``queued``)."""
    if not job_ids or ctx.enqueue is None:
        return
    from strokeflow.worker.maintenance import mark_enqueued

    try:
        ctx.enqueue(job_ids)
        with ctx.sessions() as session, session.begin():
            mark_enqueued(session, job_ids, ctx.now())
    except Exception as exc:
        LOG.warning("jobs %s: not enqueued now (%s); maintenance will enqueue them", job_ids, exc)
