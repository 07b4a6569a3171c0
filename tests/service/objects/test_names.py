"""The one rule for artifact names, and the server publishing only names it allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.objects.artifacts import describe
from service.objects.names import name_problem


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "model-00001-of-00002.safetensors",
        "sparsity-0.2/config.json",
        "tokenizer config (copy).json",
        "résumé.txt",
        "a" * 255,
    ],
)
def test_names_a_checkpoint_has_are_safe(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "it is empty or not a string"),
        (None, "it is empty or not a string"),
        ("/etc/passwd", "it is an absolute path"),
        ("a\\b", "it holds a backslash"),
        ("a\x00", "it holds a NUL or another control character"),
        ("a\u202eb", "it holds a NUL or another control character"),  # right-to-left override
        ("a/", "it has an empty path segment"),
        (".", "it has a '.' path segment"),
        ("x/../y", "it has a '..' path segment"),
        (".gitattributes", "its segment '.gitattributes' starts with a dot"),
        ("original/.cache/x", "its segment '.cache' starts with a dot"),
        ("a" * 256, "a segment is longer than 255 bytes"),
    ],
)
def test_unsafe_names(name: object, problem: str) -> None:
    assert name_problem(name) == problem


def test_describe_publishes_no_hidden_file(tmp_path: Path) -> None:
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "download.lock").write_text("")
    (tmp_path / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (tmp_path / "config.json").write_text("{}")
    assert describe(tmp_path) == [
        {
            "name": "config.json",
            "bytes": 2,
            "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        }
    ]
