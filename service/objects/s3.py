"""S3 storage: keys as objects in an S3-compatible bucket; boto3 reads the endpoint and the credentials
from the standard AWS_* variables. Every object carries its sha256 as user metadata."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from service.objects.storage import (
    CHUNK,
    ChecksumMismatch,
    ObjectInfo,
    ObjectMissing,
    Storage,
    StorageError,
    write_verified,
)
from service.settings import SettingsError

PART_BYTES = 16 * CHUNK  # memory held per upload; S3 allows 10,000 parts (so 160 GB before they grow)
MAX_PARTS = 10_000
SHA256_META = "sha256"  # user metadata (x-amz-meta-sha256): the hex digest a fetch verifies against
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


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
