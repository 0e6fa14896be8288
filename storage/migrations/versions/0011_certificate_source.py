"""Where a certificate came from: a person ("manual") or an ACME server ("acme", renewed)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), server_default="manual", nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_column("source")
