"""Calibration and evaluation text: read, validate, tokenize and pack into fixed-length sequences.

A job reads only what it packs: the file is streamed (a .jsonl a line at a time, a .txt a chunk at a
time), no document goes to the tokenizer in pieces of more than PIECE_CHARS characters, and reading stops
once the sequences the job asked for are full. A file far larger than the job needs costs the job no more
time or memory than one just large enough.
"""

from __future__ import annotations

import codecs
import json
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from pruning.errors import DataError

PIECE_CHARS = 1 << 16  # a longer document is tokenized in pieces of at most this many characters
SEAM_CHARS = 1 << 10  # a piece ends at the last whitespace within this many characters of its limit
# a tokenizer call takes pieces up to this many characters or this many pieces, whichever comes first:
# the tokenizer's memory grows with both, and the last call reads past what the job needs
BATCH_CHARS, BATCH_PIECES = 1 << 18, 512
READ_BYTES = 1 << 20
MAX_LINE_BYTES = 1 << 26  # a .jsonl record longer than this is refused rather than read whole
MIN_TRAINING_SEQUENCES = 2  # what a recovery trains on: one sequence at least, and one to judge it

Piece = tuple[str, bool]  # text, and whether it ends its document (an EOS follows)


def read_pieces(path: Path) -> Iterator[Piece]:
    """The documents of a `.jsonl` (a `text` field per line) or a `.txt` (the whole file, one document), in
    file order and in pieces, read as they are consumed; clear errors for a file the engine cannot use."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix not in (".jsonl", ".txt"):
        raise DataError(f"{path.name}: expected a .jsonl file with a `text` field per line, or a .txt file")
    with path.open("rb") as handle:
        if path.suffix == ".jsonl":
            yield from _jsonl_pieces(handle, path.name)
        else:
            yield from _txt_pieces(handle, path.name)


def _txt_pieces(handle: BinaryIO, name: str) -> Iterator[Piece]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, offset, has_text = "", 0, False
    while chunk := handle.read(READ_BYTES):
        pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
        try:
            buffer += decoder.decode(chunk)
        except UnicodeDecodeError as err:
            raise DataError(_not_utf8(name, offset - pending + err.start, err)) from err
        offset += len(chunk)
        while len(buffer) > PIECE_CHARS:
            cut = _seam(buffer)
            has_text = has_text or not buffer[:cut].isspace()
            yield buffer[:cut], False
            buffer = buffer[cut:]
    try:
        buffer += decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:  # the file ends inside a character
        raise DataError(_not_utf8(name, offset - len(err.object) + err.start, err)) from err
    if not (has_text or buffer.strip()):
        raise DataError(f"{name} is empty")
    yield buffer, True


def _not_utf8(name: str, position: int, err: UnicodeDecodeError) -> str:
    return f"{name} is not UTF-8 text (byte {position}: {err.reason})"


def _jsonl_pieces(handle: BinaryIO, name: str) -> Iterator[Piece]:
    number = offset = 0  # lines as str.splitlines counts them; bytes read
    has_text = has_document = False
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(f"{name} line {number + 1}: longer than {MAX_LINE_BYTES} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(_not_utf8(name, offset + err.start, err)) from err
        offset += len(raw)
        for part in line.splitlines():
            number += 1
            if not part.strip():
                continue
            has_text = True
            text = _record_text(part, name, number)
            if text:
                has_document = True
                yield from document_pieces(text)
    if not has_text:
        raise DataError(f"{name} is empty")
    if not has_document:
        raise DataError(f"{name} has no non-empty `text` field")


def _record_text(line: str, name: str, number: int) -> str:
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{name} line {number}: not valid JSON ({err.msg})") from err
    except ValueError as err:  # an integer longer than Python converts
        raise DataError(f"{name} line {number}: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f"{name} line {number}: expected an object with a string `text` field")
    return str(record["text"])


def document_pieces(text: str) -> Iterator[Piece]:
    """One document in pieces of at most PIECE_CHARS characters, each cut before whitespace where there
    is some near the limit (so a word is rarely split), the last one marked as ending the document."""
    while len(text) > PIECE_CHARS:
        cut = _seam(text)
        yield text[:cut], False
        text = text[cut:]
    yield text, True


def _seam(text: str) -> int:
    """Where to end a piece of `text` (longer than PIECE_CHARS): before the last whitespace in the final
    SEAM_CHARS of the limit, else at the limit."""
    window = text[PIECE_CHARS - SEAM_CHARS : PIECE_CHARS]
    last_space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
    return PIECE_CHARS - SEAM_CHARS + last_space if last_space > 0 else PIECE_CHARS


def pack_tokens(
    pieces: Iterable[Piece], tokenizer: Any, seq_len: int, wrap: bool = False, limit: int | None = None
) -> torch.Tensor:
    """Tokenize documents, join them with EOS and cut into [n, seq_len] sequences (the tail is dropped);
    with `limit`, stop reading once `limit` sequences are full.

    wrap: encoders see each chunk as [CLS] chunk [SEP], as in pretraining, so chunks are 2 shorter.
    """
    width = seq_len - 2 if wrap else seq_len
    wanted = None if limit is None else limit * width
    stream = array("q")
    for batch in _batches(pieces):
        ids = tokenizer([text for text, _ in batch], add_special_tokens=False)["input_ids"]
        for (_, ends), piece_ids in zip(batch, ids, strict=True):
            stream.extend(piece_ids)
            if ends and tokenizer.eos_token_id is not None:
                stream.append(tokenizer.eos_token_id)
        if wanted is not None and len(stream) >= wanted:
            break
    count = len(stream) // width if limit is None else min(len(stream) // width, limit)
    # a copy of just the packed tokens: the stream's buffer is not kept
    chunks = (
        torch.frombuffer(stream, dtype=torch.long, count=count * width).clone().view(count, width)
        if count
        else torch.empty((0, width), dtype=torch.long)
    )
    if not wrap:
        return chunks
    cls = torch.full((count, 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((count, 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, chunks, sep], dim=1)


def _batches(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Pieces grouped into tokenizer calls of about BATCH_CHARS characters or BATCH_PIECES pieces."""
    batch: list[Piece] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= BATCH_CHARS or len(batch) >= BATCH_PIECES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


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
    """Pack `data` into calibration sequences; evaluate on `eval_data`, else on the sequences of `data`
    that follow the calibration ones (never overlapping them). Each file is read only as far as its
    sequences need."""
    held_out = 0 if eval_data is not None else eval_samples
    needed = num_samples + held_out
    packed = pack_tokens(read_pieces(data), tokenizer, seq_len, wrap, limit=needed)
    if packed.shape[0] < needed:
        raise DataError(
            f"{Path(data).name} gives {packed.shape[0]} sequences of {seq_len} tokens; "
            f"{needed} are needed ({num_samples} calibration + {held_out} held out). "
            "Send more text, or lower --num-samples, --eval-samples or --seq-len."
        )
    calibration = packed[:num_samples]
    if eval_data is None:
        return CalibrationSet(calibration, packed[num_samples:], "held-out")
    evaluation = pack_tokens(read_pieces(eval_data), tokenizer, seq_len, wrap, limit=eval_samples)
    if evaluation.shape[0] == 0:
        raise DataError(f"{Path(eval_data).name} has fewer than {seq_len} tokens")
    return CalibrationSet(calibration, evaluation, Path(eval_data).name)


def load_training_text(
    tokenizer: Any, data: Path, seq_len: int, sequences: int, held_out: range | None = None
) -> torch.Tensor:
    """Up to `sequences` [n, seq_len] token sequences of `data` to train on, leaving out the sequences
    `held_out` (what the job evaluates on, when it comes from the same file); fewer when the file holds
    fewer (the trainer cycles through them), but never fewer than MIN_TRAINING_SEQUENCES: a DataError
    says the file is too short."""
    skipped = len(held_out) if held_out is not None else 0
    packed = pack_tokens(read_pieces(data), tokenizer, seq_len, limit=sequences + skipped)
    if held_out is not None:
        keep = torch.ones(packed.shape[0], dtype=torch.bool)
        keep[held_out.start : held_out.stop] = False
        packed = packed[keep]
    if packed.shape[0] < MIN_TRAINING_SEQUENCES:
        besides = f" besides the {skipped} held out" if skipped else ""
        raise DataError(
            f"{Path(data).name} gives {packed.shape[0]} sequences of {seq_len} tokens to train on{besides}; "
            f"the recovery needs at least {MIN_TRAINING_SEQUENCES}: one to train on, one to judge it. "
            "Send more text, or lower --seq-len."
        )
    return packed[:sequences]
