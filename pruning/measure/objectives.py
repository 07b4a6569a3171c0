"""Objectives: the loss each sub-model is scored by, and the quality figures the report gives.

- `lm`: next-token loss of a causal LM; quality is perplexity.
- `distill`: distance from the dense model on the same input. Causal LMs: KL(dense ‖ pruned) of the
  next-token distributions. Encoders: 1 − cosine of the mean-pooled embeddings; quality is that cosine.

The dense reference of a batch is computed once, with the masks suspended, and cached. Logits are never
materialised for the whole batch: hidden states go through the LM head in row chunks, so a 128k
vocabulary does not dominate memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pruning.errors import UsageError
from pruning.model.adapters.base import FamilyAdapter
from pruning.model.masking import UnitMasks

LOGITS_CHUNK_BYTES = 256 * 2**20


@dataclass
class ForwardCounter:
    passes: int = 0
    tokens: int = 0
    listener: Callable[[int], None] | None = None  # told the tokens of every forward pass

    def count(self, tokens: int) -> None:
        self.passes += 1
        self.tokens += tokens
        if self.listener is not None:
            self.listener(tokens)


class Objective:
    """Runs the model (with whatever hooks are installed) and turns its output into losses."""

    name = "base"

    def __init__(
        self,
        model: Any,
        adapter: FamilyAdapter,
        device: torch.device,
        masks: UnitMasks,
        scoring_dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.adapter, self.device, self.masks = model, adapter, device, masks
        # sub-models (and the ls fits' layer passes) run under autocast to this dtype (bf16-mixed)
        self.scoring_dtype = scoring_dtype
        self.counter = ForwardCounter()
        self._reference: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [N, T] -> [N, T, D] final hidden states."""
        ids = ids.to(self.device, non_blocking=True)
        out = self.adapter.backbone(self.model)(input_ids=ids, use_cache=False).last_hidden_state
        self.counter.count(ids.numel())
        return out

    def run(self, ids: torch.Tensor) -> None:
        """A forward pass for its side effects (statistics hooks)."""
        self.hidden(ids)

    def sequence_losses(self, ids: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """[N] loss of each sequence; `reference` is the dense model's output for `ids` (or None)."""
        raise NotImplementedError

    def reference(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The dense model's output for `ids`, computed once with the masks suspended."""
        key = (ids.data_ptr(), tuple(ids.shape))
        if key not in self._reference:
            with self.masks.suspended():
                self._reference[key] = self.dense_output(ids)
        return self._reference[key]

    def dense_output(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def replica_losses(self, ids: torch.Tensor, replicas: int) -> torch.Tensor:
        """ids: [B, T] replicated R times (one mask per replica) -> [R] mean loss per replica."""
        reference = self.reference(ids)
        if reference is not None:
            reference = reference.repeat(replicas, *([1] * (reference.dim() - 1)))
        with self.scoring_precision():
            losses = self.sequence_losses(ids.repeat(replicas, 1), reference)  # [R*B]
        return losses.view(replicas, -1).mean(1).double().cpu()

    def scoring_precision(self) -> AbstractContextManager[Any]:
        """Autocast to `scoring_dtype` for the sub-models' forwards (and the `ls` fits' layer passes),
        while the regression, the fits' moments and solves, and the evaluations stay fp32."""
        return autocast_to(self.device, self.scoring_dtype)

    def mean_loss(self, ids: torch.Tensor, batch_size: int) -> float:
        """Mean loss over all sequences of ids [N, T], `batch_size` sequences at a time."""
        losses = [self.sequence_losses(batch, self.reference(batch)) for batch in _batches(ids, batch_size)]
        return float(torch.cat(losses).double().mean())

    def quality(self, ids: torch.Tensor, batch_size: int) -> dict[str, float]:
        raise NotImplementedError


class NextTokenLoss(Objective):
    """`lm`: mean next-token negative log-likelihood; quality is perplexity."""

    name = "lm"

    def reference(self, ids: torch.Tensor) -> torch.Tensor | None:
        return None

    def token_logits(self, ids: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """(row slice, [rows, T-1, V] float32 logits) chunks, so the full logits never coexist."""
        hidden = self.hidden(ids)
        head = self.adapter.lm_head(self.model)
        n, t = ids.shape
        vocab = int(head.weight.shape[0])  # type: ignore[index]
        rows = max(1, LOGITS_CHUNK_BYTES // (4 * t * vocab))
        for start in range(0, n, rows):
            with torch.inference_mode():
                yield slice(start, start + rows), head(hidden[start : start + rows, :-1]).float()

    def token_nll(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [N, T] -> [N, T-1] float32 negative log-likelihood of each next token."""
        ids = ids.to(self.device)
        nll = torch.empty(ids.shape[0], ids.shape[1] - 1, dtype=torch.float32, device=ids.device)
        for rows, logits in self.token_logits(ids):
            # a model spread across GPUs computes its logits on the head's, not the input's
            targets = ids[rows, 1:].to(logits.device)
            nll[rows] = (
                F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                .view(targets.shape)
                .to(nll.device)
            )
        return nll

    def sequence_losses(self, ids: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        return self.token_nll(ids).mean(1)

    def quality(self, ids: torch.Tensor, batch_size: int) -> dict[str, float]:
        return {"perplexity": math.exp(min(self.mean_loss(ids, batch_size), 700.0))}


class LogitDistillation(NextTokenLoss):
    """`distill` for causal LMs: KL(dense ‖ pruned) per token, averaged; quality is still perplexity."""

    name = "distill"

    def reference(self, ids: torch.Tensor) -> torch.Tensor | None:
        return Objective.reference(self, ids)

    def dense_output(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, T-1, V] dense log-probabilities, kept in bf16 on the device to halve their memory."""
        chunks = [F.log_softmax(logits, -1).to(torch.bfloat16) for _, logits in self.token_logits(ids)]
        return torch.cat(chunks)

    def sequence_losses(self, ids: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        assert reference is not None
        kl = torch.empty(ids.shape[0], dtype=torch.float32, device=reference.device)
        for rows, logits in self.token_logits(ids.to(self.device)):
            dense = reference[rows].float()
            pruned = F.log_softmax(logits, -1)
            kl[rows] = (dense.exp() * (dense - pruned)).sum(-1).mean(-1)
        return kl

    def quality(self, ids: torch.Tensor, batch_size: int) -> dict[str, float]:
        nll = [NextTokenLoss.sequence_losses(self, batch, None) for batch in _batches(ids, batch_size)]
        return {"perplexity": math.exp(min(float(torch.cat(nll).double().mean()), 700.0))}


class EmbeddingDistillation(Objective):
    """`distill` for encoders: 1 − cosine between pruned and dense mean-pooled embeddings."""

    name = "distill"

    def embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, D] mean over tokens (packed sequences carry no padding), float32."""
        return self.hidden(ids).float().mean(1)

    def dense_output(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(ids)

    def sequence_losses(self, ids: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        assert reference is not None
        return 1.0 - F.cosine_similarity(self.embeddings(ids), reference, dim=-1)

    def quality(self, ids: torch.Tensor, batch_size: int) -> dict[str, float]:
        cosines = torch.cat(
            [1.0 - self.sequence_losses(b, self.reference(b)) for b in _batches(ids, batch_size)]
        )
        return {"embedding_cosine": float(cosines.mean()), "embedding_cosine_min": float(cosines.min())}


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Autocast to `dtype` on `device`'s type, or nothing where `dtype` is None (run as loaded)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_objective(
    name: str | None,
    model: Any,
    adapter: FamilyAdapter,
    device: torch.device,
    masks: UnitMasks,
    scoring_dtype: torch.dtype | None = None,
) -> Objective:
    """`lm` is the default for causal LMs; encoders have no next-token loss and always distill."""
    if not adapter.causal_lm:
        if name == "lm":
            raise UsageError(f"{adapter.name} models have no next-token loss; use objective 'distill'")
        return EmbeddingDistillation(model, adapter, device, masks, scoring_dtype)
    if name == "distill":
        return LogitDistillation(model, adapter, device, masks, scoring_dtype)
    return NextTokenLoss(model, adapter, device, masks, scoring_dtype)


def _batches(ids: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [ids[start : start + size] for start in range(0, ids.shape[0], size)]
