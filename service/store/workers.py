"""Workers: their rows and heartbeats, stamped with the store's lease clock.

On PostgreSQL that is the database server's clock, one for every host. SQLite has no server: its
`julianday('now')` is the clock of the process that asks, so a process whose clock lags would stamp
heartbeats that look old to the others, and its live jobs would be reaped. So on SQLite a heartbeat is
stamped with the later of the process's clock and the latest heartbeat any worker stamped (`_lease_now`):
the stamps follow the most advanced clock among the workers, a worker behind it stamps as fresh a time
as the others, and a worker ahead of it sees theirs no older than its own last one. Skew then never
gets a live worker reaped; it delays the reaping of a dead one by up to the lead of the clock furthest
ahead, and the worker whose clock lags is told so (`heartbeat` returns the lag).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.orm import aliased

from service.store.base import StoreBase
from service.store.tables import WorkerRow


class WorkerQueries(StoreBase):
    def _lease_now(self) -> ColumnElement[float]:
        """The time a heartbeat is stamped with: the database's clock on PostgreSQL; on SQLite the later of
        this process's clock and the latest heartbeat stamped (see the module's docstring)."""
        if self.postgresql:
            return self.now
        others = aliased(WorkerRow)  # an alias, so the subquery is never correlated with the row updated
        latest = select(func.coalesce(func.max(others.heartbeat_at), 0.0)).scalar_subquery()
        return func.max(self.now, latest)  # SQLite's max() of several arguments: the largest

    def heartbeat(self, row: WorkerRow) -> float:
        """Create or refresh the worker's row, its heartbeat time the store's lease clock (`_lease_now`),
        not `row`'s. Returns by how many seconds the stamp is ahead of this process's clock: on SQLite,
        how far another worker's clock leads this one's (0 on PostgreSQL, and without skew)."""
        values = {"hostname": row.hostname, "pid": row.pid, "slots": row.slots, "info": row.info}
        stamp = self._lease_now()
        with self.session() as s, s.begin():
            # one statement reads the latest stamp and writes this one: no read before the write lock
            result = s.execute(
                update(WorkerRow).where(WorkerRow.id == row.id).values(heartbeat_at=stamp, **values)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                # only this worker writes its row, so no one can insert it between the UPDATE and here
                s.execute(
                    insert(WorkerRow).values(id=row.id, started_at=self.now, heartbeat_at=stamp, **values)
                )
            lead = s.execute(select(WorkerRow.heartbeat_at - self.now).where(WorkerRow.id == row.id))
            return max(0.0, float(lead.scalar_one()))

    def remove_worker(self, worker_id: str) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))

    def workers(self) -> Sequence[WorkerRow]:
        with self.session() as s:
            return s.scalars(select(WorkerRow)).all()

    def live_workers(self, timeout_s: float) -> Sequence[WorkerRow]:
        """Workers with a heartbeat younger than `timeout_s`, by the store's clock (this process's, on
        SQLite)."""
        with self.session() as s:
            return s.scalars(select(WorkerRow).where(WorkerRow.heartbeat_at >= self.now - timeout_s)).all()
