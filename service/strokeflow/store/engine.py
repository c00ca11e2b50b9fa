"""Engines and sessions for SQLite (default) and PostgreSQL (psycopg 3).

SQLite is opened in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: several receiving processes write at once, and a deferred transaction
that later wants to write can fail at once with "database is locked" instead of waiting.
Connections from :func:`read_only` only read and take no write lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

#: How long a SQLite writer waits for another one before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Execution option that marks a connection as reading only (see :func:`read_only`).
_READ_ONLY = "strokeflow_read_only"


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the settings StrokeFlow relies on.

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:////abs/path.sqlite`` or ``postgresql+psycopg://...``
        (a bare ``postgresql://`` is taken to mean psycopg 3).
    sqlite_synchronous : {"FULL", "NORMAL"}
        SQLite's ``synchronous`` for this engine's connections. FULL: a commit is on disk
        when it returns. NORMAL (the receiver's index writer): in WAL mode a commit still
        survives the process being killed, but the last ones may be lost to a power cut;
        the receiver's start-up reconciliation indexes files whose rows were lost.
    **kwargs
        Passed to :func:`sqlalchemy.create_engine`.

    Returns
    -------
    sqlalchemy.Engine
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"sqlite_synchronous is FULL or NORMAL, not {sqlite_synchronous!r}")
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine, sqlite_synchronous)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (see the module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_READ_ONLY):
            return  # no BEGIN: each SELECT reads a snapshot of its own, locking nothing
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def read_only(engine: Engine) -> Connection:
    """A connection for lookups that must not wait for writers (use it as a context manager).

    On SQLite its statements run outside any transaction, so a lookup never queues
    behind a writer's ``BEGIN IMMEDIATE`` (in WAL mode readers and one writer coexist);
    on PostgreSQL it is a plain connection.
    """
    return engine.connect().execution_options(**{_READ_ONLY: True})


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
