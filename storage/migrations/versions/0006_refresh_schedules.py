"""clones refreshed on a schedule

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 09:00:00.000000

One schedule per clone, keyed by the environment's id: it follows a rename and goes with a
delete (ON DELETE CASCADE).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table(
        "refresh_schedules",
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("cron", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("set_by", sa.String(length=32), nullable=False),
        sa.Column("next_run", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(length=16), nullable=True),
        sa.Column("last_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("last_job", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["environment_id"], ["environments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("environment_id"),
    )
    with op.batch_alter_table("refresh_schedules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refresh_schedules_next_run"), ["next_run"])


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("refresh_schedules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_schedules_next_run"))
    op.drop_table("refresh_schedules")
