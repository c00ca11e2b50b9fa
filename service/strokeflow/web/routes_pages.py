"""Server-rendered dashboard pages: login, jobs, one job, system; and the action forms."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from strokeflow.store.models import Job, JobState
from strokeflow.web import actions
from strokeflow.web.accounts import is_admin, recent_actions, record_action
from strokeflow.web.auth import (
    SESSION_ID,
    SESSION_USER,
    check_csrf,
    csrf_token,
    session_user,
)
from strokeflow.web.context import LoginRequiredError, WebContext, enqueue_jobs, get_ctx
from strokeflow.web.curves import curves_svg
from strokeflow.web.images import ImageError, dicom_to_png
from strokeflow.web.logins import LoginThrottledError, attempt_login, revoke_session
from strokeflow.web.queries import (
    find_jobs,
    job_detail,
    job_summary,
    studies_in_reception,
    summary_pages,
)
from strokeflow.web.system import system_status

router = APIRouter(include_in_schema=False)
Ctx = Annotated[WebContext, Depends(get_ctx)]


def page_user(request: Request) -> str:
    """The logged-in user, else a redirect to the login form (coming back here after)."""
    user = session_user(request)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequiredError(quote(target, safe=""))
    return user


User = Annotated[str, Depends(page_user)]


def render_page(
    ctx: WebContext, request: Request, name: str, values: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """A dashboard page: the template with the user, CSRF token, flash and admin flag."""
    user = session_user(request)
    admin = False
    if user is not None:
        with ctx.sessions() as session:
            admin = is_admin(session, user)
    values = {
        "user": user,
        "admin": admin,
        "csrf": csrf_token(request),
        "flash": request.session.pop("flash", None),
        **values,
    }
    return ctx.templates.TemplateResponse(request, name, values, status_code=status_code)


def _safe_next(url: str | None) -> str:
    # Only paths of this site: an open redirect would help phishing.
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return "/"


@router.get("/login")
def login_form(request: Request, ctx: Ctx, next: str = "/") -> HTMLResponse:
    return render_page(ctx, request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login")
def login(
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    check_csrf(request, csrf)
    now = ctx.now()
    client = request.client.host if request.client else None
    try:
        user = attempt_login(
            ctx.sessions,
            username,
            password,
            now,
            client=client,
            session_max_age_s=ctx.settings.session_max_age_s,
        )
    except LoginThrottledError as exc:
        return render_page(
            ctx,
            request,
            "login.html",
            {"next": _safe_next(next), "error": f"{str(exc).capitalize()}."},
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        )
    if user is None:
        return render_page(
            ctx,
            request,
            "login.html",
            {"next": _safe_next(next), "error": "Unknown user or wrong password."},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    request.session.clear()  # a fresh session (and CSRF token) for the logged-in user
    request.session[SESSION_USER] = user.username
    request.session[SESSION_ID] = user.session_token
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request, ctx: Ctx, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf)
    token = request.session.get(SESSION_ID)
    if isinstance(token, str):
        with ctx.sessions() as session, session.begin():
            revoke_session(session, token, ctx.now())
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _parse_filters(params: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    filters: dict[str, Any] = {}
    problems = []
    state = params.get("state") or ""
    if state:
        try:
            filters["state"] = JobState(state)
        except ValueError:
            problems.append(f"unknown state {state!r}")
    for key in ("since", "until"):
        text = params.get(key) or ""
        if text:
            try:
                filters[key] = date.fromisoformat(text)
            except ValueError:
                problems.append(f"{key}: {text!r} is not a date (YYYY-MM-DD)")
    for key, limit in (("accession_number", 16), ("patient_id", 64)):
        text = (params.get(key) or "").strip()
        if text:
            filters[key] = text[:limit]
    return filters, problems


@router.get("/")
def jobs_page(request: Request, ctx: Ctx, user: User) -> HTMLResponse:
    params = dict(request.query_params)
    filters, problems = _parse_filters(params)
    with ctx.sessions() as session:
        rows = find_jobs(session, limit=100, **filters)
        jobs = [job_summary(job, study, ctx.settings.data_dir) for job, study in rows]
        receiving = [
            {
                "study_uid": s.study_uid,
                "state": s.state.value,
                "instances": s.instance_count,
                "patient_id": s.patient_id,
                "accession_number": s.accession_number,
                "last_instance_at": s.last_instance_at,
            }
            for s in studies_in_reception(session)
        ]
    return render_page(
        ctx,
        request,
        "jobs.html",
        {
            "jobs": jobs,
            "receiving": receiving,
            "params": params,
            "problems": problems,
            "states": [s.value for s in JobState],
        },
    )


@router.get("/jobs/{job_id}")
def job_page(job_id: int, request: Request, ctx: Ctx, user: User) -> HTMLResponse:
    with ctx.sessions() as session:
        job = session.get(Job, job_id) if 0 < job_id < 2**31 else None
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} does not exist")
        detail = job_detail(session, job, ctx.settings.data_dir)
        history = recent_actions(session, target=f"job:{job_id}", limit=20)
    curves = [
        (label, colour, curve)
        for label, colour, curve in (("AIF", "#c0392b", detail.aif), ("VOF", "#2471a3", detail.vof))
        if curve is not None
    ]
    return render_page(
        ctx,
        request,
        "job.html",
        {
            "job": detail,
            "curves_svg": Markup(curves_svg(curves)),  # built from numbers and escaped labels
            "history": history,
        },
    )


@router.get("/jobs/{job_id}/summary/{page}.png")
def summary_png(job_id: int, page: int, ctx: Ctx, user: User) -> Response:
    with ctx.sessions() as session:
        job = session.get(Job, job_id) if 0 < job_id < 2**31 else None
        pages = summary_pages(job, ctx.settings.data_dir) if job else []
    if not 1 <= page <= len(pages):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no summary page {page}")
    try:
        png = dicom_to_png(pages[page - 1])
    except ImageError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    # PHI: the page shows patient data; never cache it in shared caches.
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


def _form_action(
    request: Request,
    ctx: WebContext,
    user: str,
    csrf: str,
    action: str,
    target: str,
    run: Any,
    back: str,
) -> Response:
    check_csrf(request, csrf)
    now = ctx.now()
    client = request.client.host if request.client else None
    to_queue: list[int] = []
    try:
        with ctx.sessions() as session, session.begin():
            message, to_queue = run(session, now)
            record_action(session, user, action, now, target=target, detail=message, client=client)
    except actions.ActionError as exc:
        message = f"Not done: {exc}"
        with ctx.sessions() as session, session.begin():
            record_action(
                session, user, action, now, target=target, detail=f"refused: {exc}", client=client
            )
    enqueue_jobs(ctx, to_queue)
    request.session["flash"] = message
    return RedirectResponse(back, status_code=303)


@router.post("/jobs/{job_id}/reanalyse")
def reanalyse_form(
    job_id: int, request: Request, ctx: Ctx, user: User, csrf: Annotated[str, Form()] = ""
) -> Response:
    return _form_action(
        request,
        ctx,
        user,
        csrf,
        "reanalyse",
        f"job:{job_id}",
        lambda s, now: actions.reanalyse(s, job_id, now),
        f"/jobs/{job_id}",
    )


@router.post("/jobs/{job_id}/resend")
def resend_form(
    job_id: int, request: Request, ctx: Ctx, user: User, csrf: Annotated[str, Form()] = ""
) -> Response:
    return _form_action(
        request,
        ctx,
        user,
        csrf,
        "resend",
        f"job:{job_id}",
        lambda s, now: actions.resend(s, job_id, now, settings=ctx.settings),
        f"/jobs/{job_id}",
    )


@router.post("/studies/{study_uid}/complete")
def complete_form(
    study_uid: str, request: Request, ctx: Ctx, user: User, csrf: Annotated[str, Form()] = ""
) -> Response:
    return _form_action(
        request,
        ctx,
        user,
        csrf,
        "force_complete",
        f"study:{study_uid[:64]}",
        lambda s, now: actions.complete_study(s, study_uid, now),
        "/",
    )


@router.get("/system")
def system_page(request: Request, ctx: Ctx, user: User) -> HTMLResponse:
    with ctx.sessions() as session:
        report = system_status(
            session,
            ctx.settings,
            ctx.now(),
            queue_pending=ctx.queue_pending,
            health_extra=ctx.health_extra,
        )
        audit = recent_actions(session, limit=30)
    return render_page(ctx, request, "system.html", {"system": report, "audit": audit})
