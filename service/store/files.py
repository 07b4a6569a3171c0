"""Uploaded files: rows naming what storage holds, and the rule that a file an unfinished job reads stays."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db import FileRow, JobRow
from service.store.base import ACTIVE, StoreBase, visible_to


class FileInUse(Exception):
    """An unfinished job reads the file."""


class FileQueries(StoreBase):
    def add_file(self, row: FileRow) -> FileRow:
        with self.session() as s, s.begin():
            s.add(row)
        return row

    def get_file(self, file_id: str, owner: str | None) -> FileRow | None:
        with self.session() as s:
            row = s.get(FileRow, file_id)
        return visible_to(row, owner)

    def list_files(self, owner: str | None) -> Sequence[FileRow]:
        query = select(FileRow).order_by(FileRow.created_at.desc(), FileRow.id)
        if owner is not None:
            query = query.where(FileRow.owner == owner)
        with self.session() as s:
            return s.scalars(query).all()

    @staticmethod
    def _jobs_reading(s: Session, file_id: str) -> bool:
        jobs = s.scalars(select(JobRow).where(JobRow.status.in_(("queued", *ACTIVE)))).all()
        return any(file_id in (j.request.get("calibration_file"), j.request.get("eval_file")) for j in jobs)

    def file_in_use(self, file_id: str) -> bool:
        """Whether an unfinished job reads this file (it must not vanish under the job)."""
        with self.session() as s:
            return self._jobs_reading(s, file_id)

    def delete_file(self, file_id: str) -> bool:
        """Delete the file's row unless an unfinished job reads it; False (nothing deleted) if one does.
        The DELETE comes first so that it and a concurrent `create_job` naming the file serialise on the
        row (PostgreSQL) or the write lock (SQLite): whichever commits second sees the other."""
        try:
            with self.session() as s, s.begin():
                s.execute(delete(FileRow).where(FileRow.id == file_id))
                if self._jobs_reading(s, file_id):
                    raise FileInUse(file_id)  # rolls the DELETE back
        except FileInUse:
            return False
        return True
