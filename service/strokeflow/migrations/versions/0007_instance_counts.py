"""instances: the counting elements that decide whether an acquisition is whole

Recorded by the receiver from the header it parsed, so the completion sweep reads them
with SQL instead of opening every stored file again. Nullable: rows indexed before this
revision have none, and their headers are read (once) when their study is next swept.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 11:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = (
    ("temporal_positions", sa.Integer()),
    ("temporal_position", sa.Integer()),
    ("images_in_acquisition", sa.Integer()),
    ("acquisition_number", sa.Integer()),
    ("slice_key", sa.String(length=80)),
    ("number_of_frames", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
