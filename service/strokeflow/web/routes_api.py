"""The JSON API under ``/api`` (session cookie or HTTP Basic)."""

from __future__ import annotations

import hmac
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from strokeflow.store.models import Job, JobState
from strokeflow.store.repository import get_study
from strokeflow.web import actions
from strokeflow.web.accounts import record_action
from strokeflow.web.auth import SESSION_CSRF, api_user, session_user
from strokeflow.web.context import WebContext, enqueue_jobs, get_ctx
from strokeflow.web.queries import find_jobs, job_detail, job_summary, study_detail
from strokeflow.web.schemas import ActionResult, JobDetail, JobList, StudyDetail

_basic = HTTPBasic(auto_error=False, realm="StrokeFlow")

#: DICOM UIDs: digits and dots, at most 64 characters.
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Job id")]
StudyUid = Annotated[
    str, Path(min_length=1, max_length=64, pattern=UID_PATTERN, description="Study Instance UID")
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not logged in and no valid HTTP Basic credentials"},
}


def require_user(
    request: Request,
    ctx: Annotated[WebContext, Depends(get_ctx)],
    _credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)] = None,
) -> str:
    """The user making the request (session or HTTP Basic), else 401."""
    return api_user(request, ctx.sessions)


User = Annotated[str, Depends(require_user)]
Ctx = Annotated[WebContext, Depends(get_ctx)]
router = APIRouter(prefix="/api", tags=["api"], responses=_ERRORS)


@router.get("/jobs", summary="Jobs, newest first, filtered")
def list_jobs(
    ctx: Ctx,
    _user: User,
    state: Annotated[JobState | None, Query(description="Only jobs in this state")] = None,
    since: Annotated[date | None, Query(description="Queued on or after this UTC day")] = None,
    until: Annotated[date | None, Query(description="Queued on or before this UTC day")] = None,
    accession_number: Annotated[str | None, Query(max_length=16)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobList:
    with ctx.sessions() as session:
        rows = find_jobs(
            session,
            state=state,
            since=since,
            until=until,
            accession_number=accession_number,
            patient_id=patient_id,
            limit=limit,
            offset=offset,
        )
        jobs = [job_summary(job, study, ctx.settings.data_dir) for job, study in rows]
    return JobList(jobs=jobs, count=len(jobs))


@router.get(
    "/jobs/{job_id}",
    summary="One job: timeline, results, series, dispatch",
    responses={404: {"description": "No such job"}},
)
def get_job(job_id: JobId, ctx: Ctx, _user: User) -> JobDetail:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} does not exist")
        return job_detail(session, job, ctx.settings.data_dir)


@router.get(
    "/studies/{study_uid}",
    summary="One study: reception state, series and every job version",
    responses={404: {"description": "No such study"}},
)
def get_study_detail(study_uid: StudyUid, ctx: Ctx, _user: User) -> StudyDetail:
    with ctx.sessions() as session:
        study = get_study(session, study_uid)
        if study is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {study_uid} was not received")
        return study_detail(session, study, ctx.settings.data_dir)


def _check_api_csrf(request: Request, token: str | None) -> None:
    # A browser session must prove the call comes from our page; Basic callers need not.
    if session_user(request):
        expected = request.session.get(SESSION_CSRF)
        if not isinstance(expected, str) or not token or not hmac.compare_digest(expected, token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong X-CSRF-Token header")


_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Session call without the CSRF header"},
    409: {"description": "Not possible in the current state (the detail says why)"},
}
CsrfHeader = Annotated[str | None, Header(alias="X-CSRF-Token")]


def _act(
    ctx: WebContext, request: Request, user: str, action: str, target: str, run: Any
) -> ActionResult:
    now = ctx.now()
    client = request.client.host if request.client else None
    try:
        with ctx.sessions() as session, session.begin():
            message, to_queue = run(session, now)
            record_action(session, user, action, now, target=target, detail=message, client=client)
    except actions.ActionError as exc:
        with ctx.sessions() as session, session.begin():
            record_action(
                session, user, action, now, target=target, detail=f"refused: {exc}", client=client
            )
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    enqueue_jobs(ctx, to_queue)
    return ActionResult(ok=True, message=message)


@router.post(
    "/jobs/{job_id}/reanalyse",
    summary="Analyse the job again (new results; re-send delivers the existing ones)",
    responses=_ACTION_ERRORS,
)
def reanalyse_job(
    job_id: JobId, request: Request, ctx: Ctx, user: User, token: CsrfHeader = None
) -> ActionResult:
    _check_api_csrf(request, token)
    return _act(
        ctx,
        request,
        user,
        "reanalyse",
        f"job:{job_id}",
        lambda s, now: actions.reanalyse(s, job_id, now),
    )


@router.post(
    "/jobs/{job_id}/resend",
    summary="Send the job's result objects again (the analysis is not run again)",
    responses=_ACTION_ERRORS,
)
def resend_job(
    job_id: JobId, request: Request, ctx: Ctx, user: User, token: CsrfHeader = None
) -> ActionResult:
    _check_api_csrf(request, token)

    return _act(
        ctx,
        request,
        user,
        "resend",
        f"job:{job_id}",
        lambda s, now: actions.resend(s, job_id, now, settings=ctx.settings),
    )


@router.post(
    "/studies/{study_uid}/complete",
    summary="Force a study still receiving to complete and queue its analysis",
    responses=_ACTION_ERRORS,
)
def complete_study(
    study_uid: StudyUid, request: Request, ctx: Ctx, user: User, token: CsrfHeader = None
) -> ActionResult:
    _check_api_csrf(request, token)
    return _act(
        ctx,
        request,
        user,
        "force_complete",
        f"study:{study_uid}",
        lambda s, now: actions.complete_study(s, study_uid, now),
    )
