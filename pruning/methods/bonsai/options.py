"""Bonsai's options and its named scoring budgets, torch-free: the API validates a job's options through
them at submit (`pruning.methods.options`), and the service's limits take their bounds from them."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from pruning.methods.options import MethodOptions, register_options

# Named scoring budgets: bonsai options that differ from BonsaiOptions' defaults (`standard`). Scoring
# tokens = rounds x samples_per_round x scoring_sequences x seq_len: at seq_len 256, fast 49k over 192
# sub-models (the prior measured on 16 sequences, and a search among the rounds' split, the prior's pick
# and the refit-aware choice only: each candidate costs a least-squares fit), standard 5.2M, thorough
# 10.5M. docs/cli.md ("Budgets") has their cost and quality; explicit options override them.
BUDGETS: dict[str, dict[str, Any]] = {
    # one sequence per sub-model: what a round's sequences share drops out of the regression, so the
    # same forward tokens buy twice the sub-models (docs/quality.md, "Twice the sub-models")
    "fast": {
        "rounds": 3,
        "samples_per_round": 64,
        "scoring_sequences": 1,
        "prior_sequences": 16,
        "split_candidates": 0,
    },
    "standard": {"samples_per_unit": 0.5},
    "thorough": {"samples_per_round": 1024, "samples_per_unit": 1.0},
}


@register_options("bonsai")
class BonsaiOptions(MethodOptions):
    """Perturbative scoring (Dery et al. 2024). docs/quality.md has the measurements behind each default."""

    budgets: ClassVar[dict[str, dict[str, Any]]] = BUDGETS

    rounds: int = Field(5, ge=1, le=64, description="pruning rounds; each removes a slice of the budget")
    samples_per_round: int = Field(
        512, ge=4, le=16384, description="sub-models evaluated per round (antithetic pairs)"
    )
    samples_per_unit: float | None = Field(
        None,
        gt=0.0,
        le=8.0,
        description="sub-models per round at least this many times the model's prunable units (the "
        "standard and thorough budgets grow with the model; the engine scores at most 16384 a round)",
    )
    drop_fraction: float = Field(
        0.2, gt=0.0, lt=0.5, description="expected fraction of remaining units dropped per sub-model"
    )
    # strong enough for the least-squares refit that follows by default; weaker suits no compensation
    ridge: float = Field(1.0, gt=0.0, le=1e6, description="strength of the pull toward the activation prior")
    prior_bias: float = Field(
        0.0, ge=0.0, le=4.0, description="how strongly sampling favours dropping low-prior units"
    )
    # 8 keeps a 7B int8 model's scoring under 10 GiB of GPU memory for little throughput
    masks_per_forward: int = Field(8, ge=1, le=1024, description="sub-models evaluated per forward pass")
    scoring_sequences: int = Field(
        8, ge=1, le=4096, description="calibration sequences each sub-model is scored on"
    )
    kind_split: Literal["search", "importance", "proportional"] = Field(
        "search",
        description="importance: attention and MLP units compete on one ranking; proportional: each kind "
        "loses the same fraction of its parameters, units ranked within their kind; search: as importance, "
        "then the attention/MLP split (and the activation prior's layer-uniform pick) chosen by held-out "
        "calibration loss after compensation",
    )
    split_candidates: int = Field(
        7,
        ge=0,
        le=64,
        description="search: attention fractions tried besides the rounds' own split and the prior's pick",
    )
    refit_aware: bool = Field(
        True,
        description="search with ls compensation: also try the best split with each module's units chosen "
        "for the refit (structured OBS on its input Gram), kept if its held-out loss is lower",
    )
    split_finalists: int | None = Field(
        None,
        ge=1,
        le=64,
        description="search with ls compensation: judge every candidate with a one-shot refit from the "
        "dense input Grams they share, then only the best this many with the job's sequential refit; "
        "unset: every candidate with the sequential refit",
    )
    split_fit_sequences: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="search: calibration sequences each candidate's refit is fitted on before it is "
        "judged on the held-out quarter; default: the other three quarters (the job's final refit always "
        "fits all of them)",
    )
    prior_sequences: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="calibration sequences the activation prior is measured on; default: all of them",
    )
