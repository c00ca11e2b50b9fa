"""Migrations and the store, on SQLite and on a real PostgreSQL started by the tests."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from strokeflow.store.models import Base, Instance, Study
from strokeflow.store.repository import InstanceRecord
from strokeflow.store.studies import note_instance


def test_migrations_build_exactly_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    assert upgrade_to_head(engine) == head_revision()
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= {"studies", "series", "instances", "jobs"}
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []
    upgrade_to_head(engine)  # a second run is a no-op
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_downgrade_to_base_and_back(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade_to_head(engine)
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert "studies" not in inspect(engine).get_table_names()
    upgrade_to_head(engine)
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()


def _record(study: str, n: int) -> InstanceRecord:
    return InstanceRecord(
        study_uid=study,
        series_uid=f"{study}.1",
        sop_instance_uid=f"{study}.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"x/{n}.dcm",
        size_bytes=1,
        sha256="0" * 64,
    )


def test_times_come_back_as_aware_utc(sessions) -> None:  # type: ignore[no-untyped-def]
    cet = timezone(timedelta(hours=1))
    with sessions() as session, session.begin():
        note_instance(session, _record("1.2.3", 1), datetime(2024, 1, 2, 11, 0, tzinfo=cet))
    with sessions() as session:
        when = session.scalar(select(Study.first_instance_at))
    assert when == datetime(2024, 1, 2, 10, 0, tzinfo=UTC)
    assert when is not None and when.utcoffset() == timedelta(0)


def test_concurrent_writers_to_one_study_lose_nothing(sessions) -> None:  # type: ignore[no-untyped-def]
    # Several associations (threads here, processes in production) storing the same study:
    # no "database is locked", no lost counter update, no duplicate study row.
    errors: list[BaseException] = []
    now = datetime(2024, 1, 2, tzinfo=UTC)

    def writer(offset: int) -> None:
        try:
            for n in range(offset, 60, 4):
                with sessions() as session, session.begin():
                    note_instance(session, _record("1.2.3", n), now)
                    # the same instance from another sender now and then
                    note_instance(session, _record("1.2.3", n % 7), now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 60
        assert session.scalar(select(Study.instance_count)) == 60
        assert session.scalar(select(func.count()).select_from(Study)) == 1


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'db.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    assert make_session_factory(engine)().get_bind() is engine
    engine.dispose()
