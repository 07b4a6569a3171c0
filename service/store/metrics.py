"""What the metrics endpoint reads: jobs by status, and run times of finished jobs."""

from __future__ import annotations

from sqlalchemy import func, select

from service.store.base import STATUSES, TERMINAL, StoreBase
from service.store.tables import JobRow


class MetricQueries(StoreBase):
    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    def finished_since(self, after: float | None) -> list[tuple[str, float, float]]:
        """(id, finished_at, run seconds) of finished jobs that ran, finished after `after` (None: all)."""
        query = select(JobRow.id, JobRow.started_at, JobRow.finished_at).where(
            JobRow.status.in_(TERMINAL), JobRow.started_at.is_not(None), JobRow.finished_at.is_not(None)
        )
        if after is not None:
            query = query.where(JobRow.finished_at > after)
        with self.session() as s:
            rows = s.execute(query.order_by(JobRow.finished_at)).all()
        return [
            (job_id, float(end), float(end) - float(start))
            for job_id, start, end in rows
            if start is not None and end is not None
        ]
