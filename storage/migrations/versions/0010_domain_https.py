"""HTTPS of custom domains: the redirect of plain HTTP, and HSTS (a domain's, as its certificate)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table(
        "domain_https",
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("redirect", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("hsts_max_age", sa.Integer(), nullable=True),
        sa.Column("changed_by", sa.String(length=32), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )


def downgrade() -> None:
    """Downgrade schema."""

    op.drop_table("domain_https")
