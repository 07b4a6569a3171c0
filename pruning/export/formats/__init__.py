"""The export formats every entry point offers: importing this package registers the built-in ones.

`hf` (the family's own config, or per-layer widths through fwdprune's remote code), `nemotron-nas`
(NVIDIA's DeciLM layout) and `gguf` (the hf checkpoint and a llama.cpp file beside it). Each module here
declares its format torch-free (`pruning.export.exporter`); the writing code sits beside it in
`pruning.export`.
"""

from pruning.export.exporter import (
    EXPORTERS,
    Exporter,
    ExportJob,
    WidthRule,
    exporter_for,
    register_exporter,
)

# isort: off
# registered in the order every entry point lists them, the default first
from pruning.export.formats import hf
from pruning.export.formats import nemotron
from pruning.export.formats import gguf

# isort: on

__all__ = [
    "EXPORTERS",
    "ExportJob",
    "Exporter",
    "WidthRule",
    "exporter_for",
    "gguf",
    "hf",
    "nemotron",
    "register_exporter",
]
