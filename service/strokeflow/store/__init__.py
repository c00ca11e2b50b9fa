"""Persistence: every SQL table, engines, migrations, study state and the service's queries.

Importing the package registers every table on ``Base.metadata`` (Alembic compares them all).
"""

from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import current_revision, head_revision, upgrade_to_head
from strokeflow.store.models import (
    Base,
    Dispatch,
    DispatchState,
    Instance,
    Job,
    JobState,
    Series,
    Study,
    StudyState,
)
from strokeflow.store.web_models import AuditEntry, User, WebhookDelivery

__all__ = [
    "AuditEntry",
    "Base",
    "Dispatch",
    "DispatchState",
    "Instance",
    "Job",
    "JobState",
    "Series",
    "Study",
    "StudyState",
    "User",
    "WebhookDelivery",
    "current_revision",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "upgrade_to_head",
]
