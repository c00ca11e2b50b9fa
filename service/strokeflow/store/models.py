"""SQL tables: studies, series, instances and analysis jobs.

The job table is the truth about every analysis: its state, attempts, the timestamps of
every stage, the error text and the result volumes/decisions. Queue messages only carry a
job id, so a lost message can be re-enqueued from here.

All timestamps are timezone-aware UTC (:class:`UtcDateTime`).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: DICOM UIDs are at most 64 characters.
UID_LENGTH = 64


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value} given; StrokeFlow stores aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every StrokeFlow table."""


class StudyState(enum.StrEnum):
    """Where a study is in reception: receiving → complete → queued."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    QUEUED = "queued"


class JobState(enum.StrEnum):
    """Life of one analysis job (the workers move it past ``queued``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DISPATCHED = "dispatched"
    CANCELLED = "cancelled"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as the lower-case values, as VARCHAR + CHECK rather than a native PostgreSQL
    # ENUM, so that adding a state is a plain migration on both SQLite and PostgreSQL.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Study(Base):
    """One DICOM study as received."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    state: Mapped[StudyState] = mapped_column(
        _enum(StudyState, "study_state"), default=StudyState.RECEIVING, index=True
    )
    #: Bumped each time the study is queued; the next job gets this version.
    version: Mapped[int] = mapped_column(Integer, default=0)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Number of Study Related Instances (0020,1208) when the sender announced it.
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    #: Whether every association that sent to this study since its last instance has ended.
    released: Mapped[bool] = mapped_column(default=False)
    #: When it was last marked released (association end, or listener restart).
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    first_instance_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_instance_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: Why it was completed: quiet_period, expected_count, quiet_timeout, forced.
    completion_reason: Mapped[str | None] = mapped_column(String(32))
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.version")


class Series(Base):
    """One series of a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Number of Series Related Instances (0020,1209) when the sender announced it.
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    first_instance_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_instance_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance; ``path`` is relative to the data directory."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: SHA-256 of the stored file, to tell a resend from a changed instance.
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: How many times the same SOP instance arrived again (resends and replacements).
    times_received: Mapped[int] = mapped_column(Integer, default=1)
    # The counting elements of the stored file (:class:`strokeflow.store.wholeness.ImageCounts`),
    # recorded from the header the receiver parsed anyway, so that deciding whether an
    # acquisition is whole opens no file. ``number_of_frames`` is NULL only in rows indexed
    # before they were recorded (revision 0007): then the header is read once and they are
    # filled in.
    #: Number of Temporal Positions (0020,0105).
    temporal_positions: Mapped[int | None] = mapped_column(Integer)
    #: Temporal Position Identifier (0020,0100).
    temporal_position: Mapped[int | None] = mapped_column(Integer)
    #: Images in Acquisition (0020,1002).
    images_in_acquisition: Mapped[int | None] = mapped_column(Integer)
    #: Acquisition Number (0020,0012).
    acquisition_number: Mapped[int | None] = mapped_column(Integer)
    #: The slice position (Image Position (Patient) rounded, else Slice Location), as text.
    slice_key: Mapped[str | None] = mapped_column(String(80))
    #: Number of Frames (0028,0008), 1 when absent.
    number_of_frames: Mapped[int | None] = mapped_column(Integer)


class JobInput(Base):
    """One file a job version analyses, fixed when the version is queued.

    A changed resend of an instance is stored under a new path,
    so an earlier version's files stay, and re-analysing that version reads them again
    (:func:`strokeflow.store.repository.versioned_path`).
    """

    __tablename__ = "job_inputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: Relative to the data directory, as :attr:`Instance.path` was when the job was queued.
    path: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))


class Job(Base):
    """One analysis of one version of a study."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("study_id", "version", name="uq_jobs_study_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(
        _enum(JobState, "job_state"), default=JobState.QUEUED, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer)
    first_instance_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_instance_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: Which worker holds or held the job (``host:pid``), for stuck-job recovery.
    worker: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    #: Folder (relative to the data directory) holding results.json and the maps.
    results_path: Mapped[str | None] = mapped_column(String(255))
    core_ml: Mapped[float | None] = mapped_column(Float)
    #: Named by their thresholds because they are the published ones (Tmax > 6 s and
    #: > 10 s, ``analysis.decisions.PUBLISHED_TMAX_S``), measured whatever a site configures;
    #: a site's other thresholds are in results.json's ``tmax_volumes_ml``.
    tmax6_ml: Mapped[float | None] = mapped_column(Float)
    tmax10_ml: Mapped[float | None] = mapped_column(Float)
    mismatch_ml: Mapped[float | None] = mapped_column(Float)
    mismatch_ratio: Mapped[float | None] = mapped_column(Float)
    #: Rule-set decisions, e.g. ``{"defuse3": true, "extend": false}``.
    decisions: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: A running job whose lease passed without a heartbeat lost its worker (re-queued).
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: A queued job is not run before this (retry back-off); ``None``: at once.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: When its id was last put on the task queue (to re-enqueue lost messages).
    enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: Held by the process sending this job's results, so two senders never overlap.
    dispatch_lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())

    study: Mapped[Study] = relationship(back_populates="jobs")
    dispatches: Mapped[list[Dispatch]] = relationship(
        back_populates="job", order_by="Dispatch.id", cascade="all, delete-orphan"
    )


class DispatchState(enum.StrEnum):
    """Delivery of one result object to one destination."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Dispatch(Base):
    """One result object of a job for one destination, and what the destination answered.

    Created once, in the transaction that marks the job succeeded, so running a job id
    twice never duplicates these rows.
    """

    __tablename__ = "dispatches"
    __table_args__ = (
        UniqueConstraint("job_id", "destination", "sop_instance_uid", name="uq_dispatch_object"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: ``AE@host:port`` as configured.
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    #: Relative to the data directory.
    path: Mapped[str] = mapped_column(String(512))
    state: Mapped[DispatchState] = mapped_column(
        _enum(DispatchState, "dispatch_state"), default=DispatchState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The C-STORE response status of the last attempt (``None``: no answer).
    status: Mapped[int | None] = mapped_column(Integer)
    #: The class actually sent when the destination rejected the original (SR fallback).
    sent_sop_class_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    sent_sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    job: Mapped[Job] = relationship(back_populates="dispatches")
