from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pruning.spec import Method, Precision

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
MetadataValue = str | int | float | bool | None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255,
                       description="a model name under the server's models dir, or a Hub id in its cache")
    calibration_file: str = Field(min_length=1, max_length=64)
    eval_file: str | None = Field(default=None, max_length=64)
    target_sparsity: float = Field(gt=0.0, le=0.9)
    method: Method = "bonsai"
    precision: Precision = "auto"
    uniform: bool = False
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    seq_len: int | None = Field(default=None, ge=8, le=8192, description="tokens per calibration sequence")
    num_samples: int | None = Field(default=None, ge=1, le=100000, description="calibration sequences")
    eval_samples: int | None = Field(default=None, ge=1, le=100000, description="held-out sequences")
    options: dict[str, Any] = Field(default_factory=dict, description="method options (see METHOD_OPTIONS)")
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        if len(value) > 32 or any(len(k) > 64 or (isinstance(v, str) and len(v) > 512) for k, v in value.items()):
            raise ValueError("metadata holds at most 32 keys of 64 characters with values of 512 characters")
        return value


class Progress(BaseModel):
    stage: str | None = None
    round: int | None = None
    rounds: int | None = None
    fraction: float | None = None
    eta_s: float | None = None


class JobError(BaseModel):
    code: str
    message: str | None = None


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress
    request: JobCreate
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    metadata: dict[str, Any]


class JobList(BaseModel):
    data: list[JobPublic]
    has_more: bool
    next_after: str | None = None


class ArtifactPublic(BaseModel):
    name: str
    bytes: int
    sha256: str


class ArtifactList(BaseModel):
    data: list[ArtifactPublic]
