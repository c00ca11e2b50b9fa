"""Local users and the audit log (who did what, when)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from strokeflow.store.web_models import AuditEntry, User, WebSession
from strokeflow.web.passwords import hash_password, verify_password

_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: Checked against when the user does not exist, so timing does not tell who exists.
_DUMMY_HASH = hash_password("strokeflow-no-such-user")


class UserError(ValueError):
    """A user cannot be created as asked; the message says why."""


def validate_username(username: str) -> str:
    """Return ``username`` if it is 1-64 of ``A-Z a-z 0-9 _ . @ -``.

    Raises
    ------
    UserError
    """
    if not _USERNAME.match(username):
        raise UserError(f"user name {username!r} is invalid: 1 to 64 letters, digits or _ . @ -")
    return username


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise UserError("the password must have at least 8 characters")


def add_user(session: Session, username: str, password: str, now: datetime) -> User:
    """Create a user with a hashed password (caller commits).

    Raises
    ------
    UserError
        Invalid name, password shorter than 8 characters, or the name is taken.
    """
    validate_username(username)
    _check_password(password)
    if session.scalars(select(User).where(User.username == username)).one_or_none():
        raise UserError(f"user {username!r} already exists")
    user = User(
        username=username,
        password_hash=hash_password(password),
        created_at=now,
        disabled=False,
    )
    session.add(user)
    session.flush()
    return user


def _existing(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def revoke_user_sessions(session: Session, username: str, now: datetime) -> int:
    """End every open dashboard session of ``username``; returns how many (caller commits)."""
    result = session.execute(
        update(WebSession)
        .where(WebSession.username == username, WebSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def set_password(session: Session, username: str, password: str, now: datetime) -> None:
    """Give ``username`` a new password and end its sessions (caller commits).

    Raises
    ------
    UserError
        No such user, or a password shorter than 8 characters.
    """
    _check_password(password)
    _existing(session, username).password_hash = hash_password(password)
    revoke_user_sessions(session, username, now)


def set_disabled(session: Session, username: str, disabled: bool, now: datetime) -> None:
    """Disable (ending its sessions) or enable ``username`` (caller commits).

    Raises
    ------
    UserError
        No such user.
    """
    _existing(session, username).disabled = disabled
    if disabled:
        revoke_user_sessions(session, username, now)


def set_admin(session: Session, username: str, admin: bool) -> None:
    """Let ``username`` manage the other users on the dashboard, or not (caller commits).

    Raises
    ------
    UserError
        No such user.
    """
    _existing(session, username).is_admin = admin


def is_admin(session: Session, username: str) -> bool:
    """Whether ``username`` is an enabled administrator."""
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    return user is not None and user.is_admin and not user.disabled


def remove_user(session: Session, username: str) -> None:
    """Delete ``username`` and its sessions; its audit history stays (caller commits).

    Raises
    ------
    UserError
        No such user.
    """
    session.delete(_existing(session, username))
    session.execute(delete(WebSession).where(WebSession.username == username))


def list_users(session: Session) -> Sequence[User]:
    """Every user, by name."""
    return session.scalars(select(User).order_by(User.username)).all()


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The enabled user with this name and password, else ``None``."""
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None or user.disabled:
        verify_password(password, _DUMMY_HASH)
        return None
    return user if verify_password(password, user.password_hash) else None


def record_action(
    session: Session,
    username: str,
    action: str,
    now: datetime,
    *,
    target: str | None = None,
    detail: str | None = None,
    client: str | None = None,
) -> AuditEntry:
    """Add one audit row (caller commits). Never pass patient identifiers."""
    entry = AuditEntry(
        at=now,
        username=username[:64],
        action=action[:32],
        target=target[:128] if target else None,
        detail=detail,
        client=client[:64] if client else None,
    )
    session.add(entry)
    return entry


def recent_actions(
    session: Session, *, target: str | None = None, limit: int = 50
) -> Sequence[AuditEntry]:
    """The newest audit rows first, optionally only those about ``target``."""
    stmt = select(AuditEntry)
    if target is not None:
        stmt = stmt.where(AuditEntry.target == target)
    return session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)).all()
