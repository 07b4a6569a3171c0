"""Jobs say what hardware they need (`gpus`, `min_gpu_memory_bytes`), and workers resolve the model: the
stored inputs name the model as it was asked for instead of a path on the API's host.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JOBS = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("request", sa.JSON),
    sa.column("resolved", sa.JSON),
    sa.column("gpus", sa.Integer),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gpus", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("min_gpu_memory_bytes", sa.BigInteger, nullable=True))
    connection = op.get_bind()
    rows = connection.execute(sa.select(JOBS.c.id, JOBS.c.request, JOBS.c.resolved)).all()
    for job_id, request, resolved in rows:
        values: dict[str, Any] = {}
        if "model" in request:
            # a queued job must still run: its worker now resolves the name, not a path chosen at submit
            values["resolved"] = {**resolved, "model": request["model"]}
        if isinstance(request.get("gpus"), int):
            values["gpus"] = request["gpus"]
        if values:
            connection.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(**values))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("min_gpu_memory_bytes")
        batch.drop_column("gpus")
