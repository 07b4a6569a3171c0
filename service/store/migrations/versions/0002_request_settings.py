"""Stored job requests take the shared settings' names: `target_sparsity` becomes `sparsity`, and unset
`seq_len` / `num_samples` / `eval_samples` (null) take the settings' defaults by being left out.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JOBS = sa.table("jobs", sa.column("id", sa.String), sa.column("request", sa.JSON))
DEFAULTED = ("seq_len", "num_samples", "eval_samples")


def _rewrite(rename: tuple[str, str], drop_nulls: tuple[str, ...]) -> None:
    connection = op.get_bind()
    for job_id, request in connection.execute(sa.select(JOBS.c.id, JOBS.c.request)).all():
        updated: dict[str, Any] = {k: v for k, v in request.items() if not (k in drop_nulls and v is None)}
        old, new = rename
        if old in updated:
            updated[new] = updated.pop(old)
        if updated != request:
            connection.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(request=updated))


def upgrade() -> None:
    _rewrite(("target_sparsity", "sparsity"), DEFAULTED)


def downgrade() -> None:
    _rewrite(("sparsity", "target_sparsity"), ())
