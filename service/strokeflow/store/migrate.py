"""Bring a database to the newest schema with the Alembic scripts shipped in the package."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

LOG = logging.getLogger(__name__)

#: Package-relative location, so migrations run from an installed wheel without a checkout.
SCRIPT_LOCATION = "strokeflow:migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic configuration built in code (no ``alembic.ini`` needed).

    Parameters
    ----------
    engine : sqlalchemy.Engine, optional
        When given, its URL becomes ``sqlalchemy.url`` (for offline SQL generation).

    Returns
    -------
    alembic.config.Config
    """
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if engine is not None:
        # ConfigParser treats "%" as interpolation; URL-encoded passwords contain it.
        url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
        config.set_main_option("sqlalchemy.url", url)
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of StrokeFlow."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no Alembic revisions found in strokeflow.migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_to_head(engine: Engine) -> str:
    """Apply every pending migration; a no-op when already at head.

    Returns
    -------
    str
        The head revision.
    """
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    head = head_revision()
    LOG.info("database schema at revision %s", head)
    return head
