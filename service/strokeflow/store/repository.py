"""The queries the service runs: record a received instance, look up studies and jobs.

Written to be safe with several receiving processes (and machines) writing at once: rows
that may be created concurrently are inserted with ``ON CONFLICT DO NOTHING`` and then
read back, and a study's row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
serialises writers anyway) before its counters change.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from strokeflow.store.models import Instance, Job, JobState, Series, Study


@dataclass(frozen=True)
class InstanceRecord:
    """What the receiver knows about one stored instance (no patient names)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    #: Relative to the data directory.
    path: str
    size_bytes: int
    sha256: str
    calling_ae_title: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    #: Number of Study / Series Related Instances, when the sender filled them.
    expected_study_instances: int | None = None
    expected_series_instances: int | None = None


class InstanceChange(enum.Enum):
    """What recording an instance changed."""

    NEW = "new"
    #: Same SOP Instance UID, different bytes: the file was replaced.
    REPLACED = "replaced"
    #: Same SOP Instance UID, same bytes: nothing changed.
    DUPLICATE = "duplicate"


def _insert_ignoring_conflict(session: Session, table: Any, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(table).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(table).values(**values).on_conflict_do_nothing())
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise ValueError(f"database dialect {dialect!r} is not supported (SQLite or PostgreSQL)")


def lock_study(session: Session, study_uid: str) -> Study | None:
    """The study row, locked for update until the transaction ends; ``None`` if unknown."""
    stmt = select(Study).where(Study.study_uid == study_uid).with_for_update()
    return session.scalars(stmt).one_or_none()


def record_instance(
    session: Session, record: InstanceRecord, now: datetime
) -> tuple[Study, InstanceChange]:
    """Create or update the study, series and instance rows for one stored file.

    The caller commits. Study and series counters and timestamps change only for new or
    replaced instances; the study's state is left to :mod:`strokeflow.assemble.studies`.

    Parameters
    ----------
    session : Session
    record : InstanceRecord
    now : datetime
        Aware UTC time of reception.

    Returns
    -------
    (Study, InstanceChange)
        The locked study row and what changed.

    Raises
    ------
    ValueError
        The SOP instance is already recorded under another series or study.
    """
    _insert_ignoring_conflict(
        session,
        Study.__table__,
        {
            "study_uid": record.study_uid,
            "state": "receiving",
            "version": 0,
            "instance_count": 0,
            "released": False,
            "patient_id": record.patient_id,
            "accession_number": record.accession_number,
            "study_date": record.study_date,
            "study_description": record.study_description,
        },
    )
    study = lock_study(session, record.study_uid)
    assert study is not None  # inserted above or by a concurrent writer
    _insert_ignoring_conflict(
        session,
        Series.__table__,
        {
            "study_id": study.id,
            "series_uid": record.series_uid,
            "modality": record.modality,
            "series_number": record.series_number,
            "series_description": record.series_description,
            "instance_count": 0,
        },
    )
    series = session.scalars(select(Series).where(Series.series_uid == record.series_uid)).one()
    if series.study_id != study.id:
        raise ValueError(
            f"series {record.series_uid} already belongs to another study; instance "
            f"{record.sop_instance_uid} claims study {record.study_uid}"
        )
    instance = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == record.sop_instance_uid)
    ).one_or_none()
    if instance is None:
        try:
            with session.begin_nested():
                session.add(_new_instance(series, record, now))
            change = InstanceChange.NEW
        except IntegrityError:
            # Another association stored the same SOP instance a moment ago.
            instance = session.scalars(
                select(Instance).where(Instance.sop_instance_uid == record.sop_instance_uid)
            ).one()
    if instance is not None:
        if instance.series_id != series.id:
            raise ValueError(
                f"instance {record.sop_instance_uid} is already stored in another series; "
                f"now it claims series {record.series_uid}"
            )
        instance.times_received += 1
        if instance.sha256 == record.sha256:
            return study, InstanceChange.DUPLICATE
        instance.sha256 = record.sha256
        instance.size_bytes = record.size_bytes
        instance.transfer_syntax_uid = record.transfer_syntax_uid
        instance.received_at = now
        change = InstanceChange.REPLACED
    else:
        series.instance_count += 1
        study.instance_count += 1
    series.first_instance_at = series.first_instance_at or now
    series.last_instance_at = max(series.last_instance_at or now, now)
    study.first_instance_at = study.first_instance_at or now
    study.last_instance_at = max(study.last_instance_at or now, now)
    if record.expected_study_instances:
        study.expected_instances = record.expected_study_instances
    if record.expected_series_instances:
        series.expected_instances = record.expected_series_instances
    return study, change


def _new_instance(series: Series, record: InstanceRecord, now: datetime) -> Instance:
    return Instance(
        series_id=series.id,
        sop_instance_uid=record.sop_instance_uid,
        sop_class_uid=record.sop_class_uid,
        transfer_syntax_uid=record.transfer_syntax_uid,
        path=record.path,
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        calling_ae_title=record.calling_ae_title,
        received_at=now,
        times_received=1,
    )


def get_study(session: Session, study_uid: str) -> Study | None:
    """The study with this Study Instance UID, or ``None``."""
    return session.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()


def study_instances(session: Session, study_uid: str) -> Sequence[Instance]:
    """Every recorded instance of a study, by series then SOP Instance UID."""
    stmt = (
        select(Instance)
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(Study.study_uid == study_uid)
        .order_by(Series.series_uid, Instance.sop_instance_uid)
    )
    return session.scalars(stmt).all()


def list_jobs(
    session: Session, *, state: JobState | None = None, limit: int = 50
) -> Sequence[tuple[Job, str]]:
    """The newest jobs first, each with its Study Instance UID.

    Parameters
    ----------
    state : JobState, optional
        Only jobs in this state.
    limit : int
        At most this many.
    """
    stmt = select(Job, Study.study_uid).join(Study, Job.study_id == Study.id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    stmt = stmt.order_by(Job.id.desc()).limit(limit)
    return [(job, uid) for job, uid in session.execute(stmt).all()]
