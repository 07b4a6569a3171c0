"""The GGUF export: the compact checkpoint as one file that stock llama.cpp loads (and ollama and LM Studio
with it), written with the `gguf` package from the safetensors checkpoint it sits beside.

- `widths.py`: the architecture and the widths the file states per layer, zero blocks included.
- `tensors.py`: every tensor of the file and where its values come from; rope in llama.cpp's order.
- `quantize.py`: how each tensor is stored (f32, f16, bf16, q8_0).
- `tokenizer.py`: the tokenizer as llama.cpp's byte-level BPE, and ollama's Modelfile.
- `writer.py`: the file, from those parts.

The format's declaration (`pruning.export.formats.gguf`) is torch-free and imports none of these.
"""
