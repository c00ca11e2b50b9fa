"""The queries the service runs: record a received instance, look up studies and jobs.

Written to be safe with several receiving processes (and machines) writing at once: rows
that may be created concurrently are inserted with ``ON CONFLICT DO NOTHING`` and then
read back, and a study's row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
serialises writers anyway) before its counters change.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from strokeflow.store.models import (
    Instance,
    Job,
    JobInput,
    JobState,
    Series,
    Study,
    StudyState,
)
from strokeflow.store.wholeness import ImageCounts, parse_slice_key, slice_key_text


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
    #: The file's counting elements (``None``: not recorded; the sweep reads the header).
    counts: ImageCounts | None = None


class InstanceChange(enum.Enum):
    """What recording an instance changed."""

    NEW = "new"
    #: Same SOP Instance UID, different bytes: the file was replaced.
    REPLACED = "replaced"
    #: Same SOP Instance UID, same bytes: nothing changed.
    DUPLICATE = "duplicate"


def _dialect_insert(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"database dialect {dialect!r} is not supported (SQLite or PostgreSQL)")


def _later(column: Any) -> Any:
    """SQL for ``max(column, :now)``, ``:now`` when the column is NULL."""
    now = bindparam("now", type_=column.type)
    return case((and_(column.is_not(None), column > now), column), else_=now)


def _counting_update(table: Table) -> Any:
    """One more instance (``:counted`` is 0 for a replacement) in a study or series row."""
    return (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values(
            instance_count=table.c.instance_count + bindparam("counted"),
            first_instance_at=func.coalesce(table.c.first_instance_at, bindparam("now")),
            last_instance_at=_later(table.c.last_instance_at),
            expected_instances=func.coalesce(bindparam("expected"), table.c.expected_instances),
        )
    )


#: The instance columns that hold its :class:`~strokeflow.store.wholeness.ImageCounts`.
COUNT_COLUMNS = (
    "temporal_positions",
    "temporal_position",
    "images_in_acquisition",
    "acquisition_number",
    "slice_key",
    "number_of_frames",
)


def count_values(counts: ImageCounts | None) -> dict[str, Any]:
    """An instance row's :data:`COUNT_COLUMNS` for these counts (all NULL for ``None``)."""
    if counts is None:
        return dict.fromkeys(COUNT_COLUMNS)
    return {
        "temporal_positions": counts.temporal_positions,
        "temporal_position": counts.temporal_position,
        "images_in_acquisition": counts.images_in_acquisition,
        "acquisition_number": counts.acquisition_number,
        "slice_key": slice_key_text(counts.slice_key),
        "number_of_frames": counts.frames,
    }


def recorded_counts(row: Any) -> ImageCounts | None:
    """The counts an instance row holds (:data:`COUNT_COLUMNS` as attributes, e.g. a
    selected row); ``None`` when they were not recorded."""
    if row.number_of_frames is None:
        return None
    return ImageCounts(
        temporal_positions=row.temporal_positions,
        temporal_position=row.temporal_position,
        images_in_acquisition=row.images_in_acquisition,
        acquisition_number=row.acquisition_number,
        slice_key=parse_slice_key(row.slice_key),
        frames=row.number_of_frames,
    )


def _instance_values(record: InstanceRecord, series_id: int, now: datetime) -> dict[str, Any]:
    """The bound parameters of a new instance row."""
    return {
        "series_id": series_id,
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "path": record.path,
        "size_bytes": record.size_bytes,
        "sha256": record.sha256,
        "calling_ae_title": record.calling_ae_title,
        "received_at": now,
        **count_values(record.counts),
    }


@dataclass(frozen=True)
class _Statements:
    """The statements run for every received instance, built once per dialect.

    Bound parameters instead of literal values: the statement objects are reused, so
    SQLAlchemy neither rebuilds nor re-keys them per instance (measured: ~2.5 ms of the
    ~3.3 ms an instance spent in SQL went on building ORM statements).
    """

    study_status: Any
    insert_study: Any
    series_of: Any
    insert_series: Any
    insert_instance: Any
    insert_instances: Any
    instance_of: Any
    count_series: Any
    count_study: Any
    placement: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    study_columns = ("study_uid", "patient_id", "accession_number", "study_date")
    series_columns = ("series_uid", "study_id", "modality", "series_number")
    instance_columns = (
        "series_id",
        "sop_instance_uid",
        "sop_class_uid",
        "transfer_syntax_uid",
        "path",
        "size_bytes",
        "sha256",
        "calling_ae_title",
        "received_at",
        *COUNT_COLUMNS,
    )
    studies, series, instances = (cast(Table, m.__table__) for m in (Study, Series, Instance))
    return _Statements(
        study_status=select(
            studies.c.id,
            studies.c.state,
            studies.c.version,
            studies.c.instance_count,
            studies.c.expected_instances,
            studies.c.released,
        )
        .where(studies.c.study_uid == bindparam("study_uid"))
        .with_for_update(),
        insert_study=_dialect_insert(dialect, studies)
        .values(
            {
                **{name: bindparam(name) for name in (*study_columns, "study_description")},
                "state": StudyState.RECEIVING,
                "version": 0,
                "instance_count": 0,
                "released": False,
            }
        )
        .on_conflict_do_nothing(),
        series_of=select(series.c.id, series.c.study_id).where(
            series.c.series_uid == bindparam("series_uid")
        ),
        insert_series=_dialect_insert(dialect, series)
        .values(
            {
                **{name: bindparam(name) for name in (*series_columns, "series_description")},
                "instance_count": 0,
            }
        )
        .on_conflict_do_nothing(),
        insert_instance=_dialect_insert(dialect, instances)
        .values({**{name: bindparam(name) for name in instance_columns}, "times_received": 1})
        .on_conflict_do_nothing()
        .returning(instances.c.id),
        # Executed with a list of parameter sets: one multi-row INSERT for a whole batch.
        insert_instances=_dialect_insert(dialect, instances)
        .values({**{name: bindparam(name) for name in instance_columns}, "times_received": 1})
        .on_conflict_do_nothing()
        .returning(instances.c.sop_instance_uid),
        instance_of=select(instances.c.id, instances.c.series_id, instances.c.sha256).where(
            instances.c.sop_instance_uid == bindparam("sop_instance_uid")
        ),
        count_series=_counting_update(series),
        count_study=_counting_update(studies),
        placement=select(
            select(series.c.series_uid)
            .join(instances, instances.c.series_id == series.c.id)
            .where(instances.c.sop_instance_uid == bindparam("sop_instance_uid"))
            .scalar_subquery()
            .label("instance_series_uid"),
            select(studies.c.study_uid)
            .join(series, series.c.study_id == studies.c.id)
            .where(series.c.series_uid == bindparam("series_uid"))
            .scalar_subquery()
            .label("series_study_uid"),
        ),
    )


@dataclass(frozen=True)
class StudyStatus:
    """A study's row as it is after :func:`record_instance` (locked until commit)."""

    id: int
    study_uid: str
    state: StudyState
    version: int
    instance_count: int
    expected_instances: int | None
    released: bool


def lock_study(session: Session, study_uid: str) -> Study | None:
    """The study row, locked for update until the transaction ends; ``None`` if unknown."""
    stmt = select(Study).where(Study.study_uid == study_uid).with_for_update()
    return session.scalars(stmt).one_or_none()


def _locked_study_status(conn: Connection, sql: _Statements, record: InstanceRecord) -> Any:
    key = {"study_uid": record.study_uid}
    row = conn.execute(sql.study_status, key).one_or_none()
    if row is not None:
        return row
    conn.execute(
        sql.insert_study,
        {
            "study_uid": record.study_uid,
            "patient_id": record.patient_id,
            "accession_number": record.accession_number,
            "study_date": record.study_date,
            "study_description": record.study_description,
        },
    )
    return conn.execute(sql.study_status, key).one()  # inserted now or by another writer


def _series_id(conn: Connection, sql: _Statements, record: InstanceRecord, study_id: int) -> int:
    key = {"series_uid": record.series_uid}
    row = conn.execute(sql.series_of, key).one_or_none()
    if row is None:
        conn.execute(
            sql.insert_series,
            {
                "series_uid": record.series_uid,
                "study_id": study_id,
                "modality": record.modality,
                "series_number": record.series_number,
                "series_description": record.series_description,
            },
        )
        row = conn.execute(sql.series_of, key).one()
    if row.study_id != study_id:
        raise ValueError(
            f"series {record.series_uid} already belongs to another study; instance "
            f"{record.sop_instance_uid} claims study {record.study_uid}"
        )
    return int(row.id)


def versioned_path(path: str, sha256: str) -> str:
    """Where a changed resend of the instance stored at ``path`` goes.

    Beside the older file, named with the new content's hash (``<sop>_<16 hex>.dcm``;
    UIDs hold only digits and dots, so ``_`` cannot be part of one), never over it: an
    earlier job version keeps its own inputs.
    """
    folder, _, name = path.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    sop = stem.split("_")[0]
    return f"{folder}/{sop}_{sha256[:16]}{dot}{suffix}"


def _store_instance(
    conn: Connection,
    sql: _Statements,
    record: InstanceRecord,
    series_id: int,
    now: datetime,
    *,
    path_is_final: bool = False,
) -> InstanceChange:
    new_id = conn.execute(sql.insert_instance, _instance_values(record, series_id, now)).scalar()
    if new_id is not None:
        return InstanceChange.NEW
    # Received before (by this association or, a moment ago, by another one).
    known = conn.execute(sql.instance_of, {"sop_instance_uid": record.sop_instance_uid}).one()
    if known.series_id != series_id:
        raise ValueError(
            f"instance {record.sop_instance_uid} is already stored in another series; "
            f"now it claims series {record.series_uid}"
        )
    values: dict[str, Any] = {"times_received": Instance.times_received + 1}
    change = InstanceChange.DUPLICATE
    if known.sha256 != record.sha256:
        values.update(
            path=record.path if path_is_final else versioned_path(record.path, record.sha256),
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            transfer_syntax_uid=record.transfer_syntax_uid,
            received_at=now,
            **count_values(record.counts),
        )
        change = InstanceChange.REPLACED
    conn.execute(update(Instance).where(Instance.id == known.id).values(**values))
    return change


def record_instance(
    session: Session, record: InstanceRecord, now: datetime
) -> tuple[StudyStatus, InstanceChange]:
    """Create or update the study, series and instance rows for one stored file.

    The caller commits. Study and series counters and timestamps change only for new or
    replaced instances; the study's state is left to :mod:`strokeflow.store.studies`.
    This runs once per received instance, before the sender gets its answer, so it uses
    prepared Core statements on the session's connection and loads no ORM objects (ORM
    objects of these rows already in ``session`` are not refreshed).

    Parameters
    ----------
    session : Session
    record : InstanceRecord
    now : datetime
        Aware UTC time of reception.

    Returns
    -------
    (StudyStatus, InstanceChange)
        The study (locked until commit, counters as updated) and what changed.

    Raises
    ------
    ValueError
        The SOP instance is already recorded under another series or study.
    """
    conn = session.connection()
    sql = _statements(conn.dialect.name)
    row = _locked_study_status(conn, sql, record)
    series_id = _series_id(conn, sql, record, row.id)
    change = _store_instance(conn, sql, record, series_id, now)
    status = StudyStatus(
        id=row.id,
        study_uid=record.study_uid,
        state=StudyState(row.state),
        version=row.version,
        instance_count=row.instance_count + (change is InstanceChange.NEW),
        expected_instances=record.expected_study_instances or row.expected_instances,
        released=row.released,
    )
    if change is InstanceChange.DUPLICATE:
        return status, change
    counted = int(change is InstanceChange.NEW)
    conn.execute(
        sql.count_series,
        {
            "row_id": series_id,
            "counted": counted,
            "now": now,
            "expected": record.expected_series_instances or None,
        },
    )
    conn.execute(
        sql.count_study,
        {
            "row_id": row.id,
            "counted": counted,
            "now": now,
            "expected": record.expected_study_instances or None,
        },
    )
    if change is InstanceChange.REPLACED:
        _follow_identity(conn, row.id, record)
    return status, change


def _follow_identity(conn: Connection, study_id: int, record: InstanceRecord) -> None:
    """A corrected resend (a fixed PatientID, say): the study's identity follows the
    newest instance; the older versions' files and results keep what they had."""
    identity = {
        "patient_id": record.patient_id,
        "accession_number": record.accession_number,
        "study_date": record.study_date,
        "study_description": record.study_description,
    }
    changed = {k: v for k, v in identity.items() if v is not None}
    if changed:
        conn.execute(update(Study).where(Study.id == study_id).values(**changed))


def _last_given(values: Sequence[int | None]) -> int | None:
    """The last non-zero value, as sequential ``coalesce`` updates would leave it."""
    return next((v for v in reversed(values) if v), None)


def record_instances(
    session: Session, records: Sequence[InstanceRecord], now: datetime
) -> list[tuple[StudyStatus, list[tuple[InstanceRecord, InstanceChange]]]]:
    """Record a batch of stored files: :func:`record_instance` for many, in few statements.

    Each record's ``path`` is where its file already is (the receiver wrote it before
    answering): a replacement keeps that path instead of deriving a versioned one. Per
    study, the study row is locked once, each series looked up once, the instances
    inserted in one multi-row statement and the counters updated once. Records the insert
    skips (their SOP Instance UID is known) go through the one-by-one logic.

    Parameters
    ----------
    session : Session
    records : sequence of InstanceRecord
    now : datetime
        Aware UTC time of reception (one for the batch).

    Returns
    -------
    list of (StudyStatus, list of (InstanceRecord, InstanceChange))
        Per study, in order of first appearance: its row as updated (locked until
        commit) and what each of its records changed.

    Raises
    ------
    ValueError
        A record's series belongs to another study, or its SOP instance to another
        series (the caller rolls back and can retry the records one by one).
    """
    conn = session.connection()
    sql = _statements(conn.dialect.name)
    by_study: dict[str, list[InstanceRecord]] = {}
    for record in records:
        by_study.setdefault(record.study_uid, []).append(record)
    results = []
    for group in by_study.values():
        row = _locked_study_status(conn, sql, group[0])
        series_ids: dict[str, int] = {}
        for record in group:
            if record.series_uid not in series_ids:
                series_ids[record.series_uid] = _series_id(conn, sql, record, row.id)
        inserted = set(
            conn.execute(
                sql.insert_instances,
                [_instance_values(r, series_ids[r.series_uid], now) for r in group],
            ).scalars()
        )
        changes = []
        for record in group:
            if record.sop_instance_uid in inserted:
                inserted.discard(record.sop_instance_uid)  # a repeat in the batch is not new
                change = InstanceChange.NEW
            else:
                change = _store_instance(
                    conn, sql, record, series_ids[record.series_uid], now, path_is_final=True
                )
            changes.append((record, change))
        new = sum(c is InstanceChange.NEW for _, c in changes)
        for series_uid, series_id in series_ids.items():
            ours = [(r, c) for r, c in changes if r.series_uid == series_uid]
            if all(c is InstanceChange.DUPLICATE for _, c in ours):
                continue
            conn.execute(
                sql.count_series,
                {
                    "row_id": series_id,
                    "counted": sum(c is InstanceChange.NEW for _, c in ours),
                    "now": now,
                    "expected": _last_given([r.expected_series_instances for r, _ in ours]),
                },
            )
        expected = _last_given([r.expected_study_instances for r in group])
        if any(c is not InstanceChange.DUPLICATE for _, c in changes):
            conn.execute(
                sql.count_study,
                {"row_id": row.id, "counted": new, "now": now, "expected": expected},
            )
        replaced = [r for r, c in changes if c is InstanceChange.REPLACED]
        if replaced:
            _follow_identity(conn, row.id, replaced[-1])
        status = StudyStatus(
            id=row.id,
            study_uid=group[0].study_uid,
            state=StudyState(row.state),
            version=row.version,
            instance_count=row.instance_count + new,
            expected_instances=expected or row.expected_instances,
            released=row.released,
        )
        results.append((status, changes))
    return results


@dataclass(frozen=True)
class Placement:
    """Where the index already puts an instance UID and a series UID (``None``: unknown)."""

    instance_series_uid: str | None
    series_study_uid: str | None


def placement(conn: Connection, sop_instance_uid: str, series_uid: str) -> Placement:
    """The series an instance is recorded in and the study a series belongs to.

    One indexed read, for the receiver to decide an answer before the instance's rows
    exist; run it on a connection opened with :func:`strokeflow.store.engine.read_only`.
    On SQLite the compiled statement goes straight to the driver (a lookup per received
    instance: SQLAlchemy's execution costs ~8x the query itself).
    """
    values = {"sop_instance_uid": sop_instance_uid, "series_uid": series_uid}
    if conn.dialect.name == "sqlite":
        sql, order = _compiled_placement(conn)
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, tuple(values[name] for name in order))
            found = cursor.fetchone()
        finally:
            cursor.close()
        assert found is not None  # two scalar subqueries: always one row
        return Placement(found[0], found[1])
    row = conn.execute(_statements(conn.dialect.name).placement, values).one()
    return Placement(row.instance_series_uid, row.series_study_uid)


#: Dialect name -> the placement query as its driver takes it, and its parameters' order.
_PLACEMENT_SQL: dict[str, tuple[str, tuple[str, ...]]] = {}


def _compiled_placement(conn: Connection) -> tuple[str, tuple[str, ...]]:
    name = conn.dialect.name
    if name not in _PLACEMENT_SQL:
        compiled = _statements(name).placement.compile(dialect=conn.dialect)
        _PLACEMENT_SQL[name] = (str(compiled), tuple(compiled.positiontup or ()))
    return _PLACEMENT_SQL[name]


@dataclass(frozen=True)
class StoredInstance:
    """An instance row as start-up reconciliation compares it with the files on disk."""

    path: str
    sha256: str
    received_at: datetime


def study_index(session: Session, study_uid: str) -> dict[str, StoredInstance]:
    """Every recorded instance of a study by SOP Instance UID (empty for an unknown study)."""
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.path, Instance.sha256, Instance.received_at)
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(Study.study_uid == study_uid)
    ).all()
    return {r.sop_instance_uid: StoredInstance(r.path, r.sha256, r.received_at) for r in rows}


def job_inputs(session: Session, job_id: int, study_id: int) -> list[tuple[str, str]]:
    """``(path, sha256)`` of the files a job version analyses, fixed when it was queued.

    Jobs queued before inputs were recorded (no rows) analyse the study's current files.
    """
    rows = session.execute(
        select(JobInput.path, JobInput.sha256)
        .where(JobInput.job_id == job_id)
        .order_by(JobInput.path)
    ).all()
    if rows:
        return [(r.path, r.sha256) for r in rows]
    current = session.execute(
        select(Instance.path, Instance.sha256)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
        .order_by(Instance.path)
    ).all()
    return [(r.path, r.sha256) for r in current]


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
