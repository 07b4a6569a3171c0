"""`nemotron-nas`: NVIDIA's DeciLM layout, per-layer widths that vLLM, SGLang, TensorRT-LLM and llama.cpp
load natively (`pruning.export.nemotron` writes it). Its widths are limited: one attention-head count in
every layer that keeps attention, MLP widths in multiples of FFN_WIDTH_MULTIPLE channels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pruning.checkpoint_config import quoted
from pruning.errors import UsageError
from pruning.export.exporter import Exporter, ExportJob, WidthRule, register_exporter
from pruning.export.formats.hf import remote_code_load

if TYPE_CHECKING:
    from pruning.report import LayerWidths
    from pruning.spec import PruneSettings

MODEL_TYPES = ("llama",)  # the layout is a Llama's
# `ffn_mult` states MLP widths the loaders round up to a multiple of this (vLLM, SGLang, TensorRT-LLM and
# llama.cpp alike); the remote code shipped with the export agrees (modeling_decilm.FFN_WIDTH_MULTIPLE)
FFN_WIDTH_MULTIPLE = 256


@register_exporter
class NemotronNasExporter(Exporter):
    name = "nemotron-nas"
    description = (
        "Llama models only, NVIDIA's DeciLM layout that vLLM, SGLang, TensorRT-LLM and llama.cpp load "
        "natively (widths limited to what it expresses: the same attention heads in every layer or none, "
        "MLP widths in multiples of 256)"
    )
    carries_bias_shift = False  # the layout removes whole blocks, which leaves a bias shift nowhere to live

    def refuse_settings(self, settings: PruneSettings) -> None:
        if settings.compensate == "bias":
            raise ValueError("export_format nemotron-nas cannot carry bias compensation; use ls or none")

    def refuse(self, model_type: str, settings: PruneSettings, config: dict[str, Any] | None = None) -> None:
        refuse_inexpressible({**(config or {}), "model_type": model_type}, widths=config is not None)

    def width_rule(self, model_type: str) -> WidthRule:
        return WidthRule(mlp_multiple=FFN_WIDTH_MULTIPLE, shared_kv_count=True)

    def write(self, job: ExportJob) -> None:
        from pruning.export.nemotron import export_nemotron  # torch: loaded where a job writes

        export_nemotron(
            job.model_dir, job.out_dir, job.adapter, job.space, job.keep, job.tensors, job.config_updates
        )

    def card_layout(self, uniform: bool, layers: list[LayerWidths]) -> str:
        return "nemotron-nas"

    def how_to_load(self, layout: str, auto_class: str) -> str:
        return (
            "Per-layer widths in NVIDIA's Nemotron-NAS (`DeciLMForCausalLM`) layout, which vLLM, SGLang, "
            "TensorRT-LLM and llama.cpp's GGUF converter load natively (`vllm serve path/to/this/folder "
            "--trust-remote-code`); `transformers` loads it through `modeling_decilm.py` beside the "
            f"weights:\n\n{remote_code_load(auto_class)}"
        )


def refuse_inexpressible(config: dict[str, Any], widths: bool = True) -> None:
    """Refuse a model the layout cannot hold: not a Llama, or (with `widths`) an MLP narrower than the
    narrowest width `ffn_mult` states (every layer would lose its MLP). The API refuses it at submit,
    the export (`pruning.export.nemotron`) again before it writes."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UsageError(f"export_format nemotron-nas is for Llama models; this one is {quoted(model_type)}")
    if not widths:
        return
    width = config.get("intermediate_size")
    if not isinstance(width, int):
        raise UsageError("export_format nemotron-nas needs config.json's intermediate_size; it has none")
    if width < FFN_WIDTH_MULTIPLE:
        raise UsageError(
            f"export_format nemotron-nas states MLP widths in multiples of {FFN_WIDTH_MULTIPLE}; this "
            f"model's intermediate_size {width} is narrower than one"
        )
