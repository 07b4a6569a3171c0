"""Uploaded files: rows naming what storage holds, each key's stored bytes (its files and its published
checkpoints) within its quota, and the rule that a file an unfinished job reads stays."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from service.schemas.jobs import JobCreate
from service.store.base import UNFINISHED, StoreBase, lock_owner, visible_to
from service.store.tables import FileRow, JobRow


class FileInUse(Exception):
    """An unfinished job reads the file."""


class StoredBytesExceeded(Exception):
    """The key's files and published checkpoints would hold more bytes than it may keep."""

    def __init__(self, stored: int, limit: int) -> None:
        super().__init__(
            f"this key's files and published checkpoints hold {stored} bytes of the {limit} it may keep"
        )
        self.stored, self.limit = stored, limit


class FileQueries(StoreBase):
    def add_file(self, row: FileRow, *, max_stored_bytes: int | None = None) -> FileRow:
        """Insert `row`; StoredBytesExceeded (and nothing inserted) if the owner's files would then hold
        more than `max_stored_bytes`. Counted after the insert, under the owner's lock: concurrent uploads
        of one key never pass the bound together."""
        with self.session() as s, s.begin():
            lock_owner(s, row.owner)
            s.add(row)
            s.flush()
            if max_stored_bytes is not None:
                stored = self._stored_bytes(s, row.owner)
                if stored > max_stored_bytes:
                    raise StoredBytesExceeded(stored - row.bytes, max_stored_bytes)  # rolls the row back
        return row

    def stored_bytes(self, owner: str) -> int:
        """The bytes `owner` keeps: its uploaded files and the checkpoints its jobs published."""
        with self.session() as s:
            return self._stored_bytes(s, owner)

    @staticmethod
    def _stored_bytes(s: Session, owner: str) -> int:
        """Its files' bytes and its succeeded jobs' artifacts' (they stay stored until the job is
        deleted); the artifact lists are summed here, the same on SQLite and PostgreSQL."""
        files = select(func.coalesce(func.sum(FileRow.bytes), 0)).where(FileRow.owner == owner)
        published = select(JobRow.artifacts).where(
            JobRow.owner == owner, JobRow.status == "succeeded", JobRow.artifacts.is_not(None)
        )
        checkpoints = sum(
            int(artifact.get("bytes") or 0)
            for artifacts in s.scalars(published)
            for artifact in artifacts or ()
            if isinstance(artifact, dict)
        )
        return int(s.execute(files).scalar_one()) + checkpoints

    def file_paths(self) -> set[str]:
        """The storage key (or, for a file from before keys, the path) of every file a row names."""
        with self.session() as s:
            return set(s.scalars(select(FileRow.path)).all())

    def get_file(self, file_id: str, owner: str | None) -> FileRow | None:
        with self.session() as s:
            row = s.get(FileRow, file_id)
        return visible_to(row, owner)

    def list_files(
        self, owner: str | None, *, limit: int = 50, after: str | None = None
    ) -> tuple[Sequence[FileRow], bool]:
        """Newest first; `after` is the id of the last file of the previous page. Returns (files,
        has_more). An `after` that names no file of `owner`'s (none at all, or another key's) gives an
        empty page: another key's id answers as one that names nothing."""
        query = select(FileRow).order_by(FileRow.created_at.desc(), FileRow.id).limit(limit + 1)
        if owner is not None:
            query = query.where(FileRow.owner == owner)
        with self.session() as s:
            if after is not None:
                mine = () if owner is None else (FileRow.owner == owner,)
                cursor = s.execute(
                    select(FileRow.created_at, FileRow.id).where(FileRow.id == after, *mine)
                ).first()
                if cursor is None:
                    return [], False
                created_at, file_id = cursor
                query = query.where(
                    or_(
                        FileRow.created_at < created_at,
                        and_(FileRow.created_at == created_at, FileRow.id > file_id),
                    )
                )
            rows = s.scalars(query).all()
        return rows[:limit], len(rows) > limit

    @staticmethod
    def _jobs_reading(s: Session, file_id: str) -> bool:
        """Whether an unfinished job names the file, asked in SQL (the request's JSON, read in place)."""
        reads = or_(*(JobRow.request[field].as_string() == file_id for field in JobCreate.FILE_FIELDS))
        query = select(JobRow.id).where(JobRow.status.in_(UNFINISHED), reads).limit(1)
        return s.execute(query).first() is not None

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
