"""`hf`: the compact checkpoint in the family's own config where every layer keeps the same widths, else
with per-layer widths loaded through fwdprune's remote code (`pruning.export.hf` writes it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruning.export.exporter import Exporter, ExportJob, register_exporter

if TYPE_CHECKING:
    from pruning.report import LayerWidths


@register_exporter
class HfExporter(Exporter):
    name = "hf"
    description = "the family's own config (stock when widths are uniform)"

    def write(self, job: ExportJob) -> None:
        from pruning.export.hf import export_pruned  # torch: loaded where a job writes, not at submit

        export_pruned(
            job.model_dir,
            job.out_dir,
            job.adapter,
            job.space,
            job.keep,
            job.spec.uniform,
            job.tensors,
            job.config_updates,
        )

    def card_layout(self, uniform: bool, layers: list[LayerWidths]) -> str:
        """`stock` where a uniform job kept the same widths in every layer (a layer emptied whole breaks
        that); else `remote-code`."""
        widths = {(la.num_attention_heads, la.num_key_value_heads, la.intermediate_size) for la in layers}
        return "stock" if uniform and len(widths) == 1 else "remote-code"

    def how_to_load(self, layout: str, auto_class: str) -> str:
        if layout == "stock":
            return (
                "Every layer keeps the same widths, so the config is the family's own and stock "
                f"`transformers` loads it:\n\n```python\nfrom transformers import {auto_class}\n\n"
                f'model = {auto_class}.from_pretrained("path/to/this/folder")\n```\n'
            )
        return (
            "Per-layer widths (recorded in `config.json`), loaded through `modeling_fwdprune.py` beside the "
            f"weights, or with `pruning.load_pruned`:\n\n{remote_code_load(auto_class)}"
        )


def remote_code_load(auto_class: str) -> str:
    """The Python that loads a checkpoint through the modeling code beside its weights."""
    return (
        f"```python\nfrom transformers import {auto_class}\n\n"
        f'model = {auto_class}.from_pretrained("path/to/this/folder", trust_remote_code=True)\n```\n'
    )
