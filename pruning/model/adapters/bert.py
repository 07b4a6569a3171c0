"""BERT-family encoders (BERT, RoBERTa, MiniLM): heads and intermediate channels.

Encoders have no next-token loss, so they are scored with the `distill` objective. Their stock config
derives the head size from hidden_size / num_attention_heads, so fewer heads cannot be written as a
stock config: every pruned encoder records its per-layer widths and loads through our modeling code.
The output projections already carry biases, so bias compensation needs no config switch.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from pruning.model.adapters.base import FamilyAdapter, LayerShape, SliceRule, UnitKind


class BertAdapter(FamilyAdapter):
    name = "bert"
    causal_lm = False
    stock_uniform = False
    slice_rules = (
        SliceRule(re.compile(r"layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$"), "q", 0),
        SliceRule(re.compile(r"layer\.(\d+)\.attention\.output\.dense\.weight$"), "q", 1),
        SliceRule(re.compile(r"layer\.(\d+)\.intermediate\.dense\.(weight|bias)$"), "mlp", 0),
        SliceRule(re.compile(r"layer\.(\d+)\.output\.dense\.weight$"), "mlp", 1),
    )
    bias_switches = {UnitKind.ATTN: (None, ()), UnitKind.MLP: (None, ())}
    prunable_linears = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )

    def linear_kind(self, path: str) -> UnitKind:
        return UnitKind.ATTN if path.startswith("attention.") else UnitKind.MLP

    def auto_class(self) -> Any:
        from transformers import AutoModel

        return AutoModel

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.encoder.layer)  # type: ignore[union-attr,arg-type]

    def attention_out(self, layer: nn.Module) -> nn.Module:
        return layer.attention.output.dense  # type: ignore[union-attr,return-value]

    def mlp_out(self, layer: nn.Module) -> nn.Module:
        return layer.output.dense  # type: ignore[union-attr,return-value]

    def backbone(self, model: nn.Module) -> nn.Module:
        return model

    def unit_params(self, config: Any, shape: LayerShape) -> tuple[int, int]:
        hidden, head_dim = config.hidden_size, self.head_dim(config)
        return (
            4 * head_dim * hidden,
            2 * hidden,
        )  # q/k/v rows + output columns; intermediate row + output column

    def uniform_kv_counts(self, config: Any) -> list[int]:
        return list(range(1, config.num_attention_heads + 1))

    def emptied_module(self, tensor_name: str) -> tuple[int, UnitKind] | None:
        return None  # an emptied block keeps its LayerNorm and output bias; zero-size tensors are dropped

    def shrink_config(
        self, config: dict[str, Any], shapes: list[LayerShape], uniform: bool
    ) -> dict[str, Any]:
        return super().shrink_config(config, shapes, uniform=False)
