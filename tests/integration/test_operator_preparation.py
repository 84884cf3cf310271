"""The sweep's preparation step on the real control plane: the operator runs one `lorasweep-trainer prepare` Job
before the trials (phase Preparing, condition CacheReady), the trials then train on the cached encoder features,
a second sweep over the same data and model reuses the cache, and a failed preparation fails the sweep with its
reason and launches no trial. The real trainer, a tiny V-JEPA2 on CPU, clips in the S3-protocol server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml
from operator_harness import OperatorProcess, condition, list_jobs, wait_phase

from lorasweep_operator import preparation

BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "tiny-cpu-sweep.yaml"
PREPARATIONS = f"app.kubernetes.io/component={preparation.COMPONENT}"


def tiny_sweep(name: str, namespace: str, bucket: str, endpoint: str, rates: list[float]) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    spec = manifest["spec"]
    spec["dataset"].update(
        source=f"s3://{bucket}/clips/", classes={"sit_down": [8], "stand_up": [9], "other": "rest"}, videosPerClass=4
    )
    spec["training"].update(epochs=1)
    spec["search"] = {"list": [{"learningRate": rate} for rate in rates]}
    spec.update(parallelism=2, resources={"limits": {"cpu": "2", "memory": "4Gi"}})
    spec["storage"] = {"output": f"s3://{bucket}/sweeps/", "endpoint": endpoint, "credentialsSecret": "s3"}
    return manifest


def clips_and_secret(cluster: Any, namespace: str, s3_server: Any, bucket: str, clips: bool = True) -> None:
    """Synthetic clips of actions 8, 9 and 23 under s3://<bucket>/clips/, and the Secret ``s3`` with the keys."""
    if clips:
        subprocess.run(
            [str(BIN / "lorasweep-trainer"), "synth", f"s3://{bucket}/clips/", "--actions", "8,9,23"]
            + ["--clips-per-action", "4"],
            check=True,
            capture_output=True,
            env={**s3_server.env, "PATH": str(BIN)},
        )
    secret = {k: v for k, v in s3_server.env.items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL_S3"}
    cluster.kubectl(
        "create", "secret", "generic", "s3", "-n", namespace, *[f"--from-literal={k}={v}" for k, v in secret.items()]
    )


def phases_seen(cluster: Any, namespace: str, name: str, stop: threading.Event) -> list[str]:
    seen: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            result = cluster.kubectl("get", "lsw", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False)
            if result.stdout and (not seen or seen[-1] != result.stdout):
                seen.append(result.stdout)
            stop.wait(0.3)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def metrics_of(s3_server: Any, uri: str) -> dict[str, Any]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    loaded: dict[str, Any] = json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    return loaded


def test_preparation_runs_once_before_the_trials_and_a_second_sweep_reuses_its_cache(
    cluster: Any, namespace: str, operator: OperatorProcess, s3_server: Any, s3_bucket: str
) -> None:
    clips_and_secret(cluster, namespace, s3_server, s3_bucket)
    stop = threading.Event()
    seen = phases_seen(cluster, namespace, "first", stop)
    first = tiny_sweep("first", namespace, s3_bucket, s3_server.endpoint_url, [1e-3, 5e-3])
    cluster.kubectl("apply", "-f", "-", input=json.dumps(first))
    status = wait_phase(cluster, namespace, "first", ("Succeeded", "Failed"), timeout=600)["status"]
    stop.set()
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
    assert (
        seen[0] in ("Pending", "Preparing") and "Preparing" in seen and seen.index("Preparing") < seen.index("Running")
    ), seen
    state, reason, message = condition(status, preparation.CACHE_READY) or ("", "", "")
    assert (state, reason) == ("True", "Prepared"), message
    prepared = status["preparation"]
    assert prepared["phase"] == "Succeeded" and prepared["features"] is True
    assert prepared["cacheUri"] == f"s3://{s3_bucket}/sweeps/{namespace}/cache/"
    # 3 classes x 4 clips at 50/25/25: 6 training clips (one epoch) and 6 evaluation clips, decoded once each.
    assert prepared["stats"]["decodes"] == 12 and prepared["stats"]["encoder_forwards"] == 12
    (job,) = list_jobs(cluster, namespace, PREPARATIONS)
    assert job["metadata"]["name"] == prepared["job"]
    for row in status["trials"]:
        metrics = metrics_of(s3_server, row["metricsUri"])
        assert metrics["feature_cache"]["used"] is True, metrics["feature_cache"]
        assert metrics["cache"]["decodes"] == 0 and metrics["cache"]["encoder_forwards"] == 0

    second = tiny_sweep("second", namespace, s3_bucket, s3_server.endpoint_url, [2e-3])
    cluster.kubectl("apply", "-f", "-", input=json.dumps(second))
    again = wait_phase(cluster, namespace, "second", ("Succeeded", "Failed"), timeout=600)["status"]
    assert again["phase"] == "Succeeded", (json.dumps(again, indent=1), operator.log())
    stats = again["preparation"]["stats"]
    assert (stats["built"], stats["decodes"], stats["encoder_forwards"]) == (0, 0, 0)
    assert stats["hits"] == prepared["stats"]["built"]


def test_a_failed_preparation_fails_the_sweep_with_its_reason_and_launches_no_trial(
    cluster: Any, namespace: str, operator: OperatorProcess, s3_server: Any, s3_bucket: str
) -> None:
    clips_and_secret(cluster, namespace, s3_server, s3_bucket, clips=False)
    sweep = tiny_sweep("no-clips", namespace, s3_bucket, s3_server.endpoint_url, [1e-3])  # nothing under clips/
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sweep))
    status = wait_phase(cluster, namespace, "no-clips", ("Succeeded", "Failed"), timeout=300)["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    state, reason, message = condition(status, preparation.CACHE_READY) or ("", "", "")
    assert (state, reason) == ("False", "PreparationFailed")
    assert "DatasetUnusable" in message and "no NTU clips" in message, message
    assert status["preparation"]["reason"] == "DatasetUnusable"
    assert list_jobs(cluster, namespace) == []  # no trial Job
    (job,) = list_jobs(cluster, namespace, PREPARATIONS)
    assert job["status"].get("failed", 0) == 1  # exit 3 is permanent: the podFailurePolicy failed it at once


def test_packed_trials_share_one_job_and_keep_their_own_results(
    cluster: Any, namespace: str, operator: OperatorProcess, s3_server: Any, s3_bucket: str
) -> None:
    clips_and_secret(cluster, namespace, s3_server, s3_bucket)
    sweep = tiny_sweep("packed", namespace, s3_bucket, s3_server.endpoint_url, [1e-3, 5e-3])
    # A third trial whose LoRA target the model lacks: it fails for good (exit 2), its neighbours still succeed.
    sweep["spec"]["search"]["list"].append({"lora": {"targetModules": ["no_such_module"]}})
    sweep["spec"].update(packing=3, maxFailedTrials=1)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sweep))
    status = wait_phase(cluster, namespace, "packed", ("Succeeded", "Failed"), timeout=600)["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
    assert status["counts"] == {"total": 3, "pending": 0, "running": 0, "succeeded": 2, "failed": 1, "stopped": 0}
    (job,) = list_jobs(cluster, namespace)  # one pod ran all three
    assert {row["job"] for row in status["trials"]} == {job["metadata"]["name"]}
    failed = [row for row in status["trials"] if row["phase"] == "Failed"]
    assert failed[0]["reason"] == "InvalidConfig" and "no_such_module" in failed[0]["message"]
    for row in status["trials"]:
        if row["phase"] == "Succeeded":
            metrics = metrics_of(s3_server, row["metricsUri"])
            assert metrics["trial"] == row["id"] and metrics["feature_cache"]["used"] is True
