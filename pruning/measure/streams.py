"""The calibration set's hidden states carried layer by layer through the dense model and the pruned one
side by side, so that one layer at a time can be fitted to reproduce the dense model from the pruned
model's own input (the `ls` refit, the `local` recovery)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from typing import Any

import torch
from torch import nn

from pruning.measure.probe import CalibrationProbe
from pruning.model.masking import UnitMasks


class Reached(Exception):
    """Raised by a capture hook to end a forward pass once the module of interest has its input."""


class LayerStreams:
    """Each calibration batch's hidden states at the input of one layer, in the dense model and in the
    pruned, corrected one, with the other arguments the model passed to that layer (position
    embeddings, attention mask), so that layers can be run one at a time."""

    def __init__(
        self,
        masks: UnitMasks,
        keep: torch.Tensor,
        hidden: list[torch.Tensor],
        extra: list[tuple[tuple[Any, ...], dict[str, Any]]],
        precision: Callable[[], AbstractContextManager[Any]],
    ) -> None:
        self.masks, self.extra = masks, extra
        # the layers run as the sub-models are scored (bf16 autocast under bf16-mixed); the moments taken
        # from their inputs, and the solves, stay fp32
        self.precision = precision
        self.dense, self.pruned = hidden, list(hidden)  # [B, T, D] per batch; equal before any pruned layer
        self._dense_advanced = False  # the dense stream went through the current layer already
        masks.set(keep.double())

    @classmethod
    def capture(
        cls,
        probe: CalibrationProbe,
        keep: torch.Tensor,
        layer: nn.Module,
        sequences: torch.Tensor | None,
        batch_size: int | None = None,
    ) -> LayerStreams:
        """Run each batch of `sequences` (of `batch_size` sequences; default: the probe's) up to `layer`
        (nothing before it is pruned) and keep what the layer is given, as ordinary tensors (the
        forward runs under inference mode; a training step may save them for its backward pass)."""
        hidden: list[torch.Tensor] = []
        extra: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            states = args[0] if args else kwargs.pop("hidden_states")
            hidden.append(states)
            extra.append((args[1:], kwargs))
            raise Reached

        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with probe.masks.suspended(), probe.objective.scoring_precision():
                for batch in _batches(probe, sequences, batch_size):
                    with suppress(Reached):
                        probe.objective.run(batch)
        finally:
            handle.remove()
        hidden, extra = _ordinary(hidden), _ordinary(extra)
        return cls(probe.masks, keep, hidden, extra, probe.objective.scoring_precision)

    @property
    def batches(self) -> int:
        return len(self.extra)

    def run(self, layer: nn.Module, batch: int, dense: bool) -> torch.Tensor:
        """[B, T, D] `layer`'s output for batch `batch` of the dense stream, or of the pruned one (the
        masks and whatever else is hooked into the pruned model applied; gradients as the caller's mode)."""
        args, kwargs = self.extra[batch]
        with self.precision():
            if dense:
                with self.masks.suspended():  # also stands the corrections down
                    out = layer(self.dense[batch], *args, **kwargs)
            else:
                out = layer(self.pruned[batch], *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def paired_moments(
        self, layer: nn.Module, module: nn.Module, kept: torch.Tensor, last: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, K] X̃_Kᵀ X̃_K, [K, C] X̃_Kᵀ X): X̃ the module's input in the pruned model, X in the dense
        one, token for token, over every batch. `last`: `module` is the layer's last unit module, so the
        dense run goes on through the layer and moves the dense stream on (nothing refits it), sparing
        `advance` a dense pass."""
        gram: torch.Tensor | int = 0
        cross: torch.Tensor | int = 0
        for batch in range(len(self.extra)):
            if last:
                dense, self.dense[batch] = input_and_output(module, self.run, layer, batch, True)
            else:
                dense = input_of(module, self.run, layer, batch, True)  # [tokens, C]
            pruned = input_of(module, self.run, layer, batch, False)
            pruned = pruned[:, kept.to(pruned.device)]  # [tokens, K]
            gram = gram + pruned.T @ pruned
            cross = cross + pruned.T @ dense
        assert isinstance(gram, torch.Tensor) and isinstance(cross, torch.Tensor)
        self._dense_advanced = last
        return gram, cross

    def dense_outputs(self, layer: nn.Module) -> list[torch.Tensor]:
        """[B, T, D] per batch: the dense model's output of `layer`, which is also the dense stream from
        now on (`advance` moves only the pruned one after this)."""
        with torch.no_grad():
            self.dense = [self.run(layer, b, dense=True) for b in range(self.batches)]
        self._dense_advanced = True
        return self.dense

    def advance(self, layer: nn.Module) -> None:
        """Move both streams through `layer`, the pruned one with its refits applied."""
        if not self._dense_advanced:
            self.dense = [self.run(layer, b, dense=True) for b in range(len(self.extra))]
        self.pruned = [self.run(layer, b, dense=False) for b in range(len(self.extra))]
        self._dense_advanced = False


def _batches(probe: CalibrationProbe, sequences: torch.Tensor | None, size: int | None) -> list[torch.Tensor]:
    if size is None:
        return probe.batches(sequences)
    return list((probe.calibration if sequences is None else sequences).split(size))


def _ordinary(value: Any) -> Any:
    """`value` with every inference-mode tensor in it (nested in tuples, lists and dicts) copied into an
    ordinary one."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_ordinary(item) for item in value)
    if isinstance(value, dict):
        return {key: _ordinary(item) for key, item in value.items()}
    return value


def input_and_output(module: nn.Module, run: Callable[..., Any], *args: Any) -> tuple[torch.Tensor, Any]:
    """([tokens, C] float32 input of `module`, what `run(*args)` returns), from one whole run."""
    captured: list[torch.Tensor] = []

    def capture(mod: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).float())

    handle = module.register_forward_pre_hook(capture, prepend=True)
    try:
        out = run(*args)
    finally:
        handle.remove()
    return captured[0], out


def input_of(module: nn.Module, run: Callable[..., Any], *args: Any) -> torch.Tensor:
    """[tokens, C] float32 input of `module` during `run(*args)`, which stops there."""
    captured: list[torch.Tensor] = []

    def capture(mod: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
        raise Reached

    handle = module.register_forward_pre_hook(capture, prepend=True)  # ahead of the unit mask
    try:
        with suppress(Reached):
            run(*args)
    finally:
        handle.remove()
    return captured[0]
