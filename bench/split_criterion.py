"""Does bonsai's split search choose by a criterion that tracks dev perplexity, and what would it miss?

One bonsai run on pycoder-28m with `ls` compensation (the job's own settings); after its rounds, each of
a set of keep-vectors is scored two ways: the split search's criterion (loss on the last quarter of the
calibration set after an ls fit on the other three quarters) and the figure users see (dev perplexity
after the job's full ls fit). Candidates, all at the job's budget:

- `chosen`: what the job keeps (the search's pick);
- `grid`: the search's own attention fractions, units ranked within each kind by bonsai's importance
  (`imp`) and by the activation prior Σ‖x‖·‖W‖ of the dense model (`prior`), global widths;
- `even`: n KV groups removed from every layer (lowest importance there), MLP global or layer-uniform;
- `uniform`: the same fraction of each kind in every layer, ranked by the prior (wanda-sp's keep), by
  importance, and by blends of the two ranks (t = the prior's weight), also with global MLP widths;
- `obs`: wanda-sp's and the job's per-module unit counts, units chosen for the least-squares refit
  (structured OBS on the dense input Gram, as the search's refit-aware candidate).

    python -m bench.split_criterion --sparsity 0.2                      # full bonsai budget
    python -m bench.split_criterion --sparsity 0.2 --reduced --families grid,uniform

Prints one line per candidate and writes bench/results/split-criterion-<device>-<sparsity>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.quality import REPO, SHARED, budget, pycoder_inputs
from pruning.engine import stages
from pruning.methods.base import MethodContext
from pruning.methods.bonsai.options import BonsaiOptions
from pruning.methods.bonsai.split_search import (
    attention_fractions,
    held_out_loss,
    held_out_split,
    removed_attention_fraction,
)
from pruning.model.adapters.base import UnitKind
from pruning.spec import PruneSpec

Candidates = dict[str, torch.Tensor]
ATTN, MLP = UnitKind.ATTN, UnitKind.MLP


def grid_candidates(
    ctx: MethodContext, importance: torch.Tensor, prior: torch.Tensor, fractions: list[float]
) -> Candidates:
    space, alive = ctx.space, torch.ones(ctx.space.size, dtype=torch.bool)
    sparsity = ctx.target_params / float(space.params.sum())
    keeps = {}
    for fraction in fractions:
        for label, score in (("imp", importance), ("prior", prior)):
            keeps[f"{label} global attn={fraction:.3f}"] = ~ctx.selector.select_per_kind(
                score / space.params, alive, ctx.target_params, attention_ratio=fraction / sparsity
            )
    return keeps


def even_candidates(
    ctx: MethodContext, importance: torch.Tensor, prior: torch.Tensor, fractions: list[float]
) -> Candidates:
    space, alive = ctx.space, torch.ones(ctx.space.size, dtype=torch.bool)
    params, kind = space.params, space.kind
    groups = int(((space.layer == 0) & (kind == ATTN)).sum())
    keeps = {}
    for per_layer in range(1, groups):
        removed = torch.zeros(space.size, dtype=torch.bool)
        for layer in space.layer.unique().tolist():
            index = ((space.layer == layer) & (kind == ATTN)).nonzero().flatten()
            removed[index[torch.argsort(importance[index] / params[index], stable=True)[:per_layer]]] = True
        left = ctx.target_params - float(params[removed].sum())
        if left <= 0:
            continue
        for uniform in (False, True):
            mlp = ctx.selector.select(importance / params, alive & (kind == MLP), left, uniform=uniform)
            keeps[f"even{per_layer} attn, mlp {'uniform' if uniform else 'global'}"] = ~(removed | mlp)
    return keeps


def uniform_candidates(
    ctx: MethodContext, importance: torch.Tensor, prior: torch.Tensor, fractions: list[float]
) -> Candidates:
    space, alive = ctx.space, torch.ones(ctx.space.size, dtype=torch.bool)
    params, kind = space.params, space.kind

    def ranks(score: torch.Tensor) -> torch.Tensor:
        """[U] rank of each unit within its kind, scaled to [0, 1]."""
        out = torch.zeros(space.size, dtype=torch.float64)
        for k in UnitKind:
            index = (kind == k).nonzero().flatten()
            out[index] = score[index].argsort().argsort().double() / max(1, index.numel() - 1)
        return out

    select_per_kind = ctx.selector.select_per_kind
    keeps = {
        "wanda-sp (prior, uniform)": ~select_per_kind(prior / params, alive, ctx.target_params, uniform=True),
        "imp uniform": ~select_per_kind(importance / params, alive, ctx.target_params, uniform=True),
    }
    for t in (0.25, 0.5, 0.75):
        blend = (1 - t) * ranks(importance / params) + t * ranks(prior / params)
        keeps[f"blend t={t} uniform"] = ~select_per_kind(blend, alive, ctx.target_params, uniform=True)
        keeps[f"blend t={t} global, no attn"] = ~select_per_kind(
            blend, alive, ctx.target_params, attention_ratio=0.0
        )
    return keeps


def obs_candidates(
    ctx: MethodContext,
    importance: torch.Tensor,
    prior: torch.Tensor,
    fractions: list[float],
    chosen: torch.Tensor | None = None,
) -> Candidates:
    """Per-module unit counts of wanda-sp's pick and of the job's own, units within each module chosen for
    the refit (the engine's refit_aware_keep: structured OBS on the dense input Gram)."""
    assert ctx.refit is not None
    space, alive = ctx.space, torch.ones(ctx.space.size, dtype=torch.bool)
    references = {
        "uniform": ~ctx.selector.select_per_kind(prior / space.params, alive, ctx.target_params, uniform=True)
    }
    if chosen is not None:
        references["the job's counts"] = chosen
    # Grams of the whole calibration set, as the job exports the pick (the search judges it with the fit
    # sequences' Grams, so its held-out loss here is flattered; dev perplexity is not)
    return {
        f"refit-aware, {label}": ctx.refit.refit_aware_keep(reference)
        for label, reference in references.items()
    }


FAMILIES: dict[str, Callable[..., Candidates]] = {
    "grid": grid_candidates,
    "even": even_candidates,
    "uniform": uniform_candidates,
    "obs": obs_candidates,
}


def evaluate(ctx: MethodContext, keep: torch.Tensor, dev: torch.Tensor) -> dict[str, float]:
    """The search's held-out loss and the dev perplexity after the job's full ls fit, for one keep."""
    assert ctx.refit is not None
    held_out = held_out_loss(ctx, keep, *held_out_split(ctx.probe.calibration))
    ctx.refit.fit(keep)
    perplexity = ctx.probe.quality(keep, dev)["perplexity"]
    ctx.refit.clear()
    return {
        "attention_fraction": removed_attention_fraction(ctx.space, keep),
        "held_out_loss": held_out,
        "dev_perplexity": perplexity,
    }


def compare(
    ctx: MethodContext,
    result: Any,
    dev: torch.Tensor,
    families: list[str],
    split_candidates: int,
    rows: list[dict[str, Any]],
) -> None:
    """Score the job's pick and every candidate of `families` both ways, appending one row each."""
    fractions = attention_fractions(ctx.space, ctx.target_params, split_candidates)
    prior = ctx.probe.activation_prior(torch.ones(ctx.space.size, dtype=torch.bool))
    keeps = {"chosen": result.keep}
    for family in families:
        extra = {"chosen": result.keep} if family == "obs" else {}
        keeps |= FAMILIES[family](ctx, result.importance, prior, fractions, **extra)
    for name, keep in keeps.items():
        start = time.perf_counter()
        rows.append({"candidate": name, **evaluate(ctx, keep, dev)})
        print(
            f"{name:<32} attn {rows[-1]['attention_fraction']:.3f}  held-out loss "
            f"{rows[-1]['held_out_loss']:.4f}  dev ppl {rows[-1]['dev_perplexity']:.3f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--reduced", action="store_true", help="CPU-sized scoring budget (bench.quality's)")
    parser.add_argument(
        "--families", default="even,uniform", help=f"candidate families, of {sorted(FAMILIES)}"
    )
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = (
        args.out
        or REPO
        / "bench"
        / "results"
        / f"split-criterion-{device.replace(' ', '-').lower()}-{args.sparsity}.json"
    )
    rows: list[dict[str, Any]] = []
    common = budget(args.reduced)
    with tempfile.TemporaryDirectory() as work:
        spec = PruneSpec(
            out_dir=Path(work) / "out",
            method="bonsai",
            sparsity=args.sparsity,
            compensate="ls",
            options=common["options"],
            **{k: v for k, v in common.items() if k != "options"},
            **pycoder_inputs(args.shared, Path(work)),
        )
        run = stages.prepare(spec, lambda event: None)
        with run.installed():  # the job's own stages, with the comparison between scoring and compensation
            ctx = stages.method_context(run)
            result = run.method.run(ctx)
            compare(
                ctx,
                result,
                run.subject.data.evaluation,
                [f for f in args.families.split(",") if f],
                BonsaiOptions.model_validate(spec.options).split_candidates,
                rows,
            )
            stages.compensate(run, result.keep)
            job_perplexity = stages.evaluate(run, result.keep).figures["perplexity"]
    dense = run.dense.figures["perplexity"]
    for row in rows:
        row["ratio"] = row["dev_perplexity"] / dense
    out.parent.mkdir(parents=True, exist_ok=True)
    # `chosen` re-fitted here must match the job's own figure: the comparison measures what users get
    print(f"job perplexity {job_perplexity:.3f}, chosen here {rows[0]['dev_perplexity']:.3f}")
    out.write_text(
        json.dumps(
            {
                "device": device,
                "sparsity": args.sparsity,
                "budget": common,
                "dense_perplexity": dense,
                "job_perplexity": job_perplexity,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
