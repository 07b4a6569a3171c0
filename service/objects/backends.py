"""The storage the settings or a URL name: local (a file: URL, or no FWDPRUNE_STORAGE_URL) or S3."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from service.objects.local import LocalStorage
from service.objects.s3 import S3Storage
from service.objects.storage import Storage
from service.settings import Settings, parse_s3_url


def open_storage(settings: Settings) -> Storage:
    """The storage `settings` name; SettingsError (before anything is served) if it cannot be used."""
    location = settings.s3_location
    if location is None:
        return LocalStorage(settings.data_dir)
    return S3Storage(*location)


def storage_from_url(url: str) -> Storage:
    """The storage a worker hands its job runner: `Storage.url`, a file: URL for local storage."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStorage(Path(url2pathname(parts.path)))
    return S3Storage(*parse_s3_url(url))
