"""A data directory that goes away under a running service (a lazy unmount leaves the empty folder it
was mounted on): nothing is made again in its place, and readiness says so.

The unmount is played by renaming the data directory away and making an empty one at its path, as the
mount point left behind would be.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from service import datadir
from service.main import create_app
from service.objects.local import LocalStorage
from service.objects.storage import StorageError
from service.settings import Settings
from service.store import Store
from service.worker import Worker
from tests.service.conftest import ADMIN, KEY_A

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def _unmount(data_dir: Path) -> Path:
    """Move the data directory away and leave an empty folder at its path; where it went."""
    detached = data_dir.with_name("detached")
    data_dir.rename(detached)
    data_dir.mkdir()
    return detached


def test_the_store_never_creates_its_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with pytest.raises(OperationalError, match="unable to open database file"):
        Store(f"sqlite:///{db}", migrate=False).get_job("job_1")
    assert not db.exists()  # not an empty database that answers "no such table: jobs"
    store = Store(f"sqlite:///{db}")  # the migrations make it
    try:
        assert db.is_file() and store.get_job("job_1") is None
    finally:
        store.close()


def test_local_storage_never_makes_its_root_again(tmp_path: Path) -> None:
    root, source = tmp_path / "data", tmp_path / "upload.txt"
    (root / "files").mkdir(parents=True)
    source.write_text("text")
    storage = LocalStorage(root)
    storage.put_file(source, "files/file_1.txt", "unchecked on one filesystem")
    (root / "files" / "file_1.txt").unlink()
    (root / "files").rmdir()
    source.write_text("text")
    storage.put_file(source, "files/file_2.txt", "-")  # below the root, folders are made as needed
    assert (root / "files" / "file_2.txt").is_file()
    (root / "files" / "file_2.txt").unlink()
    (root / "files").rmdir()
    root.rmdir()
    source.write_text("text")
    with pytest.raises(StorageError, match="the storage directory is gone"):
        storage.put_file(source, "files/file_3.txt", "-")
    assert not root.exists()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(data_dir=tmp_path / "data", api_keys=[KEY_A], admin_keys=[ADMIN], device="cpu")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        worker = Worker(settings, slots=1, store=Store(settings.db_url, migrate=False))
        try:
            worker.beat()
            yield client, settings
        finally:
            worker.shutdown()


def _ready(client: TestClient) -> tuple[int, dict[str, object]]:
    response = client.get("/readyz", headers=ADMIN_HEADERS)
    return response.status_code, response.json()


def test_an_unmounted_data_directory_takes_no_upload_and_is_not_ready(
    app: tuple[TestClient, Settings],
) -> None:
    client, settings = app
    code, health = _ready(client)
    assert code == 200 and health["data_dir"] is True and health["store"] is True
    _unmount(settings.data_dir)
    upload = client.post(
        "/v1/files",
        files={"file": ("calib.txt", b"some text")},
        headers={"Authorization": f"Bearer {KEY_A}"},
    )
    assert upload.status_code == 503 and upload.json() == {"detail": "the server's upload directory is gone"}
    assert list(settings.data_dir.iterdir()) == []  # neither files/ nor a database made again in its place
    code, health = _ready(client)
    assert code == 503 and health["data_dir"] is False and health["store"] is False


def test_a_sqlite_file_replaced_under_the_store_is_not_ready(app: tuple[TestClient, Settings]) -> None:
    client, settings = app
    db = settings.data_dir / "fwdprune.db"
    db.rename(settings.data_dir / "moved.db")
    db.write_bytes(b"")  # another file at its path: what an open connection reads is no longer it
    code, health = _ready(client)
    assert code == 503 and health["store"] is False and health["data_dir"] is True


def test_a_data_directory_that_takes_no_writes_is_not_ready(
    app: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only remount; played by the write probe failing as it would (root ignores file modes)."""
    client, _ = app

    def read_only(path: Path) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(datadir, "probe_write", read_only)
    code, health = _ready(client)
    assert code == 503 and health["data_dir"] is False and health["store"] is True


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FWDPRUNE_"):
            monkeypatch.delenv(name)
