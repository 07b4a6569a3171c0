"""What a crash mid-upload leaves (a temporary upload file, a stored file no row names) is removed at
start and then every sweep interval, once older than the grace period; younger ones are left alone, as
an upload in flight would be, and so is every file a row names."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from service.store import Store
from service.store.tables import FileRow
from tests.service.conftest import KEY_A, S3Server

HOUR = 3600.0


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", api_keys=[KEY_A], **overrides)
    settings.ensure_dirs()
    return settings


def _file(settings: Settings, name: str, age_s: float = 0.0, size: int = 1000) -> Path:
    path = settings.files_dir / name
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _name(settings: Settings, key: str) -> None:
    """A row naming `key`, as a finished upload has."""
    store = Store(settings.db_url)
    try:
        store.add_file(
            FileRow(
                id=key.removeprefix("files/").split(".")[0],
                owner="o",
                filename="c.jsonl",
                bytes=1000,
                sha256="0" * 64,
                path=key,
                created_at=time.time(),
            )
        )
    finally:
        store.close()


def _until(check: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_leftovers_older_than_the_grace_are_removed_at_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    crashed_upload = _file(settings, ".upload-k9x2", age_s=2 * HOUR, size=9_600_000)  # kill -9 mid-upload
    unnamed = _file(settings, "file_crashed.jsonl", age_s=2 * HOUR)  # put to storage, row never added
    copy = _file(settings, "file_copy.jsonl.part", age_s=2 * HOUR)  # a copy across filesystems, cut off
    in_flight = _file(settings, ".upload-live", age_s=60)
    just_put = _file(settings, "file_new.txt", age_s=60)  # its row goes in a moment from now
    named = _file(settings, "file_kept.jsonl", age_s=2 * HOUR)
    _name(settings, "files/file_kept.jsonl")
    from_before_keys = _file(settings, "file_old.txt", age_s=2 * HOUR)
    _name(settings, str(from_before_keys.resolve()))  # an early row names its file by absolute path
    with TestClient(create_app(settings)):
        remaining = {path.name for path in settings.files_dir.iterdir()}
    assert remaining == {p.name for p in (in_flight, just_put, named, from_before_keys)}
    assert not any(p.exists() for p in (crashed_upload, unnamed, copy))


def test_leftovers_are_swept_periodically(tmp_path: Path) -> None:
    settings = _settings(tmp_path, sweep_interval_s=0.2, sweep_grace_s=HOUR)
    with TestClient(create_app(settings)):
        crashed_upload = _file(settings, ".upload-later", age_s=2 * HOUR)
        unnamed = _file(settings, "file_later.jsonl", age_s=2 * HOUR)
        fresh = _file(settings, ".upload-fresh")
        assert _until(lambda: not crashed_upload.exists() and not unnamed.exists())
        assert fresh.exists()


def test_unnamed_objects_in_the_bucket_are_swept(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    grace_s = 4.0  # an object's age is the store's LastModified, whole seconds: no aging it by hand
    settings = _settings(tmp_path, storage_url=f"s3://{bucket}/svc", sweep_grace_s=grace_s)
    client = s3_server.client()
    for key in ("files/file_crashed.jsonl", "files/file_kept.jsonl"):
        client.put_object(Bucket=bucket, Key=f"svc/{key}", Body=b"text")
    _name(settings, "files/file_kept.jsonl")
    crashed_upload = _file(settings, ".upload-k9x2", age_s=2 * HOUR)  # on the API's own disk
    time.sleep(grace_s + 1.5)  # both objects are past the grace now
    client.put_object(Bucket=bucket, Key="svc/files/file_new.jsonl", Body=b"text")
    put_at = time.monotonic()
    with TestClient(create_app(settings)):
        swept_within_grace = time.monotonic() - put_at < grace_s - 1.0
    keys = s3_server.keys(bucket)
    assert "svc/files/file_crashed.jsonl" not in keys and "svc/files/file_kept.jsonl" in keys
    if swept_within_grace:  # a machine slow enough to start past the grace has made it old
        assert "svc/files/file_new.jsonl" in keys
    assert not crashed_upload.exists()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FWDPRUNE_"):
            monkeypatch.delenv(name)
