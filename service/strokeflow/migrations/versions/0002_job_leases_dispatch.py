"""job leases, retry back-off and per-object dispatch outcomes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("dispatch_lease_until", sa.DateTime(timezone=True), nullable=True)
        )
        batch.create_index("ix_jobs_lease_until", ["lease_until"])

    op.create_table(
        "dispatches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending", "sent", "failed", name="dispatch_state", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("sent_sop_class_uid", sa.String(length=64), nullable=True),
        sa.Column("sent_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "destination", "sop_instance_uid", name="uq_dispatch_object"),
    )
    op.create_index("ix_dispatches_job_id", "dispatches", ["job_id"])
    op.create_index("ix_dispatches_state", "dispatches", ["state"])
    op.create_index("ix_dispatches_next_attempt_at", "dispatches", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_dispatches_next_attempt_at", table_name="dispatches")
    op.drop_index("ix_dispatches_state", table_name="dispatches")
    op.drop_index("ix_dispatches_job_id", table_name="dispatches")
    op.drop_table("dispatches")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_lease_until")
        batch.drop_column("dispatch_lease_until")
        batch.drop_column("enqueued_at")
        batch.drop_column("next_attempt_at")
        batch.drop_column("heartbeat_at")
        batch.drop_column("lease_until")
