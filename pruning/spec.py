"""What a pruning job asks for: one set of validated settings for every entry point, with no torch import.

`PruneSettings` holds every setting of how to prune. The library and the CLI add where the model and data
are, where the output goes and which device runs it (`PruneSpec`); the HTTP service adds the names of
uploaded files and the job's metadata (`service.schemas.jobs.JobCreate`); both CLIs generate their
options from `PruneSettings`' fields. The API process validates job requests with these models before
anything touches a GPU, so this module must stay importable without torch or transformers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pruning.export.formats import EXPORTERS, exporter_for
from pruning.methods.registered import METHOD_OPTIONS, MethodOptions, options_for

Precision = Literal["auto", "int8", "int8-weight-only", "fp8", "bf16-mixed", "bf16", "fp16", "fp32"]
Device = Literal["auto", "cuda", "cpu"]
Compensation = Literal["auto", "none", "bias", "ls"]
ObjectiveName = Literal["lm", "distill"]
Budget = Literal["auto", "fast", "standard", "thorough"]
Recovery = Literal["none", "distill", "zo", "local", "local-zo", "local+distill"]
GgufType = Literal["f32", "f16", "bf16", "q8_0"]

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(value: object) -> object:
    """Seconds from "90", "90s", "10m", "1h30m" (numbers pass through); anything else is left for the
    field's own validation to refuse."""
    if not isinstance(value, str):
        return value
    match = _DURATION.match(value)
    if match is None or not any(match.groups()):
        return value
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return 3600 * hours + 60 * minutes + seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def split_sizes(value: object) -> object:
    """A list of sizes from "0.2,0.35,0.5" (how a command line writes one); anything else as given."""
    if isinstance(value, str) and "," in value:
        return [part.strip() for part in value.strip("[]").split(",") if part.strip()]
    return value


Sparsity = Annotated[float, Field(gt=0.0, le=0.9)]
MAX_SIZES = 16  # each size costs its own search, compensation, evaluation and export

# Tokens the recovery stage trains on, by budget (recover_tokens overrides): on a CPU `fast`'s keep a job
# with recovery within about twice the job without it (docs/quality.md, "Recovery").
RECOVERY_TOKENS: dict[str, int] = {"fast": 1 << 16, "standard": 1 << 20, "thorough": 1 << 22}


def resolve_budget(asked: str, device_type: str) -> str:
    """`auto`: the standard budget on a GPU, the fast one on a CPU, where a forward costs 10-100x more."""
    if asked != "auto":
        return asked
    return "standard" if device_type == "cuda" else "fast"


def choices(registry: Iterable[str]) -> str:
    """'a', 'b' or 'c': a registry's names as pydantic lists a choice's."""
    quoted = [f"'{name}'" for name in registry]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def one_of(registry: Iterable[str]) -> Callable[[dict[str, Any]], None]:
    """A field's JSON schema `enum`, the registry's names when the schema is made (registered ones too)."""

    def add_enum(schema: dict[str, Any]) -> None:
        schema["enum"] = list(registry)

    return add_enum


class PruneSettings(BaseModel):
    """How to prune: every setting a job can ask for, however it is submitted (library, CLI, HTTP).

    `options` is validated by the chosen method's options model and holds the options as given, with
    their values converted to the option's type.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sparsity: Annotated[
        Sparsity | Annotated[list[Sparsity], Field(min_length=1, max_length=MAX_SIZES)],
        BeforeValidator(split_sizes),
    ] = Field(
        description="fraction of prunable parameters to remove, or a list of fractions: one scoring run, "
        "one checkpoint per size (in sparsity-<fraction>/) and a summary of the size/quality curve"
    )
    method: str = Field(
        "bonsai", description="how units are scored", json_schema_extra=one_of(METHOD_OPTIONS)
    )
    precision: Precision = Field(
        "auto",
        description="weights while scoring; auto: int8 (bitsandbytes) on CUDA, fp32 on a CPU; bf16-mixed: "
        "fp32 weights, the sub-models, the ls fits' layer passes and the recovery's training under bf16 "
        "autocast (fast where the CPU has AMX), the regression, moments, solves and evaluations in fp32; "
        "int8-weight-only and fp8 (rowwise, CUDA 8.9+) need torchao (the export is always the original "
        "precision)",
    )
    uniform: bool = Field(False, description="remove the same number of units from every layer")
    export_format: str = Field(
        "hf",
        description="; ".join(f"{name}: {exporter.description}" for name, exporter in EXPORTERS.items()),
        json_schema_extra=one_of(EXPORTERS),
    )
    gguf_type: GgufType = Field(
        "f16", description="gguf: how the file stores matrices (vectors stay f32); q8_0: 8.5 bits a weight"
    )
    seq_len: int = Field(256, ge=8, le=8192, description="tokens per packed calibration sequence")
    num_samples: int = Field(
        64, ge=1, le=100000, description="calibration sequences (prior, scoring, compensation)"
    )
    eval_samples: int = Field(16, ge=1, le=100000, description="held-out sequences for perplexity")
    # wider than any model's MLP (one unit per layer); a larger number would only overflow torch's integers
    mlp_block: int | None = Field(
        None, ge=1, le=1 << 20, description="MLP channels per unit; default by model size"
    )
    mlp_multiple_of: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="keep every layer's MLP width a multiple of this many channels (kernel tiles, e.g. "
        "64 or 128; a layer may still lose its MLP whole), chosen so by the selection, not rounded after",
    )
    kv_multiple_of: int | None = Field(
        None,
        ge=1,
        le=64,
        description="keep every layer's KV-group count a multiple of this (a tensor-parallel degree; a "
        "layer may still lose its attention whole)",
    )
    unit_kinds: list[Literal["attn", "mlp", "expert"]] | None = Field(
        None,
        min_length=1,
        description="the kinds of unit that may be removed: attn (KV groups), mlp (MLP channels), expert "
        "(the experts of a mixture of experts); default: every kind the model has",
    )
    objective: ObjectiveName | None = Field(
        None, description="lm: next-token loss (default for causal LMs); distill: distance to the dense model"
    )
    compensate: Compensation = Field(
        "auto",
        description="bias: add removed channels' mean output to the output bias; ls: least-squares refit of "
        "the output projections, layer by layer, toward the dense model's outputs; auto: ls when the "
        "calibration set has 8 tokens per channel, else the method's own",
    )
    compensation_ridge: float = Field(
        0.1,
        gt=0.0,
        le=1e6,
        description="ls: pull toward the original weights, relative to the mean activation energy",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of every random choice")
    budget: Budget = Field(
        "auto",
        description="bonsai's scoring effort: fast, standard or thorough; auto: standard on a GPU, "
        "fast on a CPU",
    )
    time_limit: Duration | None = Field(
        None,
        gt=0,
        le=30 * 24 * 3600,
        description="end the whole job within this time (e.g. 10m, 90s, 1h30m): bonsai's sub-models per "
        "round are sized from the measured throughput",
    )
    max_time: Duration | None = Field(
        None,
        gt=0,
        le=30 * 24 * 3600,
        description="end the whole job within this time, without stretching it to fill it (as time_limit "
        "does): where the measured pace says bonsai's sub-models would not fit, its rounds score fewer and "
        "its split search judges fewer candidates; a job with time to spare runs as it would without it",
    )
    recover: Recovery = Field(
        "none",
        description="after compensation, fit the kept weights toward the dense model, merged into the "
        "exported weights: local refits each block, in forward order, to reproduce the dense block's output "
        "from the pruned model's own input (one block in memory at a time, no LM head); distill trains "
        "low-rank adapters on the kept linear maps toward the dense model's next-token distribution (the "
        "dense teacher is the same loaded weights with the masks off), zo the same with zeroth-order steps "
        "(two forward passes a step, no backward: the memory of scoring); local-zo fits local's blocks with "
        "such steps (forward-only, far slower to move); local+distill runs local, then "
        "distill on top; each is rolled back if it makes held-out loss worse",
    )
    recover_tokens: int | None = Field(
        None,
        ge=256,
        le=1 << 32,
        description="tokens the recovery trains on (default: the budget's); with a time limit it also "
        "stops when the job's time is up",
    )
    recover_time: Duration | None = Field(
        None,
        gt=0,
        le=7 * 24 * 3600,
        description="stop the recovery's training after this long (e.g. 10m), whatever its tokens",
    )
    recover_rank: int = Field(16, ge=1, le=1024, description="rank of the recovery's adapters")
    recover_lr: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="recovery's peak learning rate (warm-up, then cosine decay); default 1e-3 for "
        "local-zo and distill, 5e-5 for zo; local's is a fraction of each map's weight RMS, default 0.02",
    )
    recover_lm_weight: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="weight of the next-token loss added to the recovery's KL to the dense model",
    )
    gpus: int | None = Field(
        None,
        ge=1,
        le=64,
        description="GPUs the job runs on: bonsai's sub-models are scored on one replica of the model per "
        "GPU (torch.distributed), and a model too large for one GPU is spread across them; default: one "
        "GPU where the worker has any, else the CPU",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="method options, e.g. rounds=2 (see METHOD_OPTIONS)"
    )

    @field_validator("method", "export_format")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        registry = METHOD_OPTIONS if info.field_name == "method" else EXPORTERS
        if name not in registry:
            raise ValueError(f"Input should be {choices(registry)}")
        return name

    @field_validator("sparsity")
    @classmethod
    def _distinct_sizes(cls, sparsity: float | list[float]) -> float | list[float]:
        """Several sizes ascending; a list of one is the single size it names (a single-size job's layout)."""
        if isinstance(sparsity, float):
            return sparsity
        if len(set(sparsity)) != len(sparsity):
            raise ValueError("each sparsity may be asked for once")
        return sparsity[0] if len(sparsity) == 1 else sorted(sparsity)

    @property
    def targets(self) -> list[float]:
        """The sizes asked for, ascending (one for a single size)."""
        return self.sparsity if isinstance(self.sparsity, list) else [self.sparsity]

    @property
    def several_sizes(self) -> bool:
        return isinstance(self.sparsity, list)

    @field_validator("options")
    @classmethod
    def _valid_for_the_method(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method is None:  # the method itself is invalid; that error is reported instead
            return options
        try:
            validated = options_for(method).model_validate(options)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{method} option {where}: {first['msg']}") from None
        return validated.model_dump(include=set(options))

    @model_validator(mode="after")
    def _time_limit_sizes_the_rounds(self) -> PruneSettings:
        if self.time_limit is not None and "samples_per_round" in self.options:
            raise ValueError(
                "time_limit sizes samples_per_round from the measured throughput; set one or the other"
            )
        return self

    @model_validator(mode="after")
    def _time_limit_within_max_time(self) -> PruneSettings:
        if self.time_limit is not None and self.max_time is not None and self.time_limit > self.max_time:
            raise ValueError("time_limit is the time the job fills: it cannot be longer than max_time")
        return self

    @property
    def time_bound_s(self) -> float | None:
        """The seconds the job must end within: time_limit (which it fills), else max_time (a ceiling)."""
        return self.time_limit if self.time_limit is not None else self.max_time

    @model_validator(mode="after")
    def _carried_by_the_export_format(self) -> PruneSettings:
        exporter_for(self.export_format).refuse_settings(self)
        return self

    def recovery_tokens(self, budget: str) -> int:
        """Tokens the recovery trains on: as asked, else the budget's."""
        return self.recover_tokens or RECOVERY_TOKENS.get(budget, RECOVERY_TOKENS["standard"])

    def method_options(self, budget: str | None = None) -> MethodOptions:
        """The method's options: those given, over `budget`'s (`MethodOptions.budgets`) over the defaults."""
        options = options_for(self.method)
        preset = options.budgets.get(budget or "auto", {})
        if "samples_per_round" in self.options:  # an explicit count is the count, whatever the model
            preset = {k: v for k, v in preset.items() if k != "samples_per_unit"}
        return options.model_validate({**preset, **self.options})

    def common_settings(self) -> dict[str, Any]:
        """The settings every entry point shares (the `PruneSettings` fields), without what one adds."""
        return self.model_dump(include=set(PruneSettings.model_fields))


class PruneSpec(PruneSettings):
    """Everything `pruning.prune` needs: the settings, the inputs, the output and the device."""

    model: str = Field(description="local checkpoint directory or a Hub id in the local cache")
    data: Path = Field(description="calibration text: .jsonl with a `text` field per line, or .txt")
    eval_data: Path | None = Field(
        None, description="held-out text; default: the sequences of `data` after the calibration ones"
    )
    recovery_data: Path | None = Field(
        None,
        description="text the recovery trains on (.jsonl or .txt); default: the calibration file, "
        "without the held-out sequences",
    )
    out_dir: Path = Field(description="where the compact checkpoint and its report are written")
    device: Device = Field("auto", description="auto: CUDA when available, else the CPU")

    @model_validator(mode="after")
    def _recovery_data_for_a_recovery(self) -> PruneSpec:
        if self.recovery_data is not None and self.recover == "none":
            raise ValueError(RECOVERY_TEXT_WITHOUT_RECOVERY.format(field="recovery_data"))
        return self


RECOVERY_TEXT_WITHOUT_RECOVERY = (
    "{field} is text for the recovery to train on, and recover is none: set recover to a recovery method, "
    "or leave {field} out"
)
