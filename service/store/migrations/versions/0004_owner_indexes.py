"""Indexes for per-key questions the store now asks on every submit and claim: a key's queued or running
jobs, oldest first (the queue quota, and the job a fair claim takes), and when its last job started.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_owner_status_seq", "jobs", ["owner", "status", "seq"])
    op.create_index("ix_jobs_owner_started_at", "jobs", ["owner", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_started_at", table_name="jobs")
    op.drop_index("ix_jobs_owner_status_seq", table_name="jobs")
