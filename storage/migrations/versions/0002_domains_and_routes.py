"""domains and routes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:32:34.271438

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table(
        "domains",
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["environment_id"], ["environments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("domain"),
    )
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_domains_environment_id"), ["environment_id"], unique=False
        )

    op.create_table(
        "routes",
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("primary_id", sa.Integer(), nullable=False),
        sa.Column("secondary_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("sticky", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["primary_id"], ["environments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["secondary_id"], ["environments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("domain"),
    )


def downgrade() -> None:
    """Downgrade schema."""

    op.drop_table("routes")
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_domains_environment_id"))

    op.drop_table("domains")
