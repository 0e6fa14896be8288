"""Several Docker engines: the engines added by hand, and the engine of each environment and
job (``local``, the engine of DOCKER_HOST, for all there were)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 12:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table(
        "engines",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=255), nullable=False),
        sa.Column("tls_dir", sa.String(length=4096), nullable=True),
        sa.Column("engine_id", sa.String(length=128), nullable=False),
        sa.Column("added_by", sa.String(length=32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("engine", sa.String(length=32), server_default="local", nullable=False)
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("engine", sa.String(length=32), server_default="local", nullable=False)
        )
        batch_op.add_column(sa.Column("source_engine", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("source_engine")
        batch_op.drop_column("engine")
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("engine")
    op.drop_table("engines")
