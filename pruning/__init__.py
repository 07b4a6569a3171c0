"""fwdprune's engine: forward-only structured pruning of Hugging Face models.

    from pruning import prune
    report = prune(model="path/or/hub-id", data="calib.jsonl", sparsity=0.5, out_dir="out")

Torch is imported lazily, so `pruning.spec` (request validation) stays light for the API process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pruning.spec import PruneSpec

# transformers imports torchao when it is installed; torchao then warns about each optional C extension
# built for another torch, and torch about a deprecated registration torchao makes: noise on every run
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

if TYPE_CHECKING:
    from pruning.engine.api import prune
    from pruning.export.hf import load_pruned

__all__ = ["PruneSpec", "load_pruned", "prune"]


def __getattr__(name: str) -> Any:
    if name == "prune":
        from pruning.engine.api import prune

        return prune
    if name == "load_pruned":
        from pruning.export.hf import load_pruned

        return load_pruned
    raise AttributeError(name)
