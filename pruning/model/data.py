"""Calibration and evaluation text: read, validate, tokenize and pack into fixed-length sequences."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pruning.errors import DataError


def read_texts(path: Path) -> list[str]:
    """Documents from `.jsonl` (a `text` field per line) or `.txt` (the whole file), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path.name} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    if not raw.strip():
        raise DataError(f"{path.name} is empty")
    if path.suffix == ".jsonl":
        return _read_jsonl(raw, path.name)
    if path.suffix == ".txt":
        return [raw]
    raise DataError(f"{path.name}: expected a .jsonl file with a `text` field per line, or a .txt file")


def _read_jsonl(raw: str, name: str) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{name} line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{name} line {number}: expected an object with a string `text` field")
        if record["text"]:
            texts.append(record["text"])
    if not texts:
        raise DataError(f"{name} has no non-empty `text` field")
    return texts


def pack_tokens(texts: list[str], tokenizer: Any, seq_len: int, wrap: bool = False) -> torch.Tensor:
    """Tokenize documents, join them with EOS and cut into [n, seq_len] sequences (the tail is dropped).

    wrap: encoders see each chunk as [CLS] chunk [SEP], as in pretraining, so chunks are 2 shorter.
    """
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.extend(separator)
    if not wrap:
        usable = len(stream) // seq_len * seq_len
        return torch.tensor(stream[:usable], dtype=torch.long).view(-1, seq_len)
    width = seq_len - 2
    chunks = torch.tensor(stream[: len(stream) // width * width], dtype=torch.long).view(-1, width)
    cls = torch.full((chunks.shape[0], 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((chunks.shape[0], 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, chunks, sep], dim=1)


@dataclass
class CalibrationSet:
    calibration: torch.Tensor  # [num_samples, seq_len] token ids used for scoring
    evaluation: torch.Tensor  # [eval_samples, seq_len] held-out token ids for perplexity
    eval_source: str  # "held-out" or the eval file's name


def load_calibration(
    tokenizer: Any,
    data: Path,
    seq_len: int,
    num_samples: int,
    eval_samples: int,
    eval_data: Path | None = None,
    wrap: bool = False,
) -> CalibrationSet:
    """Pack `data` into calibration sequences; evaluate on `eval_data`, else on the tail of `data`."""
    packed = pack_tokens(read_texts(data), tokenizer, seq_len, wrap)
    held_out = 0 if eval_data is not None else eval_samples
    needed = num_samples + held_out
    if packed.shape[0] < needed:
        raise DataError(
            f"{Path(data).name} gives {packed.shape[0]} sequences of {seq_len} tokens; "
            f"{needed} are needed ({num_samples} calibration + {held_out} held out). "
            "Send more text, or lower --num-samples, --eval-samples or --seq-len."
        )
    calibration = packed[:num_samples]
    if eval_data is None:
        # the tail, never overlapping the calibration sequences
        return CalibrationSet(calibration, packed[packed.shape[0] - held_out :], "held-out")
    evaluation = pack_tokens(read_texts(eval_data), tokenizer, seq_len, wrap)
    if evaluation.shape[0] == 0:
        raise DataError(f"{Path(eval_data).name} has fewer than {seq_len} tokens")
    return CalibrationSet(calibration, evaluation[:eval_samples], Path(eval_data).name)
