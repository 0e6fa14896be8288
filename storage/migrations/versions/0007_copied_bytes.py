"""environments remember the data their last copy wrote (per-user quotas)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 04:00:00.000000

Clones made before this count 0 bytes against their owner's CLONEBOT_MAX_BYTES_PER_USER until
their next refresh.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("copied_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("copied_bytes")
