"""The checkpoint's tokenizer as llama.cpp's byte-level BPE, and ollama's Modelfile beside the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from pruning.errors import UsageError

GGUF_NAME = "model.gguf"
MODELFILE_NAME = "Modelfile"  # ollama's recipe for the file: `ollama create <name> -f Modelfile`

# The pre-tokenizers llama.cpp implements, by the steps of tokenizer.json's `pre_tokenizer` that they
# reproduce (llama.cpp's src/llama-vocab.cpp holds their regexes): GPT-2's byte-level split; SmolLM's,
# which first splits off each digit; Llama 3's and Qwen2's regex splits ahead of a byte-level mapping.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    ("byte-level",): "gpt-2",
    ("digits", "byte-level"): "smollm",
    (f"split:{LLAMA3_SPLIT}", "byte-level:no-regex"): "llama-bpe",
    (f"split:{QWEN2_SPLIT}", "byte-level:no-regex"): "qwen2",
}
# normalizers llama.cpp leaves out harmlessly: none, or NFC (Qwen2's), which text already in NFC passes
IGNORED_NORMALIZERS = (None, "NFC")
PROBE = "a"  # a text of one ordinary token: what the tokenizer adds around it is its special tokens


def write_tokenizer(writer: gguf.GGUFWriter, checkpoint_dir: Path, rows: int) -> None:
    """The checkpoint's tokenizer as transformers loads it, as llama.cpp's byte-level BPE (`gpt2`): the
    pre-tokenizer's name, every token with its type (padded to the embedding's rows), merges, special
    token ids, whether BOS/EOS are added, and the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    pre = pre_tokenizer_name(pipeline(tokenizer.backend_tokenizer))
    tokens, types = token_list(tokenizer.get_vocab(), tokenizer.added_tokens_decoder, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(checkpoint_dir, load_merges=True, n_vocab=rows)
    special.add_special_token = added_specials(tokenizer)
    special.add_to_gguf(writer, quiet=True)


def pipeline(backend: Any) -> dict[str, Any]:
    """The parts of the tokenizer transformers runs (a `tokenizers.Tokenizer`) that decide how text is
    split, in tokenizer.json's terms. Its tokenizer class may build them in code rather than read them
    from tokenizer.json (Qwen2's does)."""

    def state(part: Any) -> Any:
        return json.loads(part.__getstate__()) if part is not None else None

    model = {
        "type": type(backend.model).__name__,
        "byte_fallback": getattr(backend.model, "byte_fallback", False),
    }
    return {
        "model": model,
        "normalizer": state(backend.normalizer),
        "pre_tokenizer": state(backend.pre_tokenizer),
    }


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name of the tokenizer.json's pre-tokenizer; refuses a tokenizer it would split
    differently."""
    model = spec.get("model") or {}
    normalizer = (spec.get("normalizer") or {}).get("type")
    steps = pre_tokenizer_steps(spec.get("pre_tokenizer"))
    name = PRE_TOKENIZERS.get(steps)
    if model.get("type") != "BPE" or model.get("byte_fallback") or normalizer not in IGNORED_NORMALIZERS:
        name = None
    if name is None:
        raise UsageError(
            "export_format gguf writes byte-level BPE tokenizers with a pre-tokenizer llama.cpp implements "
            f"({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); this one is {model.get('type')} with "
            f"normalizer {normalizer} and pre-tokenizer steps {list(steps)}"
        )
    return name


def pre_tokenizer_steps(spec: dict[str, Any] | None) -> tuple[str, ...]:
    """tokenizer.json's `pre_tokenizer` as a flat tuple of the steps that decide the split."""
    if spec is None:
        return ()
    kind = spec["type"]
    if kind == "Sequence":
        return tuple(step for part in spec["pretokenizers"] for step in pre_tokenizer_steps(part))
    if kind == "ByteLevel":
        if spec.get("add_prefix_space"):
            return ("byte-level:prefix-space",)
        return ("byte-level",) if spec.get("use_regex", True) else ("byte-level:no-regex",)
    if kind == "Digits":
        return ("digits",) if spec.get("individual_digits") else ("digits:runs",)
    if kind == "Split" and spec.get("behavior") == "Isolated" and not spec.get("invert"):
        return (f"split:{spec['pattern'].get('Regex')}",)
    return (json.dumps(spec, sort_keys=True),)


def token_list(
    vocab: dict[str, int], added: dict[int, Any], rows: int
) -> tuple[list[str], list[gguf.TokenType]]:
    """Tokens by id with llama.cpp's types (special added tokens CONTROL, other added USER_DEFINED), and
    UNUSED placeholders for embedding rows no token names."""
    if max(vocab.values()) >= rows:
        raise UsageError(f"the tokenizer has token ids past the model's {rows} embedding rows")
    by_id = {index: token for token, index in vocab.items()}
    tokens, types = [], []
    for index in range(rows):
        if index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types


def added_specials(tokenizer: Any) -> dict[str, bool]:
    """Whether the tokenizer puts a token before (bos) or after (eos) a text of its own."""
    bare = tokenizer.encode(PROBE, add_special_tokens=False)
    full = tokenizer.encode(PROBE)
    start = full.index(bare[0]) if bare[0] in full else 0
    return {"bos": start > 0, "eos": len(full) - start > len(bare)}


# ollama's Go templates for the two chat formats most small models use; other chat templates stay in the
# GGUF's tokenizer.chat_template, from which ollama picks a template it knows
OLLAMA_TEMPLATES = {
    "<|im_start|>": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n",
        "<|im_end|>",
    ),
    "<|start_header_id|>": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>",
    ),
}


def write_modelfile(checkpoint_dir: Path) -> None:
    """ollama's Modelfile: the GGUF file, and the chat template in ollama's syntax where the checkpoint's
    is ChatML or Llama 3's."""
    lines = [f"FROM ./{GGUF_NAME}"]
    template = _chat_template(checkpoint_dir)
    for marker, (go_template, stop) in OLLAMA_TEMPLATES.items():
        if marker in template:
            lines += [f'TEMPLATE """{go_template}"""', f'PARAMETER stop "{stop}"']
            break
    (checkpoint_dir / MODELFILE_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _chat_template(checkpoint_dir: Path) -> str:
    template = gguf.SpecialVocab(checkpoint_dir).chat_template
    if template is None or isinstance(template, str):
        return template or ""
    # named templates: the default one
    return next((t["template"] for t in template if t.get("name") == "default"), "")
