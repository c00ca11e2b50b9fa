"""Alembic environment: runs on the connection handed over by ``strokeflow.store.migrate``,
or, from the alembic command line, on ``STROKEFLOW_DATABASE_URL`` / ``sqlalchemy.url``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from strokeflow.store.engine import make_engine
from strokeflow.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    url = os.environ.get("STROKEFLOW_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate the handed-over connection, or one opened from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("STROKEFLOW_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    engine = make_engine(str(url))
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
