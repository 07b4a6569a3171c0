"""`gguf`: the hf checkpoint, and beside it `model.gguf` and ollama's `Modelfile`, which llama.cpp, ollama
and LM Studio load (`pruning.export.gguf` writes them). The families and the widths it states are the
family table's (`Family.gguf_arch`, `Family.gguf_widths`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pruning.checkpoint_config import check_gguf_fields
from pruning.errors import UnsupportedModelError
from pruning.export.exporter import ExportJob, WidthRule, register_exporter
from pruning.export.formats.hf import HfExporter
from pruning.families import FAMILIES

if TYPE_CHECKING:
    from pruning.report import PruneReport
    from pruning.spec import PruneSettings


@register_exporter
class GgufExporter(HfExporter):
    name = "gguf"
    description = (
        "the hf checkpoint and model.gguf beside it, which llama.cpp, ollama and LM Studio load (Llama, "
        "Mistral, Qwen2 with any widths, Qwen3 uniform ones)"
    )
    carries_bias_shift = False  # llama.cpp's per-layer widths add no output bias where a block was removed
    card_tags = ("gguf",)

    def refuse_settings(self, settings: PruneSettings) -> None:
        if settings.compensate == "bias" and not settings.uniform:
            raise ValueError("export_format gguf carries bias compensation with uniform widths only; use ls")

    def refuse(self, model_type: str, settings: PruneSettings, config: dict[str, Any] | None = None) -> None:
        family = FAMILIES.get(model_type)
        if family is None or family.gguf_arch is None:
            written = ", ".join(t for t, f in FAMILIES.items() if f.gguf_arch is not None)
            why = "an encoder" if family is not None and family.adapter == "bert" else "not one of them"
            raise UnsupportedModelError(
                f"export_format gguf writes {written} models in llama.cpp's architectures; {model_type} is "
                f"{why}: use export_format hf"
            )
        if self.width_rule(model_type).uniform and not settings.uniform:
            raise UnsupportedModelError(
                f"export_format gguf writes {model_type} with uniform widths only: llama.cpp's per-layer-"
                f"width architecture (deci) has no {model_type} layers (their q/k norms); set uniform"
            )
        if family.gguf_arch == "qwen3" and settings.compensate == "bias":
            raise UnsupportedModelError(
                "llama.cpp's qwen3 holds no output-projection bias; use compensate ls"
            )
        if config is not None:
            check_gguf_fields(config)

    def width_rule(self, model_type: str) -> WidthRule:
        family = FAMILIES.get(model_type)
        return WidthRule(uniform=family is not None and family.gguf_widths == "uniform")

    def write(self, job: ExportJob) -> None:
        from pruning.export.gguf.writer import export_gguf_beside  # torch: loaded where a job writes

        super().write(job)
        export_gguf_beside(job.out_dir, job.adapter, job.spec.gguf_type, job.spec.model)

    def card_sections(self, report: PruneReport) -> list[str]:
        """The card's llama.cpp and ollama section."""
        return [
            "## Run it in llama.cpp / ollama",
            "",
            f"`model.gguf` is the same model for llama.cpp ({report.settings.get('gguf_type', 'f16')} "
            "matrices), which runs it as it is:",
            "",
            "```sh\nllama-cli -m model.gguf\n```",
            "",
            "ollama runs it through the `Modelfile` beside it (`FROM ./model.gguf` and the chat template):",
            "",
            "```sh\nollama create pruned -f Modelfile\nollama run pruned\n```",
            "",
        ]
