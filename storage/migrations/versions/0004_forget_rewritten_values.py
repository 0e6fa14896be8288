"""jobs' results forget the values of rewritten variables

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 08:35:00.000000

Results written before rewrites lost their values kept each variable's old and new value
(``DATABASE_URL=postgres://app:PASSWORD@prod_db_1/app``). Nothing shows them any more; this
removes them from the database too, keeping the node and variable names.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("result", sa.JSON))
_VALUES = ("old", "new")


def upgrade() -> None:
    """Drop ``old`` and ``new`` from every rewrite of every job's result."""
    bind = op.get_bind()
    rows = bind.execute(sa.select(_jobs.c.id, _jobs.c.result).where(_jobs.c.result.is_not(None)))
    for job_id, result in rows.all():
        if (scrubbed := _scrubbed(result)) is not None:
            bind.execute(_jobs.update().where(_jobs.c.id == job_id).values(result=scrubbed))


def downgrade() -> None:
    """The values are gone for good: nothing to restore."""


def _scrubbed(result: Any) -> dict[str, Any] | None:
    """The result without rewritten values, or None when it held none."""
    if not isinstance(result, dict) or not isinstance(result.get("rewrites"), list):
        return None
    rewrites = result["rewrites"]
    if not any(isinstance(r, dict) and set(_VALUES) & set(r) for r in rewrites):
        return None
    kept = [
        {k: v for k, v in r.items() if k not in _VALUES} if isinstance(r, dict) else r
        for r in rewrites
    ]
    return {**result, "rewrites": kept}
