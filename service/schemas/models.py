"""What `GET /v1/models` answers: the models this server can prune, as a job names them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ModelSource = Literal["models_dir", "hub_cache"]


class ModelPublic(BaseModel):
    id: str = Field(description="the name a job's `model` gives: a models-dir entry, or a Hub id")
    source: ModelSource = Field(description="the server's models dir, or its Hugging Face cache")
    revision: str | None = Field(
        default=None, description="a Hub id's cached revision: the ref it is listed at (main when cached)"
    )
    model_type: str | None = Field(default=None, description="config.json's model_type")
    family: str | None = Field(default=None, description="the engine's family for that model_type")
    parameters: int | None = Field(
        default=None, description="parameters the safetensors weights hold (read from their headers)"
    )
    supported: bool = Field(description="whether the engine can prune this checkpoint")
    reason: str | None = Field(default=None, description="why it cannot, when it cannot")


class ModelList(BaseModel):
    data: list[ModelPublic]
