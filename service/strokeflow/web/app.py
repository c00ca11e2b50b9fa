"""The FastAPI application: dashboard pages, JSON API, ``/health`` and ``/metrics``.

Build it with :func:`create_app`; ``strokeflow serve`` mounts it on the HTTP port.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware
from swagger_ui_bundle import swagger_ui_path

from strokeflow.config import Settings
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.web.auth import session_secret
from strokeflow.web.context import Enqueue, LoginRequiredError, WebContext
from strokeflow.web.guard import RequestGuard
from strokeflow.web.metrics import make_registry
from strokeflow.web.notify import Notifier
from strokeflow.worker.health import health_report

LOG = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


def _default_queue(settings: Settings) -> tuple[Enqueue, Callable[[], int]]:
    from strokeflow.queue.jobqueue import open_queue

    queue = open_queue(settings.effective_queue_url)
    return queue.enqueue, queue.pending


def create_app(
    settings: Settings,
    *,
    sessions: sessionmaker[Session] | None = None,
    enqueue: Enqueue | None = None,
    queue_pending: Callable[[], int] | None = None,
    health_extra: Callable[[], dict[str, Any]] | None = None,
    migrate: bool = True,
) -> FastAPI:
    """Build the dashboard and API application.

    Parameters
    ----------
    settings : Settings
        Data directory, database, destinations, DICOM port (for the listener check),
        webhook, public URL and cookie settings.
    sessions : sessionmaker, optional
        Database sessions; default a new engine on ``settings.effective_database_url``.
    enqueue, queue_pending : callable, optional
        Put job ids on the task queue / count waiting messages; default the queue at
        ``settings.effective_queue_url``.
    health_extra : callable, optional
        More ``/health`` fields from the hosting process (``serve``: workers alive);
        a ``"healthy": False`` field makes ``/health`` answer 503.
    migrate : bool
        Bring the database to the newest schema first.

    Returns
    -------
    FastAPI
    """
    engine = None
    if sessions is None:
        engine = make_engine(settings.effective_database_url)
        sessions = make_session_factory(engine)
    if migrate:
        upgrade_to_head(sessions.kw["bind"] if engine is None else engine)
    if enqueue is None and queue_pending is None:
        enqueue, queue_pending = _default_queue(settings)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    ctx = WebContext(
        settings=settings,
        sessions=sessions,
        templates=templates,
        registry=make_registry(sessions, queue_pending),
        enqueue=enqueue,
        queue_pending=queue_pending,
        health_extra=health_extra,
        owned_engine=engine,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        thread = None
        if settings.webhook_url:
            notifier = Notifier(sessions, settings)
            thread = threading.Thread(
                target=notifier.run, args=(ctx.stop,), name="strokeflow-webhook", daemon=True
            )
            thread.start()
        try:
            yield
        finally:
            ctx.stop.set()
            if thread is not None:
                thread.join(timeout=10)
            if ctx.owned_engine is not None:
                ctx.owned_engine.dispose()

    app = FastAPI(
        title="StrokeFlow",
        summary="Acute-stroke perfusion analysis service: jobs, studies and results",
        version=_version(),
        lifespan=lifespan,
        # Served below from the package's own Swagger UI copy: no CDN, works offline.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    # Added first, so it runs inside the session middleware and sees the decoded cookie.
    app.add_middleware(RequestGuard, sessions=sessions, public_url=settings.public_url)
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings.data_dir, settings.session_secret or None),
        session_cookie="strokeflow_session",
        max_age=settings.session_max_age_s,
        same_site="strict",
        https_only=settings.secure_cookies,
    )
    app.mount("/static/swagger-ui", StaticFiles(directory=str(swagger_ui_path)), name="swagger")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> Response:
        # Hospital networks are often closed: every asset comes from this server.
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="StrokeFlow API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )

    @app.exception_handler(LoginRequiredError)
    async def _to_login(request: Request, exc: LoginRequiredError) -> Response:
        return RedirectResponse(f"/login?next={exc.next_url}", status_code=303)

    @app.get("/health", tags=["service"], summary="Service health (no login needed)")
    def health() -> JSONResponse:
        healthy, body = health_report(sessions, health_extra)
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["service"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    from strokeflow.web.routes_api import router as api_router
    from strokeflow.web.routes_pages import router as page_router
    from strokeflow.web.routes_users import router as users_router

    app.include_router(api_router)
    app.include_router(page_router)
    app.include_router(users_router)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path in ("/health",):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail, "user": None},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    return app


def _version() -> str:
    from strokeflow import __version__

    return str(__version__)
