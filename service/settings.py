"""Typed service settings (env prefix FWDPRUNE_), failing closed: no API key means no server."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pruning.methods.bonsai.options import BonsaiOptions
from pruning.methods.options import field_bounds
from pruning.spec import MAX_SIZES, Device, Duration, PruneSettings


class SettingsError(ValueError):
    """The configuration is unsafe or incomplete; the server must not start."""


def hash_key(key: str) -> str:
    """Keys are kept and compared only as sha256 digests, so a leaked database or log holds no key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _split_keys(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
S3_URL_FORM = "FWDPRUNE_STORAGE_URL must look like s3://bucket or s3://bucket/prefix"


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of an s3:// storage URL, the prefix without its slashes. The URL is never echoed in
    the error: one written as s3://key:secret@bucket would put a credential in a log."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or parts.query or parts.fragment or "@" in parts.netloc:
        raise SettingsError(f"{S3_URL_FORM}; endpoint and credentials come from the AWS_* variables")
    if not S3_BUCKET.fullmatch(parts.netloc):
        raise SettingsError(f"{S3_URL_FORM}, its bucket name 3-63 lowercase letters, digits, '.' or '-'")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise SettingsError(f"{S3_URL_FORM}, its prefix without empty, '.' or '..' parts")
    return parts.netloc, prefix


LIMITS_ENV = "FWDPRUNE_JOB_LIMITS__"
# bonsai's options that size a job's work, checked with the budget's values where the job sets none
OPTION_LIMITS = (
    "rounds",
    "samples_per_round",
    "samples_per_unit",
    "scoring_sequences",
    "masks_per_forward",
    "split_candidates",
    "prior_sequences",
)
SETTING_LIMITS = ("seq_len", "num_samples", "eval_samples", "gpus")


def job_bounds(name: str) -> dict[str, Any]:
    return field_bounds(PruneSettings, name)


def bonsai_bounds(name: str) -> dict[str, Any]:
    return field_bounds(BonsaiOptions, name)


class JobLimits(BaseModel):
    """The largest job this server takes: upper bounds on every setting that sizes a job's work, checked
    when it is submitted. The engine's own bounds are what a library user may ask; these are the
    operator's, tighter. Set all as JSON (`FWDPRUNE_JOB_LIMITS='{"rounds": 8}'`) or one at a time
    (`FWDPRUNE_JOB_LIMITS__ROUNDS=8`); the others keep their defaults."""

    model_config = ConfigDict(extra="forbid")

    # each bound is the engine's own (`PruneSettings`, `BonsaiOptions`): a limit is a default within it
    sizes: int = Field(
        8, ge=1, le=MAX_SIZES, description="sparsities in one job: each is its own search and export"
    )
    seq_len: int = Field(4096, **job_bounds("seq_len"), description="tokens per calibration sequence")
    num_samples: int = Field(2048, **job_bounds("num_samples"), description="calibration sequences")
    eval_samples: int = Field(512, **job_bounds("eval_samples"), description="held-out sequences")
    gpus: int = Field(8, **job_bounds("gpus"), description="GPUs one job may ask for")
    rounds: int = Field(16, **bonsai_bounds("rounds"), description="bonsai rounds")
    samples_per_round: int = Field(
        4096, **bonsai_bounds("samples_per_round"), description="bonsai sub-models per round"
    )
    samples_per_unit: float = Field(
        2.0,
        **bonsai_bounds("samples_per_unit"),
        description="bonsai sub-models per round per prunable unit of the model",
    )
    scoring_sequences: int = Field(
        64, **bonsai_bounds("scoring_sequences"), description="sequences each sub-model is scored on"
    )
    masks_per_forward: int = Field(
        64, **bonsai_bounds("masks_per_forward"), description="sub-models per forward pass (memory)"
    )
    split_candidates: int = Field(
        16, **bonsai_bounds("split_candidates"), description="split-search candidates (a refit each)"
    )
    prior_sequences: int = Field(
        4096, **bonsai_bounds("prior_sequences"), description="activation-prior sequences"
    )

    def exceeded(self, job: PruneSettings) -> list[tuple[list[str | int], str]]:
        """(where in the request, why) for each limit `job` is over; empty when it fits."""
        found: list[tuple[list[str | int], str]] = []
        if len(job.targets) > self.sizes:
            found.append((["body", "sparsity"], self._message("sizes", len(job.targets), "sparsities")))
        for name in SETTING_LIMITS:
            value = getattr(job, name)
            if value is not None and value > getattr(self, name):
                found.append((["body", name], self._message(name, value)))
        for name in OPTION_LIMITS:
            found += self._option_exceeded(job, name)
        return found

    def _option_exceeded(self, job: PruneSettings, name: str) -> list[tuple[list[str | int], str]]:
        limit = getattr(self, name)
        if name in job.options:
            value = job.options[name]
            over = value is not None and value > limit
            return [(["body", "options", name], self._message(name, value))] if over else []
        # the value the job's budget gives it; `auto` is the fast or the standard budget, by device
        budgets = ("fast", "standard") if job.budget == "auto" else (job.budget,)
        for budget in budgets:
            value = getattr(job.method_options(budget), name, None)
            if value is not None and value > limit:
                why = self._message(name, value, f"the {budget} budget's {name}")
                return [(["body", "budget"], why)]
        return []

    def _message(self, name: str, value: object, what: str | None = None) -> str:
        return (
            f"{what or name} {value} is more than this server allows: at most {getattr(self, name)} "
            f"({LIMITS_ENV}{name.upper()})"
        )


class Settings(BaseSettings):
    # FWDPRUNE_JOB_LIMITS__ROUNDS=8 sets one field of job_limits
    model_config = SettingsConfigDict(env_prefix="FWDPRUNE_", env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="open HTTP connections the API keeps at once; one more is answered 503 and closed at "
        "once; default: a quarter of the process's open-file limit (RLIMIT_NOFILE), at most 10000",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="how long a connection may take to send a request's head (line and headers), from "
        "its opening (or its previous response plus keep_alive_timeout_s), before it is closed",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="how long an idle connection is kept open between requests"
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="largest request head (line and headers) the API reads"
    )
    data_dir: Path = Path(".fwdprune-data")
    models_dir: Path = Path("models")
    hf_cache_dir: Path | None = Field(
        default=None, description="Hugging Face hub cache; default: huggingface_hub's"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite under data_dir"
    )
    # NoDecode: a comma-separated env value, not JSON.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    insecure_no_auth: bool = False
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    max_request_bytes: int = Field(
        default=1024 * 1024, ge=1, description="body limit of every request but an upload (JSON bodies)"
    )
    max_line_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, description="longest .jsonl line (one record) an upload may hold"
    )
    storage_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix: uploads and artifacts in an S3-compatible object store, its "
        "endpoint and credentials from the AWS_* variables; default: files under data_dir",
    )
    storage_presign: bool = Field(
        default=False,
        description="S3: an artifact download answers 307 to a presigned URL of the object (on the "
        "AWS_ENDPOINT_URL host, which clients must then be able to reach)",
    )
    storage_presign_expiry_s: int = Field(
        default=300, ge=1, le=7 * 24 * 3600, description="how long a presigned URL stays valid"
    )
    embedded_worker: bool = True
    worker_slots: int | None = Field(
        default=None, ge=1, description="concurrent jobs per worker; default: GPU count or 1"
    )
    device: Device = "auto"
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_timeout_s: float = Field(
        default=30.0, gt=0, description="a worker silent this long is presumed dead"
    )
    cancel_grace_s: float = Field(default=10.0, ge=0, description="SIGTERM→SIGKILL grace for cancelled jobs")
    poll_interval_s: float = Field(default=0.5, gt=0)
    public_metrics: bool = Field(
        default=False, description="show /metrics and /readyz details without an admin key"
    )
    store_retry_attempts: int = Field(
        default=8, ge=1, description="tries of a worker's store call before the tick gives up on it"
    )
    store_retry_max_wait_s: float = Field(
        default=10.0, gt=0, description="longest pause between those tries (exponential backoff)"
    )
    store_busy_timeout_s: float = Field(
        default=30.0, gt=0, description="SQLite: how long one statement waits for another writer's lock"
    )
    store_retry_window_s: float = Field(
        default=120.0,
        gt=0,
        description="how long a job process retries (with backoff) a store write the job cannot go "
        "without before it gives the job back to the queue; progress updates are dropped instead",
    )
    sweep_interval_s: float = Field(
        default=3600.0, gt=0, description="how often the API removes what interrupted uploads left"
    )
    sweep_grace_s: float = Field(
        default=3600.0,
        gt=0,
        description="how long a leftover upload (a temporary file, a stored file no row names) is left "
        "alone before a sweep removes it; an upload in flight is never that old",
    )
    check_models_on_submit: bool = Field(
        default=True,
        description="resolve a job's model when it is submitted and refuse one this host cannot find or "
        "does not support; off where workers hold models the API's host does not (the worker resolves "
        "the model either way, and fails the job with model_not_found or unsupported_model)",
    )
    allow_model_download: bool = Field(
        default=False,
        description="workers: fetch a Hub model missing from the HF cache (default: only what is cached)",
    )
    max_job_seconds: Duration = Field(
        default=6 * 3600,
        gt=0,
        le=30 * 24 * 3600,
        description="the longest a job may run (seconds, or 90m, 6h): a job asking for a longer time_limit "
        "is refused at submit, and a job process still running its time bound plus job_grace_s after it "
        "started is killed (time_limit_exceeded)",
    )
    job_grace_s: Duration | None = Field(
        default=None,
        ge=0,
        le=30 * 24 * 3600,
        description="workers: how long past its time bound (its time_limit or max_time, at most "
        "max_job_seconds) a job process may run before it is killed; default: a tenth of the bound, at "
        "least a minute",
    )
    max_job_memory_bytes: int | None = Field(
        default=None,
        ge=1 << 20,
        description="workers: the most resident memory one job's processes may hold together before they "
        "are killed (memory_limit_exceeded); default: 80% of the host's memory divided by the worker's slots",
    )
    job_limits: JobLimits = Field(
        default_factory=JobLimits, description="upper bounds on the settings that size a job's work"
    )
    max_queued_jobs_per_key: int = Field(
        default=100,
        ge=1,
        description="queued jobs one API key may have waiting; a submit past it is refused with 429 and "
        "Retry-After (jobs that have started do not count)",
    )
    max_stored_bytes_per_key: int = Field(
        default=4 * 1024**3,
        ge=1,
        description="bytes of uploaded files and published checkpoints one API key may keep; an upload "
        "past it, or a new job while they fill it, is refused with 413 until the key deletes files or jobs",
    )

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_keys(value)

    @field_validator("storage_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fwdprune.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def s3_location(self) -> tuple[str, str] | None:
        """(bucket, prefix) with S3 storage, None with files under data_dir; SettingsError if malformed."""
        return None if self.storage_url is None else parse_s3_url(self.storage_url)

    def all_user_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as err:
                raise SettingsError(
                    f"cannot read FWDPRUNE_API_KEYS_FILE {self.api_keys_file}: {err}"
                ) from err
            keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return keys

    def key_hashes(self) -> dict[str, bool]:
        """sha256(key) -> is_admin, for every accepted key."""
        hashes = {hash_key(key): False for key in self.all_user_keys()}
        hashes.update({hash_key(key): True for key in self.admin_keys})
        return hashes

    def check_serve(self) -> None:
        """Refuse to serve without authentication unless explicitly told to, or with a malformed storage
        URL (fail closed)."""
        if not self.key_hashes() and not self.insecure_no_auth:
            raise SettingsError(
                "no API key configured: set FWDPRUNE_API_KEYS, FWDPRUNE_API_KEYS_FILE or "
                "FWDPRUNE_ADMIN_KEYS, "
                "or pass --insecure-no-auth for a local, trusted setup"
            )
        for key in self.all_user_keys() + list(self.admin_keys):
            if len(key) < 16:
                raise SettingsError("API keys must be at least 16 characters long")
        if self.storage_url is not None:  # a malformed one stops the server before it takes an upload
            parse_s3_url(self.storage_url)

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.files_dir, self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)
