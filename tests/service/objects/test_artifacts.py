"""A job's artifacts streamed out as one tar, read from storage as it goes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from service.objects.artifacts import stream_tar
from service.objects.local import LocalStorage


def test_stream_tar_round_trip(tmp_path: Path) -> None:
    files = {"a.json": b"{}", "empty": b"", "big.bin": bytes(range(256)) * 5000}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    data = b"".join(stream_tar(LocalStorage(tmp_path), [(name, name) for name in sorted(files)], "ckpt"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == {  # type: ignore[union-attr]
            f"ckpt/{name}": content for name, content in files.items()
        }
