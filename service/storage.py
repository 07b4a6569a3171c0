"""Where uploaded files and job artifacts live: a directory under data_dir, or an S3-compatible bucket.

`FWDPRUNE_STORAGE_URL` picks one. Unset, everything is a file under data_dir, as with one host (or a
shared disk): uploads and checkpoints are renamed into place and served straight from disk. `s3://bucket/
prefix` keeps them in an object store instead, so the API and the workers need no disk in common; boto3
reads the endpoint and credentials from the standard AWS_* variables (never from the URL).

Keys are relative, `/`-separated names, laid out as:
    files/<file_id><suffix>              an uploaded calibration or evaluation file
    jobs/<job_id>/<name>                 a published artifact, local storage (the worker renames it there)
    jobs/<job_id>/<attempt>/<name>       an artifact in the object store, uploaded by the attempt's job
                                         runner; only the attempt whose fenced commit won is ever served

Every object carries the sha256 it was published with: a put refuses bytes that do not hash to it, and a
fetch refuses an object that no longer does. Errors name the failed action and the store's reason (an S3
error code), never a path, an endpoint or a credential, so the API can pass them on.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from service.settings import Settings, SettingsError, parse_s3_url

CHUNK = 1 << 20
PART_BYTES = 16 * CHUNK  # memory held per upload; S3 allows 10,000 parts (so 160 GB before they grow)
MAX_PARTS = 10_000
SHA256_META = "sha256"  # user metadata (x-amz-meta-sha256): the hex digest a fetch verifies against
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class StorageError(Exception):
    """The store refused an operation or could not be reached; the message is safe to show a client."""


class ObjectMissing(StorageError):
    """No object under that key."""


class ChecksumMismatch(StorageError):
    """Bytes that do not hash to the sha256 they were published with."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    modified: float  # epoch seconds


def file_key(file_id: str, suffix: str) -> str:
    return f"files/{file_id}{suffix}"


def job_prefix(job_id: str) -> str:
    """Every stored artifact of a job, whatever attempt published it."""
    return f"jobs/{job_id}"


def attempt_prefix(job_id: str, attempt: int) -> str:
    """One attempt's uploads to the object store; published only if its fenced commit wins."""
    return f"{job_prefix(job_id)}/{attempt}"


def artifact_key(job_id: str, artifact: dict[str, Any]) -> str:
    """Where a published artifact is stored: its recorded key, or the local layout's (a job published by
    a rename records none)."""
    return str(artifact.get("key") or f"{job_prefix(job_id)}/{artifact['name']}")


def stored_attempts(keys: Iterable[str]) -> set[tuple[str, int]]:
    """(job id, attempt) of every `jobs/<job_id>/<attempt>/...` key."""
    found = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) > 3 and parts[0] == "jobs" and parts[2].isdigit():
            found.add((parts[1], int(parts[2])))
    return found


def write_verified(chunks: Iterable[bytes], dest: Path, sha256: str, what: str) -> None:
    """Write `chunks` to `dest` only if they hash to `sha256`; nothing is left behind if they do not."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ChecksumMismatch(f"{what} does not match its sha256")
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


class Storage(ABC):
    """Keyed objects: put, fetch, ranged reads, listing and deletion, the same for disk and bucket."""

    local = False  # True where keys are files on this host's disk

    @property
    @abstractmethod
    def url(self) -> str:
        """How another process on this host opens the same storage (a job runner's --storage-url)."""

    def local_path(self, key: str) -> Path | None:
        """The file that holds `key`, where storage is this host's disk; None for an object store."""
        return None

    @abstractmethod
    def put_file(self, source: Path, key: str, sha256: str) -> None:
        """Store `source` under `key`, refusing it unless it hashes to `sha256`. The source is moved
        (local) or copied (object store): callers remove whatever is left of it."""

    @abstractmethod
    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> None:
        """Copy `key` to `dest`, verified against `sha256` (default: the one stored with the object)."""

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes `start` to `end` (inclusive; None: to the end) of `key`, a chunk at a time. The object
        is opened before this returns, so a missing one raises ObjectMissing here, not mid-stream."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time of `key`; None if there is no such object."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing one is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under the folder `prefix` (`jobs/j1` removes `jobs/j1/...`, not `jobs/j10`)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under the folder `prefix`, sorted."""

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A URL that GETs `key` without an API key until it expires; None where storage has none."""
        return None


class LocalStorage(Storage):
    """Keys as files under a root directory (data_dir): renames into place, reads straight from disk."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return self.root.resolve().as_uri()

    def local_path(self, key: str) -> Path:
        root = self.root.resolve()
        # an absolute key is a file row from before keys: accepted while it lies under the root
        path = (root / key).resolve()
        if path == root or not path.is_relative_to(root):
            raise StorageError("a storage key must name a file under the storage root")
        return path

    def put_file(self, source: Path, key: str, sha256: str) -> None:
        dest = self.local_path(key)
        self._make_folders(dest.parent)
        try:
            os.replace(source, dest)  # the bytes do not move, so there is nothing in transit to verify
        except OSError as err:
            if err.errno != errno.EXDEV:  # another filesystem: the bytes are copied, and checked
                raise
            write_verified(_file_chunks(source), dest, sha256, key)

    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> None:
        if sha256 is None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._existing(key), dest)
        else:
            write_verified(self.read(key), dest, sha256, key)

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        handle = self._existing(key).open("rb")
        handle.seek(start)
        return _file_chunks(handle, None if end is None else end + 1 - start)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.local_path(key)
        if not path.is_file():
            return None
        stat = path.stat()
        return ObjectInfo(stat.st_size, stat.st_mtime)

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.local_path(prefix), ignore_errors=True)

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.local_path(prefix)
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}/{path.relative_to(folder).as_posix()}" for path in regular_files(folder))

    def _make_folders(self, folder: Path) -> None:
        """Make `folder` and those between it and the root, one at a time. The root itself is made at
        setup only (`Settings.ensure_dirs`): one that went away (an unmounted data directory) is an
        error, never made again on whatever filesystem is left under its path."""
        root = self.root.resolve()
        missing = []
        while folder != root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        try:
            if not root.is_dir():
                raise FileNotFoundError(root)
            for path in reversed(missing):
                path.mkdir(exist_ok=True)  # never parents=True: that would make the root again
        except FileNotFoundError as err:
            raise StorageError("the storage directory is gone") from err

    def _existing(self, key: str) -> Path:
        path = self.local_path(key)
        if not path.is_file():
            raise ObjectMissing("no such stored object")
        return path


class S3Storage(Storage):
    """Keys as objects under `prefix/` in an S3 bucket (AWS, MinIO, any S3-compatible store)."""

    def __init__(self, bucket: str, prefix: str = "", part_bytes: int = PART_BYTES) -> None:
        self.bucket, self.prefix, self.part_bytes = bucket, prefix, part_bytes
        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise SettingsError(
                "S3 storage needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(and AWS_ENDPOINT_URL for a store other than AWS)"
            )
        # SigV4 everywhere: MinIO and newer AWS regions accept nothing else, presigned URLs included
        config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"})
        # AWS_REGION is the AWS SDKs' common name; boto3 itself reads only AWS_DEFAULT_REGION
        region = os.environ.get("AWS_REGION") or None
        self.client = session.client("s3", config=config, region_name=region)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, source: Path, key: str, sha256: str) -> None:
        size = source.stat().st_size
        with source.open("rb") as handle:
            if size <= self.part_bytes:
                self._put_whole(handle, key, sha256)
            else:
                self._put_parts(handle, key, sha256, max(self.part_bytes, -(-size // MAX_PARTS)))

    def _put_whole(self, handle: IO[bytes], key: str, sha256: str) -> None:
        body = handle.read()
        if hashlib.sha256(body).hexdigest() != sha256:
            raise ChecksumMismatch(f"{key} does not match its sha256")
        with _s3_errors("store an object"):
            # the store recomputes ChecksumSHA256 over what it received and refuses the put if it differs
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=body,
                ChecksumSHA256=_base64(sha256),
                Metadata={SHA256_META: sha256},
            )

    def _put_parts(self, handle: IO[bytes], key: str, sha256: str, part_bytes: int) -> None:
        """A multipart upload, each part checked by the store; it completes (and the object appears) only
        if the whole file hashed to `sha256` on its way out, and is aborted otherwise."""
        target = {"Bucket": self.bucket, "Key": self._key(key)}
        with _s3_errors("start an upload"):
            upload = self.client.create_multipart_upload(
                **target, ChecksumAlgorithm="SHA256", Metadata={SHA256_META: sha256}
            )
        upload_id = upload["UploadId"]
        try:
            digest = hashlib.sha256()
            parts: list[dict[str, Any]] = []
            while part := handle.read(part_bytes):
                digest.update(part)
                checksum = base64.b64encode(hashlib.sha256(part).digest()).decode()
                number = len(parts) + 1
                with _s3_errors("store an object"):
                    answer = self.client.upload_part(
                        **target, UploadId=upload_id, PartNumber=number, Body=part, ChecksumSHA256=checksum
                    )
                parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})
            if digest.hexdigest() != sha256:
                raise ChecksumMismatch(f"{key} does not match its sha256")
            with _s3_errors("store an object"):
                self.client.complete_multipart_upload(
                    **target, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.abort_multipart_upload(**target, UploadId=upload_id)
            raise

    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> None:
        answer = self._get(key)
        expected = sha256 or answer.get("Metadata", {}).get(SHA256_META)
        if expected is None:
            answer["Body"].close()
            raise ChecksumMismatch(f"{key} has no sha256 to verify it against")
        write_verified(_body_chunks(answer["Body"]), dest, expected, key)

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        whole = start == 0 and end is None
        byte_range = None if whole else f"bytes={start}-{'' if end is None else end}"
        return _body_chunks(self._get(key, byte_range)["Body"])

    def _get(self, key: str, byte_range: str | None = None) -> dict[str, Any]:
        ranged = {"Range": byte_range} if byte_range else {}
        with _s3_errors("read an object"):
            answer: dict[str, Any] = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)
        return answer

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with _s3_errors("look an object up"):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return None
        return ObjectInfo(int(head["ContentLength"]), head["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        with _s3_errors("delete an object"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys a call
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            with _s3_errors("delete objects"):
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if answer.get("Errors"):
                raise StorageError(
                    f"the object store refused to delete objects ({answer['Errors'][0]['Code']})"
                )
        self._abort_uploads(prefix)

    def _abort_uploads(self, prefix: str) -> None:
        """Multipart uploads a killed job runner left unfinished: invisible, but their parts take space."""
        target = self._key(prefix) + "/"
        with _s3_errors("list unfinished uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=target
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )

    def list_keys(self, prefix: str) -> list[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        with _s3_errors("list objects"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix) + "/"
            )
            for page in pages:
                keys += [item["Key"][start:] for item in page.get("Contents", [])]
        return sorted(keys)

    def presigned_url(self, key: str, expires_s: int) -> str:
        with _s3_errors("sign a download"):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
            )
        return url


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


@contextlib.contextmanager
def _s3_errors(action: str) -> Iterator[None]:
    """botocore's errors as StorageError: the action and the store's error code, nothing more (its own
    messages can name the endpoint and the bucket)."""
    try:
        yield
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", "unknown"))
        if code in MISSING_CODES:
            raise ObjectMissing("no such stored object") from err
        raise StorageError(f"the object store refused to {action} ({code})") from err
    except NoCredentialsError as err:
        raise StorageError(f"the object store has no credentials to {action} with") from err
    except BotoCoreError as err:
        raise StorageError(f"the object store could not {action} ({type(err).__name__})") from err


def _base64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _body_chunks(body: Any) -> Iterator[bytes]:
    """An S3 response body a chunk at a time, closed (its connection back in the pool) however it ends."""
    try:
        with _s3_errors("read an object"):
            yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def _file_chunks(source: Path | IO[bytes], size: int | None = None) -> Iterator[bytes]:
    """At most `size` bytes (None: all) of a file, from where it stands, a chunk at a time."""
    with source.open("rb") if isinstance(source, Path) else source as handle:
        while size is None or size > 0:
            chunk = handle.read(CHUNK if size is None else min(CHUNK, size))
            if not chunk:
                return
            if size is not None:
                size -= len(chunk)
            yield chunk


def regular_files(directory: Path) -> Iterator[Path]:
    """Regular files under `directory`; symbolic links, and folders reached through one, are skipped."""
    for path in directory.iterdir():
        if path.is_symlink():
            continue
        if path.is_dir():
            yield from regular_files(path)
        elif path.is_file():
            yield path
