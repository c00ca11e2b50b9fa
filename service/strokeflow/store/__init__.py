"""Persistence: SQLAlchemy models, engines, migrations and the queries the service runs."""

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

__all__ = [
    "Base",
    "Dispatch",
    "DispatchState",
    "Instance",
    "Job",
    "JobState",
    "Series",
    "Study",
    "StudyState",
    "current_revision",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "upgrade_to_head",
]
