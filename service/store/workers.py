"""Workers: their rows and heartbeats, stamped with the database's clock (one clock for every host)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select, update

from service.db import WorkerRow
from service.store.base import StoreBase


class WorkerQueries(StoreBase):
    def heartbeat(self, row: WorkerRow) -> None:
        """Create or refresh the worker's row; its heartbeat time is the database's clock, not `row`'s."""
        values = {"hostname": row.hostname, "pid": row.pid, "slots": row.slots, "info": row.info}
        with self.session() as s, s.begin():
            result = s.execute(
                update(WorkerRow).where(WorkerRow.id == row.id).values(heartbeat_at=self.now, **values)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                # only this worker writes its row, so no one can insert it between the UPDATE and here
                s.execute(
                    insert(WorkerRow).values(id=row.id, started_at=self.now, heartbeat_at=self.now, **values)
                )

    def remove_worker(self, worker_id: str) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))

    def workers(self) -> Sequence[WorkerRow]:
        with self.session() as s:
            return s.scalars(select(WorkerRow)).all()

    def live_workers(self, timeout_s: float) -> Sequence[WorkerRow]:
        """Workers with a heartbeat younger than `timeout_s`, by the database's clock."""
        with self.session() as s:
            return s.scalars(select(WorkerRow).where(WorkerRow.heartbeat_at >= self.now - timeout_s)).all()
