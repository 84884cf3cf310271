"""Object storage against the S3-protocol server: round trips, listing, verified writes, retries."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from botocore.exceptions import ResponseStreamingError

from lorasweep_trainer import storage

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(monkeypatched_s3_env, s3_bucket: str):
    storage.reset_client()
    yield f"s3://{s3_bucket}"
    storage.reset_client()


def test_round_trip_and_listing(s3: str) -> None:
    storage.write_bytes(f"{s3}/ntu/b.avi", b"bb")
    storage.write_bytes(f"{s3}/ntu/a.avi", b"a")
    storage.write_bytes(f"{s3}/other/c.avi", b"c")
    listed = storage.list_objects(f"{s3}/ntu/")
    assert [(item.uri, item.name, item.size) for item in listed] == [
        (f"{s3}/ntu/a.avi", "a.avi", 1),
        (f"{s3}/ntu/b.avi", "b.avi", 2),
    ]
    assert storage.read_bytes(f"{s3}/ntu/b.avi") == b"bb"


def test_upload_folder_keeps_relative_names(s3: str, tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text("{}")
    written = storage.upload_folder(tmp_path, f"{s3}/trial/")
    assert written == [f"{s3}/trial/adapter/adapter_config.json", f"{s3}/trial/metrics.json"]


def test_writes_are_verified_by_sha256_checksums(s3: str, s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.write_bytes(f"{s3}/trial/metrics.json", b"payload")
    head = s3_server.client().head_object(
        Bucket=s3.removeprefix("s3://"), Key="trial/metrics.json", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"payload").digest()).decode()

    # Real S3 and MinIO refuse a body that does not match its checksum header; moto does not check it, so a
    # server that stored something else is played by a client whose PUT answers with another checksum.
    class CorruptingServer:
        def put_object(self, **request: object) -> dict[str, str]:
            assert request["ChecksumAlgorithm"] == "SHA256" and "ContentMD5" not in request
            return {
                "ETag": '"not-an-md5"',
                "ChecksumSHA256": base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
            }

    monkeypatch.setattr(storage, "_client", CorruptingServer())
    monkeypatch.setattr(storage, "BACKOFF_BASE_SECONDS", 0.001)
    with pytest.raises(storage.StorageError, match="did not verify"):
        storage.write_bytes(f"{s3}/trial/other.json", b"payload")


def test_reads_retry_a_broken_body_then_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "BACKOFF_BASE_SECONDS", 0.001)
    calls = []

    def flaky() -> bytes:
        calls.append(1)
        if len(calls) < 3:
            raise ResponseStreamingError(error="connection reset")
        return b"ok"

    assert storage.with_retries("GET x", flaky, (ResponseStreamingError,)) == b"ok"
    assert len(calls) == 3

    def broken() -> bytes:
        raise ResponseStreamingError(error="connection reset")

    with pytest.raises(storage.StorageError, match=f"GET x failed after {storage.READ_ATTEMPTS} attempts"):
        storage.with_retries("GET x", broken, (ResponseStreamingError,))


def test_missing_local_dataset_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.list_objects(str(tmp_path / "nowhere"))


def test_missing_bucket_is_reported_like_a_missing_folder(s3: str) -> None:
    with pytest.raises(
        FileNotFoundError, match="bucket 'no-such-bucket-here' of 's3://no-such-bucket-here/ntu/' does not exist"
    ):
        storage.list_objects("s3://no-such-bucket-here/ntu/")
