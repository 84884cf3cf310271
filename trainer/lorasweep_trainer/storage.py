"""Object storage for the trainer: ``s3://bucket/prefix/`` URIs or local folders, behind the same few functions.

- Reads retry twice over: botocore's standard retry mode handles throttling and connection errors of the
  request; our own loop (exponential backoff with jitter) retries a body that breaks off mid-stream, which
  botocore does not.
- Writes are complete or absent. S3: the SDK's own checksums (``ChecksumAlgorithm=SHA256``: the server checks
  the body against the checksum header and rejects a corrupted one), then the checksum the server stored is
  compared with ours; a mismatch is retried. An ETag is no MD5 under SSE-KMS or SSE-C, so it is never compared.
  Folders go through the SDK's transfer manager (``upload_file``: streamed from disk, multipart past
  ``MULTIPART_THRESHOLD``), several files at once. A PUT never shows a partial object and a multipart upload
  shows none before it completes, so a trainer killed mid-upload leaves nothing under a final key (only an
  incomplete multipart upload, which a bucket lifecycle rule removes); the retry writes the same keys.
  Local: write a temporary file in the same folder, fsync, then ``os.replace`` (atomic on POSIX).
- The endpoint comes from ``AWS_ENDPOINT_URL_S3`` (read by boto3 itself), credentials from the usual chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_ATTEMPTS = 5
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0
CHECKSUM_ALGORITHM = "SHA256"
# Trial artifacts (adapters of a few MB, metrics, figures) stay single PUTs; larger files go multipart.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
UPLOAD_CONCURRENCY = 8
# What S3 answers a conditional write when the object exists (412; ConditionalRequestConflict when another
# conditional write of the same key is under way).
PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


class StorageError(RuntimeError):
    """A storage operation failed after retries, or a written object did not verify."""


class ChecksumMismatch(StorageError):
    """The server stored other bytes than were sent; the write is tried again."""


@dataclass(frozen=True)
class StoredObject:
    uri: str
    name: str  # the last path component, e.g. S001C001P001R001A008_rgb.avi
    size: int
    etag: str = ""  # S3's ETag, or a local file's modification time: with the size, what identifies its content


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}; write it as s3://bucket/prefix/")
    return bucket, key


def join(prefix: str, name: str) -> str:
    """Join a folder or prefix URI and a relative name with exactly one slash."""
    return f"{prefix.rstrip('/')}/{name.lstrip('/')}"


_client_lock = threading.Lock()
_client: Any = None


def s3_client(max_pool_connections: int = 16) -> Any:
    """One shared client (boto3 clients are thread-safe once built; building one is not)."""
    global _client
    with _client_lock:
        if _client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 8, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=max_pool_connections,
            )
            _client = boto3.client("s3", config=config)
        return _client


def reset_client() -> None:
    """Forget the shared client, e.g. after the endpoint env changed (tests)."""
    global _client
    with _client_lock:
        _client = None


def _transient_read_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    return (BotoConnectionError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError, ConnectionError)


def with_retries(what: str, operation: Callable[[], T], retry_on: tuple[type[BaseException], ...]) -> T:
    """Run ``operation``; on ``retry_on`` errors back off exponentially (with jitter) and try again."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return operation()
        except retry_on as error:
            if attempt == READ_ATTEMPTS:
                raise StorageError(f"{what} failed after {READ_ATTEMPTS} attempts: {error}") from error
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("storage retry what=%s attempt=%d delay_s=%.2f error=%s", what, attempt, delay, error)
            time.sleep(delay)
    raise AssertionError("unreachable")


def list_objects(source: str) -> list[StoredObject]:
    """Every object under an ``s3://`` prefix or every file under a local folder, sorted by URI.

    A missing bucket or folder is a FileNotFoundError (the trainer reports it as an unusable dataset, exit 3)."""
    if is_s3(source):
        from botocore.exceptions import ClientError

        bucket, prefix = split_s3(source)
        paginator = s3_client().get_paginator("list_objects_v2")
        try:
            found = [
                StoredObject(
                    uri=f"s3://{bucket}/{item['Key']}",
                    name=item["Key"].rsplit("/", 1)[-1],
                    size=item["Size"],
                    etag=str(item.get("ETag", "")).strip('"'),
                )
                for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", [])
            ]
        except ClientError as error:
            # Like a missing local folder: retrying cannot make the bucket appear, so callers treat it as absent.
            if error.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise FileNotFoundError(f"bucket {bucket!r} of {source!r} does not exist") from error
            raise
    else:
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {source!r} does not exist")
        found = [
            StoredObject(uri=str(path), name=path.name, size=stat.st_size, etag=f"mtime:{stat.st_mtime_ns}")
            for path in root.rglob("*")
            if path.is_file() and (stat := path.stat())
        ]
    return sorted(found, key=lambda item: item.uri)


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = split_s3(uri)

    def get() -> bytes:
        body: bytes = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    return with_retries(f"GET {uri}", get, _transient_read_errors())


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def _verify(uri: str, stored: str | None, expected: str) -> None:
    if stored is not None and stored != expected:
        raise ChecksumMismatch(f"PUT {uri} did not verify: stored SHA-256 {stored} != sent {expected}")


def _write_errors() -> tuple[type[BaseException], ...]:
    return (*_transient_read_errors(), ChecksumMismatch)


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream", if_absent: bool = False) -> bool:
    """Write one object completely or not at all, verified by its SHA-256 checksum. ``if_absent``: only when no
    object is there yet (S3's conditional write ``If-None-Match: *``; locally a hard link, which cannot replace a
    file); returns False when one was, and leaves it as it is."""
    if not is_s3(uri):
        return _write_local(Path(uri), data, if_absent)
    bucket, key = split_s3(uri)
    expected = _sha256(data)
    condition = {"IfNoneMatch": "*"} if if_absent else {}

    def put() -> bool:
        from botocore.exceptions import ClientError

        try:
            response = s3_client().put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ChecksumAlgorithm=CHECKSUM_ALGORITHM,
                **condition,
            )
        except ClientError as error:
            if if_absent and error.response.get("Error", {}).get("Code") in PRECONDITION_FAILED:
                return False
            raise
        _verify(uri, response.get("ChecksumSHA256"), expected)
        return True

    return with_retries(f"PUT {uri}", put, _write_errors())


def upload_file(path: Path, uri: str) -> None:
    """One file through the SDK's transfer manager (streamed, multipart when large), verified like write_bytes."""
    if not is_s3(uri):
        _copy_local(path, Path(uri))
        return
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(uri)
    # A multipart object's stored checksum is one of its parts' checksums (each checked by the server as it
    # arrived), so only a single PUT's is compared with the file's.
    single = path.stat().st_size < MULTIPART_THRESHOLD
    expected = _file_sha256(path) if single else ""
    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, use_threads=False)

    def put() -> None:
        client = s3_client()
        extra = {"ChecksumAlgorithm": CHECKSUM_ALGORITHM}
        client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config)
        if single:
            head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            _verify(uri, head.get("ChecksumSHA256"), expected)

    with_retries(f"PUT {uri}", put, _write_errors())


def _write_local(path: Path, data: bytes, if_absent: bool = False) -> bool:
    return _replace_local(path, lambda handle: handle.write(data), if_absent)


def _copy_local(source: Path, path: Path) -> None:
    with source.open("rb") as original:
        _replace_local(path, lambda handle: shutil.copyfileobj(original, handle))


def _replace_local(path: Path, write: Callable[[BinaryIO], object], if_absent: bool = False) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if not if_absent:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails, atomically, when the file exists
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def upload_folder(folder: Path, prefix: str) -> list[str]:
    """Write every file under ``folder`` to ``prefix`` (same relative names), several at once; returns the URIs."""
    pairs = [
        (path, join(prefix, path.relative_to(folder).as_posix()))
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    ]
    with ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY, thread_name_prefix="upload") as pool:
        for done in [pool.submit(upload_file, path, uri) for path, uri in pairs]:
            done.result()
    return [uri for _, uri in pairs]


DOWNLOAD_BLOCK = 1024 * 1024


def download(uri: str, path: Path) -> tuple[int, str]:
    """Stream one object or file to ``path`` (complete or absent, like a write), hashing it on the way; returns
    (bytes, SHA-256 hex). One GET per attempt; a body that breaks off is fetched again from the start."""
    result: list[tuple[int, str]] = []

    def copy(blocks: Iterator[bytes]) -> Callable[[BinaryIO], object]:
        def write(handle: BinaryIO) -> None:
            digest, size = hashlib.sha256(), 0
            for block in blocks:
                handle.write(block)
                digest.update(block)
                size += len(block)
            result.append((size, digest.hexdigest()))

        return write

    if not is_s3(uri):
        with Path(uri).open("rb") as original:
            _replace_local(path, copy(iter(lambda: original.read(DOWNLOAD_BLOCK), b"")))
        return result[-1]
    bucket, key = split_s3(uri)

    def get() -> None:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        _replace_local(path, copy(body.iter_chunks(DOWNLOAD_BLOCK)))

    with_retries(f"GET {uri}", get, _transient_read_errors())
    return result[-1]


def content_key(material: Mapping[str, Any]) -> str:
    """The key of a content-addressed cache entry: SHA-256 of ``material`` as canonical JSON."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def sha256_hex(path: Path) -> tuple[int, str]:
    """(bytes, SHA-256 hex) of a local file."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(DOWNLOAD_BLOCK), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def read_bytes_if_exists(uri: str) -> bytes | None:
    """`read_bytes`, or None when there is no such object or file (a cache miss, not an error)."""
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        return None
    except Exception as error:
        from botocore.exceptions import ClientError

        if isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise
