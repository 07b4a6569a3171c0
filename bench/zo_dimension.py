"""How many more steps a forward-only (SPSA) fit of a linear map needs than a gradient fit, from the
map's own calibration activations.

Fitting a map W [out, in] to targets by least squares has the Hessian H = Σ_x ⊗ I_out, Σ_x = XᵀX/n the
second moment of the map's input. On a quadratic, one SPSA step with a Gaussian direction at its best
learning rate lowers the loss by |g|² / (2 (tr H + 2λ_max)), a gradient step at 1/λ_max by |g|² / (2 λ_max):
SPSA needs about d_eff = tr(H)/λ_max(H) = out · tr(Σ_x)/λ_max(Σ_x) times the steps (Malladi et al. 2023
call it the loss's effective rank). A `local` window fits in tens of Adam steps, so a window's SPSA fit
needs tens of times d_eff steps.

    python -m bench.zo_dimension --models pycoder,smollm2

Prints a row per map and the median per model; writes bench/results/zo-dimension.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.host import describe
from bench.quality import MODELS, SHARED

REPO = Path(__file__).resolve().parents[1]


def input_moments(model: Any, ids: Any) -> dict[str, Any]:
    """name -> Σ XᵀX [in, in] (float64) of the input of every linear map inside the decoder blocks."""
    import torch

    moments: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def add(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()  # [tokens, in]
            moments[name] = moments.get(name, 0) + x.T @ x

        return add

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return moments


def dimension_rows(model: Any, moments: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    rows = []
    for name, moment in moments.items():
        eigenvalues = torch.linalg.eigvalsh(moment)
        spread = float(eigenvalues.sum() / eigenvalues.max())  # tr(Σ_x) / λ_max(Σ_x)
        out = model.get_submodule(name).out_features
        rows.append({"map": name, "out": out, "input_spread": spread, "d_eff": out * spread})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="pycoder")
    parser.add_argument("--sequences", type=int, default=16, help="calibration sequences of 256 tokens")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "zo-dimension.json")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pruning.model.data import load_calibration

    result: dict[str, Any] = {"host": {**describe(), "threads": torch.get_num_threads()}, "models": {}}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as work:
            inputs = MODELS[name](args.shared, Path(work))
            model = AutoModelForCausalLM.from_pretrained(inputs["model"], dtype=torch.float32).eval()
            tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
            ids = load_calibration(tokenizer, inputs["data"], 256, args.sequences, 1).calibration
            rows = dimension_rows(model, input_moments(model, ids))
        median = statistics.median(row["d_eff"] for row in rows)
        result["models"][name] = {"sequences": int(ids.shape[0]), "median_d_eff": median, "maps": rows}
        for row in rows:
            print(f"{name:<8} {row['map']:<36} out {row['out']:>5} spread {row['input_spread']:>6.1f} "
                  f"d_eff {row['d_eff']:>8.0f}")  # fmt: skip
        print(f"{name}: median d_eff {median:.0f} over {len(rows)} maps", flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
