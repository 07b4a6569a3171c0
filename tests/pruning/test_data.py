from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pruning.data import load_calibration, pack_tokens, read_texts
from pruning.errors import DataError


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "is empty"),
        ("notext.jsonl", b'{"body": "x"}\n', "string `text` field"),
        ("badjson.jsonl", b'{"text": "a"}\n{oops\n', "line 2: not valid JSON"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("data.csv", b"text\nhello\n", "expected a .jsonl"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_texts(path)


def test_pack_tokens_exact(tiny_models: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    texts = ["def add(a, b):", "return a + b"]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    stream = sum(lengths) + 2  # one EOS after each document
    packed = pack_tokens(texts, tokenizer, 3)
    assert packed.shape == (stream // 3, 3)
    assert packed.dtype == torch.long
    assert packed[0, 0].item() == tokenizer(texts[0], add_special_tokens=False)["input_ids"][0]


def test_too_few_tokens(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    path = tmp_path / "small.txt"
    path.write_text("def f(): pass\n")
    with pytest.raises(DataError, match="sequences of 32 tokens"):
        load_calibration(tokenizer, path, seq_len=32, num_samples=4, eval_samples=2)


def test_held_out_does_not_overlap(tiny_models: dict[str, Path], calibration_file: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    data = load_calibration(tokenizer, calibration_file, seq_len=16, num_samples=5, eval_samples=3)
    packed = pack_tokens(read_texts(calibration_file), tokenizer, 16)
    assert data.calibration.shape == (5, 16) and data.evaluation.shape == (3, 16)
    assert torch.equal(data.calibration, packed[:5]) and torch.equal(data.evaluation, packed[-3:])
    assert data.eval_source == "held-out"
