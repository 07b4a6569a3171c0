from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pruning.errors import DataError
from pruning.model import data as data_module
from pruning.model.data import (
    PIECE_CHARS,
    Piece,
    document_pieces,
    load_calibration,
    load_training_text,
    pack_tokens,
    read_pieces,
)


class WordTokenizer:
    """One token per whitespace-separated word, its id the word's length: counts are known exactly. It
    keeps what it was given: how many pieces, and the longest."""

    def __init__(self, eos_token_id: int | None = 0) -> None:
        self.eos_token_id = eos_token_id
        self.pieces = 0
        self.longest = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        assert add_special_tokens is False  # packing must not add BOS per document
        self.pieces += len(texts)
        self.longest = max([self.longest, *(len(text) for text in texts)])
        return {"input_ids": [[len(word) for word in text.split()] for text in texts]}


def documents(texts: list[str]) -> list[Piece]:
    return [piece for text in texts for piece in document_pieces(text)]


def read_texts(path: Path) -> list[str]:
    """The documents of a small file, whole."""
    texts, current = [], ""
    for text, ends in read_pieces(path):
        current += text
        if ends:
            texts.append(current)
            current = ""
    return texts


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "empty.jsonl is empty"),
        ("blank.txt", b"  \n\n", "blank.txt is empty"),
        ("notext.jsonl", b'{"body": "x"}\n', "line 1: expected an object with a string `text` field"),
        (
            "numtext.jsonl",
            b'{"text": "ok"}\n{"text": 3}\n',
            "line 2: expected an object with a string `text`",
        ),
        ("list.jsonl", b'["text"]\n', "line 1: expected an object"),
        ("badjson.jsonl", b'{"text": "a"}\n\n{oops\n', "line 3: not valid JSON"),
        ("latin.txt", "caf\xe9".encode("latin-1"), r"latin.txt is not UTF-8 text \(byte 3"),
        ("latin.jsonl", '{"text": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
        ("alltexts_empty.jsonl", b'{"text": ""}\n{"text": ""}\n', "has no non-empty `text` field"),
        ("data.csv", b"text\nhello\n", "data.csv: expected a .jsonl file"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_texts(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_texts(tmp_path / "nope.jsonl")


def test_read_texts_jsonl_skips_blank_lines_and_empty_texts(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "a b"}\n\n   \n{"text": ""}\n{"text": "c", "meta": 1}\n', encoding="utf-8")
    assert read_texts(path) == ["a b", "c"]
    txt = tmp_path / "ok.txt"
    txt.write_text("line one\nline two\n", encoding="utf-8")
    assert read_texts(txt) == ["line one\nline two\n"]


def test_pack_tokens_joins_documents_with_eos_and_drops_the_tail() -> None:
    texts = ["a bb ccc", "dddd", "eeeee ffffff"]
    # stream: 1 2 3 0 | 4 0 | 5 6 0  (9 tokens)
    packed = pack_tokens(documents(texts), WordTokenizer(), 2)
    assert packed.dtype == torch.long
    assert packed.tolist() == [[1, 2], [3, 0], [4, 0], [5, 6]]
    assert pack_tokens(documents(texts), WordTokenizer(), 4).tolist() == [[1, 2, 3, 0], [4, 0, 5, 6]]
    assert pack_tokens(documents(texts), WordTokenizer(), 9).tolist() == [[1, 2, 3, 0, 4, 0, 5, 6, 0]]
    assert pack_tokens(documents(texts), WordTokenizer(), 10).shape == (0, 10)
    assert pack_tokens(documents(texts), WordTokenizer(), 2, limit=3).tolist() == [[1, 2], [3, 0], [4, 0]]


def test_pack_tokens_without_eos_has_no_separator() -> None:
    packed = pack_tokens(documents(["a bb", "ccc dddd"]), WordTokenizer(eos_token_id=None), 2)
    assert packed.tolist() == [[1, 2], [3, 4]]


def test_pack_tokens_with_a_real_tokenizer(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    texts = ["def add(a, b):", "return a + b"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    stream = ids[0] + [tokenizer.eos_token_id] + ids[1] + [tokenizer.eos_token_id]
    packed = pack_tokens(documents(texts), tokenizer, 3)
    assert packed.shape == (len(stream) // 3, 3)
    assert packed.flatten().tolist() == stream[: len(stream) // 3 * 3]


def test_too_few_tokens_for_the_request(tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_text("a b c d e f g h i j", encoding="utf-8")  # 10 words + EOS = 11 tokens
    with pytest.raises(
        DataError, match=r"gives 2 sequences of 4 tokens; 3 are needed \(2 calibration \+ 1 held"
    ):
        load_calibration(WordTokenizer(), path, seq_len=4, num_samples=2, eval_samples=1)
    data = load_calibration(WordTokenizer(), path, seq_len=4, num_samples=1, eval_samples=1)
    assert data.calibration.shape == (1, 4) and data.evaluation.shape == (1, 4)


def test_eval_file_too_short(tmp_path: Path) -> None:
    calib, dev = tmp_path / "calib.txt", tmp_path / "dev.txt"
    calib.write_text(" ".join(["w"] * 40), encoding="utf-8")
    dev.write_text("x y", encoding="utf-8")
    with pytest.raises(DataError, match="dev.txt has fewer than 8 tokens"):
        load_calibration(WordTokenizer(), calib, seq_len=8, num_samples=2, eval_samples=2, eval_data=dev)


def test_eval_file_is_used_and_capped(tmp_path: Path) -> None:
    calib, dev = tmp_path / "calib.txt", tmp_path / "dev.jsonl"
    calib.write_text(" ".join(["w"] * 40), encoding="utf-8")  # 41 tokens -> 10 sequences of 4
    dev.write_text('{"text": "aa aa aa aa aa aa aa aa aa aa aa aa"}\n', encoding="utf-8")  # 13 -> 3
    data = load_calibration(WordTokenizer(), calib, seq_len=4, num_samples=10, eval_samples=2, eval_data=dev)
    assert data.calibration.shape == (10, 4)  # no sequence held out when an eval file is given
    assert data.evaluation.tolist() == [[2, 2, 2, 2], [2, 2, 2, 2]]
    assert data.eval_source == "dev.jsonl"


def test_held_out_sequences_follow_the_calibration_ones(tiny_llama: Path, calibration_file: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    data = load_calibration(tokenizer, calibration_file, seq_len=16, num_samples=5, eval_samples=3)
    packed = pack_tokens(read_pieces(calibration_file), tokenizer, 16)
    assert packed.shape[0] > 8
    assert data.calibration.shape == (5, 16) and data.evaluation.shape == (3, 16)
    assert torch.equal(data.calibration, packed[:5]) and torch.equal(data.evaluation, packed[5:8])
    assert data.eval_source == "held-out"


def test_reading_stops_once_the_sequences_are_full(tmp_path: Path) -> None:
    """A file far larger than the job: only a batch of its records past the last one needed is tokenized,
    and the rest is never read (a broken line there goes unnoticed)."""
    path = tmp_path / "large.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines('{"text": "w"}\n' for _ in range(100_000))  # 1 token + EOS each
        handle.write("{not json\n")
    tokenizer = WordTokenizer()
    data = load_calibration(tokenizer, path, seq_len=4, num_samples=2, eval_samples=1)  # 12 tokens
    assert data.calibration.tolist() == [[1, 0, 1, 0], [1, 0, 1, 0]]
    assert data.evaluation.tolist() == [[1, 0, 1, 0]]
    assert tokenizer.pieces == data_module.BATCH_PIECES  # the one call that filled the sequences


def test_a_long_document_goes_to_the_tokenizer_in_pieces(tmp_path: Path) -> None:
    """A single-line .txt of 10 pieces' length: no tokenizer call sees more than PIECE_CHARS characters,
    and cutting before whitespace keeps every word whole."""
    words = ["ab", "cde", "f", "ghij"] * (10 * PIECE_CHARS // 12)
    path = tmp_path / "one-line.txt"
    path.write_text(" ".join(words), encoding="utf-8")
    tokenizer = WordTokenizer()
    packed = pack_tokens(read_pieces(path), tokenizer, seq_len=len(words) + 1)  # everything, with its EOS
    assert 0 < tokenizer.longest <= PIECE_CHARS
    assert packed.flatten().tolist() == [len(word) for word in words] + [0]
    # and the job's few sequences read only the start of it
    small = WordTokenizer()
    data = load_calibration(small, path, seq_len=8, num_samples=2, eval_samples=1)
    assert data.calibration.flatten().tolist() == [len(word) for word in words[:16]]
    assert small.pieces <= data_module.BATCH_CHARS // PIECE_CHARS + 1  # one call; pieces end short of it


def test_pieces_tokenize_as_the_whole_document(tiny_llama: Path) -> None:
    """A real BPE tokenizer gives the same ids for a long document cut into pieces as for it whole."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    text = " ".join(f"def f{i}(x):\n    return x + {i}" for i in range(3 * PIECE_CHARS // 30))
    whole = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(list(document_pieces(text))) >= 3
    packed = pack_tokens(document_pieces(text), tokenizer, seq_len=len(whole))
    assert packed.flatten().tolist() == whole


def test_a_record_with_an_integer_past_the_conversion_limit_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "big-int.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "n": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match="big-int.jsonl line 2: Exceeds the limit"):
        load_calibration(WordTokenizer(), path, seq_len=2, num_samples=5, eval_samples=1)


def test_a_record_longer_than_the_line_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_module, "MAX_LINE_BYTES", 100)
    path = tmp_path / "long-line.jsonl"
    path.write_text('{"text": "a"}\n{"text": "' + "b " * 100 + '"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="long-line.jsonl line 2: longer than 100 bytes"):
        load_calibration(WordTokenizer(), path, seq_len=2, num_samples=50, eval_samples=1)


def test_training_text_of_fewer_than_two_sequences_is_a_data_error(tmp_path: Path) -> None:
    """A recovery trains on one sequence at least and is judged on another."""
    path = tmp_path / "recovery.txt"
    path.write_text("a b c d e f g h i j", encoding="utf-8")  # 10 words + EOS: 2 sequences of 5, 1 of 8
    assert load_training_text(WordTokenizer(), path, seq_len=5, sequences=4).shape == (2, 5)
    with pytest.raises(
        DataError, match="recovery.txt gives 1 sequences of 8 tokens to train on; the recovery"
    ):
        load_training_text(WordTokenizer(), path, seq_len=8, sequences=4)
    with pytest.raises(DataError, match="gives 1 sequences of 5 tokens to train on besides the 1 held out"):
        load_training_text(WordTokenizer(), path, seq_len=5, sequences=4, held_out=range(0, 1))
