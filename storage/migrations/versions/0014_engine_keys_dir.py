"""An engine's folder holds its TLS files or its SSH key: ``engines.tls_dir`` is now
``keys_dir``

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 17:00:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    with op.batch_alter_table("engines", schema=None) as batch_op:
        batch_op.alter_column("tls_dir", new_column_name="keys_dir")


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("engines", schema=None) as batch_op:
        batch_op.alter_column("keys_dir", new_column_name="tls_dir")
