"""clones expire; environments remember why they were stopped

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 03:40:00.000000

Clones recorded before this get no expiry (``expires_at`` NULL: never): expiring them at the
upgrade would stop and delete environments people rely on without warning. Their owner (or
an admin) gives them one with ``/env extend``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("expiry_stage", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("stopped", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_environments_expires_at"), ["expires_at"])


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_environments_expires_at"))
        batch_op.drop_column("stopped")
        batch_op.drop_column("expiry_stage")
        batch_op.drop_column("expires_at")
