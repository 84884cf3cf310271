"""Storage faults against the S3-protocol server (moto over HTTP), through a fault proxy in front of it: throttling
and dropped connections are retried with backoff, a checksum mismatch retries the write, an ETag that is no MD5
(SSE-KMS, SSE-C) is no error, and a trainer killed mid-upload leaves no partial object under a final key."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fault_proxy import Fault, FaultProxy, slow_down
from fixtures_cluster import wait_for
from lorasweep_trainer import storage

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


@pytest.fixture
def proxy(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The S3 server's env, with the endpoint pointing at the fault proxy."""
    with FaultProxy(s3_server.endpoint_url) as fault_proxy:
        for key, value in {**s3_server.env, "AWS_ENDPOINT_URL_S3": fault_proxy.url}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(storage, "BACKOFF_BASE_SECONDS", 0.01)
        storage.reset_client()
        yield fault_proxy
    storage.reset_client()


def _keys(s3_server: Any, bucket: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_slow_down_and_connection_resets_are_retried(proxy: FaultProxy, s3_server: Any, s3_bucket: str) -> None:
    proxy.add(slow_down("PUT"), slow_down("PUT"), Fault("PUT", "reset"), slow_down("GET"), Fault("GET", "reset"))
    storage.write_bytes(f"s3://{s3_bucket}/trial/metrics.json", b'{"ok": true}')
    assert proxy.count("PUT") == 4  # two throttled, one reset, one written
    assert storage.read_bytes(f"s3://{s3_bucket}/trial/metrics.json") == b'{"ok": true}'
    assert proxy.count("GET") == 3
    assert proxy.faults == []


def test_an_etag_that_is_no_md5_is_no_error_and_a_checksum_mismatch_is_retried(
    proxy: FaultProxy, s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    # SSE-KMS and SSE-C buckets answer an ETag that is not the body's MD5.
    kms_etag = Fault("PUT", "rewrite", rewrite=lambda headers: {**headers, "ETag": '"0123456789abcdef-kms"'})
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    mismatch = Fault("PUT", "rewrite", rewrite=lambda headers: {**headers, "x-amz-checksum-sha256": wrong})
    proxy.add(kms_etag, mismatch)
    storage.write_bytes(f"s3://{s3_bucket}/a.json", b"payload")
    storage.write_bytes(f"s3://{s3_bucket}/b.json", b"payload")
    assert proxy.count("PUT") == 3  # b.json twice: its first answer did not verify
    # The transfer manager's path: the checksum the server stored, read back by HEAD, must match the file's.
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(300_000))
    (tmp_path / "confusion_matrix.png").write_bytes(b"png")
    proxy.add(Fault("HEAD", "rewrite", rewrite=lambda headers: {**headers, "x-amz-checksum-sha256": wrong}))
    written = storage.upload_folder(tmp_path, f"s3://{s3_bucket}/trial/")
    assert written == [
        f"s3://{s3_bucket}/trial/adapter/adapter_model.safetensors",
        f"s3://{s3_bucket}/trial/confusion_matrix.png",
    ]
    assert proxy.count("HEAD") == 3 and proxy.faults == []
    head = s3_server.client().head_object(
        Bucket=s3_bucket, Key="trial/adapter/adapter_model.safetensors", ChecksumMode="ENABLED"
    )
    expected = (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(expected).digest()).decode()


def test_a_checksum_that_never_verifies_fails_the_write(proxy: FaultProxy, s3_bucket: str) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    proxy.add(
        *[Fault("PUT", "rewrite", rewrite=lambda h: {**h, "x-amz-checksum-sha256": wrong})] * storage.READ_ATTEMPTS
    )
    with pytest.raises(storage.StorageError, match="did not verify: stored SHA-256"):
        storage.write_bytes(f"s3://{s3_bucket}/c.json", b"payload")


UPLOADER = """
import sys
from pathlib import Path
from lorasweep_trainer import storage
storage.MULTIPART_THRESHOLD = 5 * 1024 * 1024  # the smallest part S3 allows
storage.upload_folder(Path(sys.argv[1]), sys.argv[2])
"""


def test_killed_mid_upload_leaves_no_partial_object_and_the_retry_writes_the_same_keys(
    proxy: FaultProxy, s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    (work / "adapter").mkdir(parents=True)
    (work / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(12 * 1024 * 1024))  # multipart
    (work / "adapter" / "adapter_config.json").write_text("{}")
    prefix = f"s3://{s3_bucket}/ns/sweep/trials/t1/"
    proxy.add(Fault("PUT", "hold", query="partNumber=2"))  # the second part never arrives
    child = subprocess.Popen([sys.executable, "-c", UPLOADER, str(work), prefix], env=dict(os.environ))
    try:
        wait_for("the upload to reach its second part", proxy.held.is_set, timeout=120, interval=0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert "ns/sweep/trials/t1/adapter/adapter_model.safetensors" not in _keys(s3_server, s3_bucket)
    proxy.release.set()

    retry = subprocess.run([sys.executable, "-c", UPLOADER, str(work), prefix], env=dict(os.environ), timeout=300)
    assert retry.returncode == 0
    assert _keys(s3_server, s3_bucket) == [
        "ns/sweep/trials/t1/adapter/adapter_config.json",
        "ns/sweep/trials/t1/adapter/adapter_model.safetensors",
    ]
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="ns/sweep/trials/t1/adapter/adapter_model.safetensors")
    assert body["Body"].read() == (work / "adapter" / "adapter_model.safetensors").read_bytes()
