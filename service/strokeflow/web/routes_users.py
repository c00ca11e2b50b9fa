"""The Users page: administrators disable, enable, remove users and set their passwords.

Every change ends the user's open sessions where it takes a right away (see
:mod:`strokeflow.web.accounts`), is audited, and needs the form's CSRF token. An
administrator cannot disable or remove their own account (the last one would lock
everybody out).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from strokeflow.web.accounts import (
    UserError,
    is_admin,
    list_users,
    record_action,
    remove_user,
    set_disabled,
    set_password,
)
from strokeflow.web.auth import check_csrf
from strokeflow.web.context import WebContext, get_ctx
from strokeflow.web.routes_pages import page_user, render_page

router = APIRouter(include_in_schema=False)
Ctx = Annotated[WebContext, Depends(get_ctx)]


def admin_user(request: Request, ctx: Ctx, user: Annotated[str, Depends(page_user)]) -> str:
    """The logged-in user if an administrator; else 403."""
    with ctx.sessions() as session:
        if not is_admin(session, user):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only administrators manage users")
    return user


Admin = Annotated[str, Depends(admin_user)]


@router.get("/users")
def users_page(request: Request, ctx: Ctx, admin: Admin) -> HTMLResponse:
    with ctx.sessions() as session:
        users = list_users(session)
    return render_page(ctx, request, "users.html", {"users": users})


def _change(
    request: Request,
    ctx: WebContext,
    admin: str,
    csrf: str,
    action: str,
    username: str,
    change: Callable[[Session, datetime], str],
) -> Response:
    check_csrf(request, csrf)
    now = ctx.now()
    client = request.client.host if request.client else None
    target = f"user:{username[:64]}"
    try:
        with ctx.sessions() as session, session.begin():
            message = change(session, now)
            record_action(session, admin, action, now, target=target, detail=message, client=client)
    except UserError as exc:
        message = f"Not done: {exc}"
        with ctx.sessions() as session, session.begin():
            record_action(
                session, admin, action, now, target=target, detail=f"refused: {exc}", client=client
            )
    request.session["flash"] = message
    return RedirectResponse("/users", status_code=303)


def _not_self(admin: str, username: str, what: str) -> None:
    if admin == username:
        raise UserError(f"you cannot {what} your own account; another administrator can")


@router.post("/users/{username}/disable")
def disable_form(
    username: str, request: Request, ctx: Ctx, admin: Admin, csrf: Annotated[str, Form()] = ""
) -> Response:
    def change(session: Session, now: datetime) -> str:
        _not_self(admin, username, "disable")
        set_disabled(session, username, True, now)
        return f"{username} disabled; their sessions ended"

    return _change(request, ctx, admin, csrf, "user_disable", username, change)


@router.post("/users/{username}/enable")
def enable_form(
    username: str, request: Request, ctx: Ctx, admin: Admin, csrf: Annotated[str, Form()] = ""
) -> Response:
    def change(session: Session, now: datetime) -> str:
        set_disabled(session, username, False, now)
        return f"{username} enabled"

    return _change(request, ctx, admin, csrf, "user_enable", username, change)


@router.post("/users/{username}/remove")
def remove_form(
    username: str, request: Request, ctx: Ctx, admin: Admin, csrf: Annotated[str, Form()] = ""
) -> Response:
    def change(session: Session, _now: datetime) -> str:
        _not_self(admin, username, "remove")
        remove_user(session, username)
        return f"{username} removed"

    return _change(request, ctx, admin, csrf, "user_remove", username, change)


@router.post("/users/{username}/password")
def password_form(
    username: str,
    request: Request,
    ctx: Ctx,
    admin: Admin,
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    def change(session: Session, now: datetime) -> str:
        set_password(session, username, password, now)
        return f"password of {username} changed; their sessions ended"

    return _change(request, ctx, admin, csrf, "user_passwd", username, change)
