"""Forward passes that measure loss: per-replica calibration loss for scoring, perplexity for reports.

Logits are never materialised for the whole batch: the final hidden states go through the LM head in
row chunks, so a 128k vocabulary does not dominate memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pruning.adapters.base import FamilyAdapter

LOGITS_CHUNK_BYTES = 256 * 2**20


@dataclass
class ForwardCounter:
    passes: int = 0
    tokens: int = 0


class LossRunner:
    """Runs the model (with whatever hooks are installed) and returns next-token losses."""

    def __init__(self, model: Any, adapter: FamilyAdapter, device: torch.device) -> None:
        self.model, self.adapter, self.device = model, adapter, device
        self.counter = ForwardCounter()

    @torch.inference_mode()
    def token_nll(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [N, T] -> [N, T-1] float32 negative log-likelihood of each next token."""
        ids = ids.to(self.device, non_blocking=True)
        hidden = self.adapter.backbone(self.model)(input_ids=ids, use_cache=False).last_hidden_state
        self.counter.passes += 1
        self.counter.tokens += ids.numel()
        head = self.adapter.lm_head(self.model)
        n, t = ids.shape
        vocab = int(head.weight.shape[0])  # type: ignore[index]
        rows = max(1, LOGITS_CHUNK_BYTES // (4 * t * vocab))
        nll = torch.empty(n, t - 1, dtype=torch.float32, device=ids.device)
        for start in range(0, n, rows):
            logits = head(hidden[start : start + rows, :-1]).float()  # [rows, T-1, V]
            targets = ids[start : start + rows, 1:]
            nll[start : start + rows] = F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="none"
            ).view(targets.shape)
        return nll

    def replica_losses(self, ids: torch.Tensor, replicas: int) -> torch.Tensor:
        """ids: [B, T] replicated R times (one mask per replica) -> [R] mean loss per replica."""
        nll = self.token_nll(ids.repeat(replicas, 1))  # [R*B, T-1]
        return nll.view(replicas, -1).mean(1).double().cpu()

    def mean_loss(self, ids: torch.Tensor, batch_size: int) -> float:
        """Mean next-token loss over all sequences of ids [N, T], `batch_size` sequences at a time."""
        total, count = 0.0, 0
        for start in range(0, ids.shape[0], batch_size):
            nll = self.token_nll(ids[start : start + batch_size])
            total += float(nll.double().sum())
            count += nll.numel()
        return total / count

    def perplexity(self, ids: torch.Tensor, batch_size: int) -> float:
        return math.exp(min(self.mean_loss(ids, batch_size), 700.0))
