from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class EventPublic(BaseModel):
    seq: int
    created_at: datetime
    type: str
    data: dict[str, Any]


class EventList(BaseModel):
    data: list[EventPublic]
    next_after: int
