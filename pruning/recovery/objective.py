"""What recovery minimises: the KL divergence from the dense model's next-token distribution to the
pruned one's, per token, optionally plus the next-token loss. The dense teacher is the same loaded
weights with the masks suspended (no unit removed, no correction or adapter added), so one copy of the
weights serves both.

Under `bf16-mixed` the forwards (teacher's and student's, LM head included) run under bf16 autocast, where
the CPU or GPU computes bf16 faster; the adapters, their gradients and the loss stay in fp32.

Logits are never materialised for a whole batch: hidden states go through the LM head in row chunks, and
the student's gradient flows back through the final hidden states once, after every chunk has added its
part (`backward`), so a 128k vocabulary costs one chunk of logits at a time.

The student's blocks run checkpointed while it trains: each keeps only its input for the backward pass
and runs again inside it, so a step holds one block's activations instead of every block's (the masks',
corrections' and adapters' hooks included) for one more forward pass of the student.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pruning.measure.objectives import autocast_to
from pruning.model.adapters import FamilyAdapter
from pruning.model.masking import UnitMasks

# float32 logits of one chunk of rows: the KL holds about seven tensors of that size at once (both
# log-softmaxes, the teacher's probabilities, their difference, the product, the gradient), so chunks
# of a sequence or so keep them small beside the activations the backward pass keeps
LOGITS_CHUNK_BYTES = 32 * 2**20


@dataclass
class DistillationLoss:
    """KL(dense ‖ pruned) per token (+ `lm_weight` × next-token loss) of `model` on a batch of ids."""

    model: Any
    adapter: FamilyAdapter
    masks: UnitMasks
    device: torch.device
    lm_weight: float = 0.0
    autocast: torch.dtype | None = None  # the forwards' dtype under autocast (bf16-mixed); None: as loaded
    checkpointed: bool = True  # the student's blocks recompute their activations in the backward pass

    def precision(self) -> AbstractContextManager[Any]:
        return autocast_to(self.device, self.autocast)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T, D] final hidden states of the model as hooked now (grad as the caller's mode)."""
        with self.precision():
            return self.adapter.backbone(self.model)(input_ids=ids, use_cache=False).last_hidden_state

    def teacher_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T, D] the dense model's final hidden states: masks, corrections and adapters stand down."""
        with torch.no_grad(), self.masks.suspended():
            return self.hidden(ids)

    def chunks(self, ids: torch.Tensor) -> list[slice]:
        head_weight: torch.Tensor = self.adapter.lm_head(self.model).weight  # type: ignore[assignment]
        vocab = int(head_weight.shape[0])
        rows = max(1, LOGITS_CHUNK_BYTES // (4 * ids.shape[1] * vocab))
        return [slice(start, start + rows) for start in range(0, ids.shape[0], rows)]

    def chunk_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor, rows: slice
    ) -> torch.Tensor:
        """Summed loss over the next-token positions of rows `rows`: student, teacher [B, T, D]."""
        head = self.adapter.lm_head(self.model)
        with self.precision():
            student_logits = head(student[rows, :-1])
        pruned = F.log_softmax(student_logits.float(), dim=-1)  # [c, T-1, V]
        with torch.no_grad(), self.precision():
            dense = F.log_softmax(head(teacher[rows, :-1]).float(), dim=-1)
        loss = (dense.exp() * (dense - pruned)).sum()
        if self.lm_weight:
            targets = ids[rows, 1:].to(pruned.device)
            loss = loss + self.lm_weight * F.nll_loss(
                pruned.flatten(0, 1), targets.flatten(), reduction="sum"
            )
        return loss

    def value(self, ids: torch.Tensor, teacher: torch.Tensor | None = None) -> float:
        """The mean loss per token on `ids` [B, T], without gradients (the teacher's hidden states
        reused when given)."""
        ids = ids.to(self.device)
        teacher = self.teacher_hidden(ids) if teacher is None else teacher
        with torch.no_grad():
            student = self.hidden(ids)
            total = sum(float(self.chunk_loss(student, teacher, ids, rows)) for rows in self.chunks(ids))
        return total / _positions(ids)

    def backward(self, ids: torch.Tensor) -> float:
        """Accumulate the gradient of the mean loss per token on `ids` [B, T] into the trainable
        parameters; returns the loss."""
        ids = ids.to(self.device)
        teacher = self.teacher_hidden(ids)
        layers = self.adapter.layers(self.model) if self.checkpointed else []
        with torch.enable_grad(), checkpointed(layers):
            hidden = self.hidden(ids)
            leaf = hidden.detach().requires_grad_(True)  # the chunks' gradients gather here
            total = 0.0
            for rows in self.chunks(ids):
                loss = self.chunk_loss(leaf, teacher, ids, rows) / _positions(ids)
                loss.backward()
                total += float(loss.detach())
            hidden.backward(leaf.grad)
        return total


@contextmanager
def checkpointed(layers: list[nn.Module]) -> Iterator[None]:
    """While open, each of `layers` saves only its inputs for the backward pass and recomputes its
    activations there (non-reentrant checkpointing: its hooks run again, to the same effect). A forward
    already set on the instance (accelerate's device hooks set one) is wrapped and put back after."""
    own = [vars(layer).get("forward") for layer in layers]
    try:
        for layer in layers:
            layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
        yield
    finally:
        for layer, forward in zip(layers, own, strict=True):
            if forward is None:
                vars(layer).pop("forward", None)  # back to the class's forward
            else:
                layer.forward = forward


def _positions(ids: torch.Tensor) -> int:
    """Next-token positions of a batch: every token but each sequence's last."""
    return ids.shape[0] * (ids.shape[1] - 1)
