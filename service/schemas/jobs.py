from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from pruning.spec import Device, PruneSettings, PruneSpec

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
MetadataValue = str | int | float | bool | None
# a revision as git and the Hub name it: a branch, tag or commit, or a ref such as refs/pr/1; components
# that start with a letter, digit or `_`, and none of git's forbidden `..` or `.lock` endings
REVISION = re.compile(
    r"(?!.*\.\.)(?!.*\.lock(?:/|$))[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*(?<!\.)"
)


class JobInputs(BaseModel):
    """Where a job's model and files are on the server, resolved at submit time; never shown to users."""

    model: str  # the model's name as asked for; the worker that runs the job resolves it
    revision: str | None = None  # the Hub revision to resolve it at
    data: str  # the calibration file's storage key (files/<id><suffix>)
    eval_data: str | None = None
    recovery_data: str | None = None


class JobCreate(PruneSettings):
    """A job as submitted: the pruning settings shared with the library and the CLI
    (`pruning.spec.PruneSettings`), the model by name, the uploaded files, and the caller's metadata."""

    model: str = Field(
        min_length=1,
        max_length=255,
        description="a model name under the server's models dir, or a Hub id in its cache",
    )
    revision: str | None = Field(
        default=None,
        max_length=128,
        description="a Hub id's git revision: branch, tag or commit (default: main); a model in the "
        "models dir has none",
    )
    # the fields naming an uploaded file, each with the JobInputs field that holds where it is stored
    FILE_FIELDS: ClassVar[dict[str, str]] = {
        "calibration_file": "data",
        "eval_file": "eval_data",
        "recovery_file": "recovery_data",
    }

    calibration_file: str = Field(min_length=1, max_length=64, description="id of an uploaded file")
    eval_file: str | None = Field(default=None, max_length=64, description="id of an uploaded held-out file")
    recovery_file: str | None = Field(
        default=None, max_length=64, description="id of an uploaded file the recovery trains on"
    )
    min_gpu_memory_gib: float | None = Field(
        default=None,
        gt=0,
        le=65536,
        description="each of the job's GPUs must have at least this much memory in total, in GiB, as the "
        "driver reports it (often a little under the card's nominal size); such a job runs on a GPU",
    )
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @field_validator("revision")
    @classmethod
    def _git_revision(cls, value: str | None) -> str | None:
        if value is not None and not REVISION.fullmatch(value):
            raise ValueError("revision must be a git branch, tag or commit (letters, digits, ._-/)")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        if len(value) > 32 or any(
            len(k) > 64 or (isinstance(v, str) and len(v) > 512) for k, v in value.items()
        ):
            raise ValueError("metadata holds at most 32 keys of 64 characters with values of 512 characters")
        return value

    def file_ids(self) -> dict[str, str]:
        """The uploaded files the job reads: field name to file id, for the fields that name one."""
        return {field: file_id for field in self.FILE_FIELDS if (file_id := getattr(self, field)) is not None}

    def to_spec(
        self,
        model_dir: Path,
        data: Path,
        eval_data: Path | None,
        out_dir: Path,
        device: Device,
        recovery_data: Path | None = None,
    ) -> PruneSpec:
        """The engine's request for this job: its settings, with the worker's local paths and device."""
        return PruneSpec(
            **self.common_settings(),
            model=str(model_dir),
            data=data,
            eval_data=eval_data,
            recovery_data=recovery_data,
            out_dir=out_dir,
            device=device,
        )


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
