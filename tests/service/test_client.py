"""The client's download against a hostile server: a real HTTP app (served in process) that lists the
names, sizes and bodies an attacker would, and a destination that holds files the user cares about."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from service.client import Client, DownloadRefused

BODY = b'{"hidden_size": 8}'


def hostile_server(listing: list[dict[str, object]], bodies: dict[str, bytes]) -> FastAPI:
    """An API that lists `listing` as job_1's artifacts and serves `bodies` by name, all of each body
    whatever the Range (as a server that ignores it would)."""
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}/artifacts")
    def artifacts(job_id: str) -> dict[str, object]:
        return {"data": listing}

    @app.get("/v1/jobs/{job_id}/artifacts/{name:path}")
    def artifact(job_id: str, name: str) -> StreamingResponse:
        body = bodies[name]
        return StreamingResponse(iter([body[i : i + 4096] for i in range(0, len(body), 4096)]))

    return app


def client_of(app: FastAPI) -> Client:
    api = Client("http://testserver")
    api.http = TestClient(app)  # type: ignore[assignment]  # the client's requests, served in process
    return api


def entry(name: str, body: bytes = BODY, size: int | None = None) -> dict[str, object]:
    return {
        "name": name,
        "bytes": len(body) if size is None else size,
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (and under its parent's other entries: nothing may appear beside it)."""
    return {
        str(path.relative_to(root.parent)): path.read_bytes()
        for path in sorted(root.parent.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """A destination that is a git checkout: `.git/config` is what a hostile listing would replace."""
    dest = tmp_path / "repo"
    (dest / ".git").mkdir(parents=True)
    (dest / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (dest / "README.md").write_text("mine\n")
    yield dest


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (".git/config", "its segment '.git' starts with a dot"),
        (".bashrc", "its segment '.bashrc' starts with a dot"),
        ("sparsity-0.2/.ssh/authorized_keys", "its segment '.ssh' starts with a dot"),
        ("", "it is empty or not a string"),
        ("/", "it is an absolute path"),
        ("/etc/passwd", "it is an absolute path"),
        ("..", "it has a '..' path segment"),
        ("a/../../b", "it has a '..' path segment"),
        ("./config.json", "it has a '.' path segment"),
        ("a//b", "it has an empty path segment"),
        ("a\x00b", "it holds a NUL or another control character"),
        ("..\\x", "it holds a backslash"),
    ],
)
def test_unsafe_names_are_refused_before_anything_is_written(repo: Path, name: str, why: str) -> None:
    before = tree(repo)
    app = hostile_server([entry("config.json"), entry(name)], {"config.json": BODY, name: b"[core]\n"})
    with pytest.raises(DownloadRefused) as refused:
        client_of(app).download("job_1", repo)
    assert str(refused.value) == f"refusing artifact {name!r}: {why}"
    assert tree(repo) == before  # not even the safe artifact listed before it, nor a .part beside `repo`


def test_a_file_the_download_did_not_create_is_never_replaced(repo: Path) -> None:
    app = hostile_server([entry("config.json"), entry("README.md")], {"config.json": BODY, "README.md": BODY})
    with pytest.raises(
        DownloadRefused, match=r"refusing artifact 'README.md': .*README.md exists and is not"
    ):
        client_of(app).download("job_1", repo)
    assert (repo / "README.md").read_text() == "mine\n"
    assert (repo / "config.json").read_bytes() == BODY  # written before the refusal: this download's own
    # the same listing again, with the user's file moved away: the first file is kept, the second fetched
    (repo / "README.md").unlink()
    paths = client_of(app).download("job_1", repo)
    assert paths == [repo / "config.json", repo / "README.md"]
    assert (repo / "README.md").read_bytes() == BODY


def test_a_body_longer_than_listed_is_cut_off_and_removed(tmp_path: Path) -> None:
    flood = b"x" * (3 << 20)
    app = hostile_server([entry("model.safetensors", flood, size=10)], {"model.safetensors": flood})
    with pytest.raises(DownloadRefused, match="the server sent more than its listed 10 bytes"):
        client_of(app).download("job_1", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_folder_that_links_out_of_the_destination_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "sparsity-0.2").symlink_to(elsewhere, target_is_directory=True)
    app = hostile_server([entry("sparsity-0.2/config.json")], {"sparsity-0.2/config.json": BODY})
    with pytest.raises(DownloadRefused, match="sparsity-0.2 is not a folder this download can write in"):
        client_of(app).download("job_1", dest)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ([entry("a"), entry("a")], "refusing artifact 'a': it is listed twice"),
        ([entry("a"), entry("a/b")], "refusing artifact 'a': another artifact's folder has the same name"),
        ([entry("a"), entry("a.part")], "refusing artifact 'a.part': it is the name of another artifact's"),
        ([{**entry("a"), "bytes": -1}], "refusing artifact 'a': its size -1 is not a number of bytes"),
        ([{**entry("a"), "sha256": "00"}], "refusing artifact 'a': its sha256 is not 64 hexadecimal digits"),
    ],
)
def test_listings_that_collide_or_lie_are_refused(
    tmp_path: Path, listing: list[dict[str, object]], message: str
) -> None:
    app = hostile_server(listing, {"a": BODY, "a/b": BODY, "a.part": BODY})
    with pytest.raises(DownloadRefused) as refused:
        client_of(app).download("job_1", tmp_path / "out")
    assert str(refused.value).startswith(message)
    assert not (tmp_path / "out").exists()


def test_a_partial_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    os.symlink(target, dest / "config.json.part")
    app = hostile_server([entry("config.json")], {"config.json": BODY})
    with pytest.raises(DownloadRefused, match="config.json.part is a link or a folder"):
        client_of(app).download("job_1", dest)
    assert target.read_bytes() == b"keep"


def test_a_wrong_body_is_removed_and_named(tmp_path: Path) -> None:
    app = hostile_server([entry("config.json")], {"config.json": b'{"hidden_size": 9}'})
    with pytest.raises(DownloadRefused, match="'config.json': its sha256 does not match the listing"):
        client_of(app).download("job_1", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
