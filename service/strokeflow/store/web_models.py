"""SQL tables of the web dashboard: local users, the audit log and webhook deliveries.

They share :class:`strokeflow.store.models.Base`; importing :mod:`strokeflow.store` registers
them on ``Base.metadata`` (and so for Alembic's comparison). The schema itself comes from the
migration ``0003_web_users_audit``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from strokeflow.store.models import Base, UtcDateTime


class User(Base):
    """A person allowed to log in to the dashboard and the JSON API."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    #: ``scrypt$n$r$p$salt_hex$hash_hex`` (see :mod:`strokeflow.web.passwords`).
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: A disabled user keeps its audit history but cannot log in.
    disabled: Mapped[bool] = mapped_column(default=False)
    #: May manage the other users on the dashboard's Users page.
    is_admin: Mapped[bool] = mapped_column(default=False, server_default=false())


class AuditEntry(Base):
    """Who did what, when: every action and login taken through the dashboard or API."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    #: The user name (kept as text so the history survives a renamed or removed user).
    username: Mapped[str] = mapped_column(String(64), index=True)
    #: ``login``, ``login_failed``, ``retry``, ``resend``, ``force_complete``, ``user_add``...
    action: Mapped[str] = mapped_column(String(32))
    #: What it acted on: ``job:12``, ``study:1.2.3``; no patient identifiers.
    target: Mapped[str | None] = mapped_column(String(128))
    #: Outcome in words, e.g. ``queued for analysis again`` or the refusal.
    detail: Mapped[str | None] = mapped_column(Text)
    #: Peer address as seen by the application (the proxy's when behind one).
    client: Mapped[str | None] = mapped_column(String(64))


class WebhookDelivery(Base):
    """One notification (result ready / job failed) for one finished attempt of a job.

    Inserting the row claims the notification, so several service processes never send
    the same one twice (unique job, event and finish time).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "event", "finished_at", name="uq_webhook_job_event"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: ``result_ready`` or ``job_failed``.
    event: Mapped[str] = mapped_column(String(32))
    #: The job's ``finished_at`` this notification is about.
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: HTTP status of the last attempt (``None``: no answer).
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class WebSession(Base):
    """A dashboard login, checked on every request: logout, a new password, disabling or
    removing the user end it at once (the signed cookie alone is not enough)."""

    __tablename__ = "web_sessions"

    #: SHA-256 (hex) of the random token kept in the signed cookie; the token is never stored.
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Set by logout or by a change to the user; a revoked session never comes back.
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
