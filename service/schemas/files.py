from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class FileCreate(BaseModel):
    """What an upload carries besides its bytes (the multipart `file` field)."""

    filename: str = Field(max_length=255)


class FilePublic(BaseModel):
    id: str
    filename: str
    bytes: int
    sha256: str
    created_at: datetime


class FileList(BaseModel):
    data: list[FilePublic]
    has_more: bool
    next_after: str | None = None
