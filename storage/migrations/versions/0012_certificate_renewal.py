"""A certificate's renewal kept in the database: its next attempt, failures in a row, why it
stopped; and whether HAProxy still has to be given it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 10:00:00.000000

"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# services/traffic/renewals.py's window when this was written: a third of the lifetime, at
# most 30 days
_MOST = timedelta(days=30)


def upgrade() -> None:
    """Upgrade schema."""

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("renew_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("renew_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("renew_stopped", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("push_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_certificates_renew_at"), ["renew_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_certificates_push_at"), ["push_at"], unique=False)
    _schedule_acme()


def _schedule_acme() -> None:
    """The ACME certificates there are renewed when their window opens."""
    table = sa.table(
        "certificates",
        sa.column("domain", sa.String),
        sa.column("source", sa.String),
        sa.column("not_before", sa.DateTime(timezone=True)),
        sa.column("not_after", sa.DateTime(timezone=True)),
        sa.column("renew_at", sa.DateTime(timezone=True)),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(table.c.domain, table.c.not_before, table.c.not_after).where(
            table.c.source == "acme"
        )
    ).all()
    for domain, not_before, not_after in rows:
        not_before, not_after = _aware(not_before), _aware(not_after)
        renew_at = not_after - min((not_after - not_before) / 3, _MOST)
        bind.execute(table.update().where(table.c.domain == domain).values(renew_at=renew_at))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_push_at"))
        batch_op.drop_index(batch_op.f("ix_certificates_renew_at"))
        batch_op.drop_column("push_at")
        batch_op.drop_column("renew_stopped")
        batch_op.drop_column("renew_failures")
        batch_op.drop_column("renew_at")
