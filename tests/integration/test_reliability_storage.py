"""Storage faults against the S3-protocol server (moto over HTTP), through a fault proxy in front of it: throttling
and dropped connections are retried with backoff, a checksum mismatch retries the write, an ETag that is no MD5
(SSE-KMS, SSE-C) is no error, a trainer killed mid-upload leaves no partial object under a final key, and a second
attempt of a finished trial (retried, or run twice at once) keeps the first result."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fault_proxy import Fault, FaultProxy, slow_down
from fixtures_cluster import wait_for
from lorasweep_trainer import storage
from lorasweep_trainer.config import SWEEP_UID_ENV, TrialConfig
from lorasweep_trainer.results import TrialMetrics
from lorasweep_trainer.synth import SynthSpec, write_dataset
from reliability_cases import trial_metrics

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


# --- a second attempt of a finished trial keeps the first result -------------------------------------------------


def test_a_conditional_write_never_replaces_an_object(proxy: FaultProxy, s3_bucket: str, tmp_path: Path) -> None:
    for uri in (f"s3://{s3_bucket}/t/metrics.json", str(tmp_path / "t" / "metrics.json")):
        assert storage.write_bytes(uri, b"first", if_absent=True) is True
        assert storage.write_bytes(uri, b"second", if_absent=True) is False
        assert storage.read_bytes(uri) == b"first"
        assert storage.write_bytes(uri, b"third") is True  # unconditional: replaced
        assert storage.read_bytes(uri) == b"third"
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["metrics.json"]  # no temporary file left


def test_two_attempts_of_one_trial_at_once_keep_the_result_written_first(
    proxy: FaultProxy, s3_server: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lorasweep_trainer import train  # torch: imported here only

    monkeypatch.setenv(SWEEP_UID_ENV, "uid-1")
    output = f"s3://{s3_bucket}/ns/s/trials/t1/"
    cfg = TrialConfig(sweep="s", trial="t1", dataset={"source": f"s3://{s3_bucket}/clips/"}, output=output)
    work = tmp_path / "work"
    (work / "adapter").mkdir(parents=True)
    (work / "adapter" / "adapter_model.safetensors").write_bytes(b"ours")
    ours, theirs = trial_metrics("t1", 0.4, sweep_uid="uid-1"), trial_metrics("t1", 0.9, sweep_uid="uid-1")
    proxy.add(Fault("PUT", "hold", path="adapter_model"))  # this attempt is slow to upload its adapter ...
    results: list[tuple[TrialMetrics, str]] = []
    slow = threading.Thread(target=lambda: results.append(train.publish(work, cfg, ours)))
    slow.start()
    try:
        wait_for("the upload to start", proxy.held.is_set, timeout=60, interval=0.05)
        # ... meanwhile the other attempt finished and wrote its metrics.json
        storage.write_bytes(output + "metrics.json", theirs.to_json().encode())
    finally:
        proxy.release.set()
        slow.join(timeout=120)
    ((kept, uri),) = results
    assert uri == output + "metrics.json" and kept.val_accuracy == 0.9  # what this attempt reports: theirs
    stored = TrialMetrics.model_validate_json(storage.read_bytes(uri))
    assert stored.val_accuracy == 0.9  # the conditional write did not replace it
    assert proxy.count("PUT", path="metrics.json") == 2  # theirs, and ours refused


def _train(document: dict[str, Any], uid: str, termination: Path) -> subprocess.CompletedProcess[str]:
    """`lorasweep-trainer train` as a trial pod runs it (with the proxy's endpoint from the environment)."""
    env = {**os.environ, "LORASWEEP_TRIAL": json.dumps(document), SWEEP_UID_ENV: uid,
           "LORASWEEP_TERMINATION_LOG": str(termination)}  # fmt: skip
    command = [sys.executable, "-m", "lorasweep_trainer.cli", "train"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _objects(s3_server: Any, bucket: str, prefix: str) -> dict[str, tuple[str, Any]]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"]: (item["ETag"], item["LastModified"]) for item in listed}


def test_a_second_attempt_of_a_finished_trial_keeps_its_result_but_not_one_of_a_recreated_sweep(
    proxy: FaultProxy, s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    write_dataset(SynthSpec(actions=(8, 9, 23), clips_per_action=4, frames=4), f"s3://{s3_bucket}/clips/")
    prefix = "sweeps/ns/tiny/trials/t-0/"
    document = {
        "namespace": "ns", "sweep": "tiny", "trial": "t-0", "model": {"preset": "tiny", "framesPerClip": 4},
        "dataset": {"source": f"s3://{s3_bucket}/clips/", "classes": {"sit_down": [8], "stand_up": [9], "other": "rest"},
                    "videosPerClass": 4, "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "training": {"epochs": 1, "batchSize": 2, "lora": {"rank": 4, "alpha": 8}},
        "output": f"s3://{s3_bucket}/{prefix}", "metricsPort": 0, "ioThreads": 1,
    }  # fmt: skip
    # Left by a sweep of the same name that was deleted and created again (another uid): not this sweep's result.
    stale = trial_metrics("t-0", 0.123, sweep="tiny", sweep_uid="uid-0")
    storage.write_bytes(f"s3://{s3_bucket}/{prefix}metrics.json", stale.to_json().encode())
    first = _train(document, "uid-1", tmp_path / "first")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "trial finished before" not in first.stderr  # trained, and replaced the stale one
    recorded = s3_server.client().get_object(Bucket=s3_bucket, Key=prefix + "metrics.json")["Body"].read()
    assert TrialMetrics.model_validate_json(recorded).sweep_uid == "uid-1"
    objects = _objects(s3_server, s3_bucket, prefix)
    assert {prefix + "metrics.json", prefix + "adapter/adapter_model.safetensors"} <= set(objects)

    # The pod retried after metrics.json was written (its predecessor died before exiting 0), or the trial
    # started again: the first result stands, nothing is trained or uploaded again.
    puts = proxy.count("PUT")
    again = _train(document, "uid-1", tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial finished before, keeping its result" in again.stderr
    assert (tmp_path / "again").read_text() == (tmp_path / "first").read_text()  # the same summary
    assert proxy.count("PUT") == puts and _objects(s3_server, s3_bucket, prefix) == objects
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=prefix + "metrics.json")["Body"].read() == recorded
