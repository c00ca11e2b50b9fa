"""Alembic migrations of the StrokeFlow database (run by :func:`strokeflow.store.migrate`)."""
