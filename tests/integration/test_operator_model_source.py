"""Model weights from where the cluster has them, on the real control plane: a sweep whose model.source is a
``save_pretrained`` folder in the S3-protocol server runs three trials with ``HF_HUB_OFFLINE=1`` in every pod,
and the weights are read from the source once, by the preparation, for all of them: counted as the GET requests
that reach the server through a proxy in front of it. The trials pin the revision the preparation resolved. A
model folder without its weights fails the sweep with reason ModelUnavailable and launches no trial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from operator_harness import OperatorProcess, condition, list_jobs, list_pods, wait_phase
from test_operator_preparation import PREPARATIONS, clips_and_secret, metrics_of, tiny_sweep

from fault_proxy import FaultProxy
from lorasweep_operator import preparation
from lorasweep_trainer.config import TrialConfig
from tiny_model import save_tiny_model, upload


def model_sweep(name: str, namespace: str, bucket: str, endpoint: str, source: str, rates: list[float]) -> Any:
    manifest = tiny_sweep(name, namespace, bucket, endpoint, rates)
    manifest["spec"]["model"] = {"source": source, "framesPerClip": 4}
    return manifest


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in pod["spec"]["containers"][0]["env"]}


def test_a_model_folder_in_s3_is_fetched_once_for_every_trial_with_the_hub_offline(
    cluster: Any, namespace: str, operator: OperatorProcess, s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    files = save_tiny_model(tmp_path / "checkpoint")
    size = sum(path.stat().st_size for path in (tmp_path / "checkpoint").iterdir())
    upload(s3_server.client(), tmp_path / "checkpoint", s3_bucket, "models/tiny/")
    clips_and_secret(cluster, namespace, s3_server, s3_bucket)
    with FaultProxy(s3_server.endpoint_url) as proxy:  # every pod's S3 traffic goes through it
        sweep = model_sweep(
            "fetched", namespace, s3_bucket, proxy.url, f"s3://{s3_bucket}/models/tiny/", [1e-3, 2e-3, 5e-3]
        )
        cluster.kubectl("apply", "-f", "-", input=json.dumps(sweep))
        status = wait_phase(cluster, namespace, "fetched", ("Succeeded", "Failed"), timeout=900)["status"]
        assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
        pinned = status["preparation"]["weights"]
        # Read from the source once: each of its files one GET, all by the preparation.
        assert proxy.count("GET", path=f"/{s3_bucket}/models/tiny/") == len(files) == 3
        # Each trial pod downloaded the verified copy from the cache (its own disk), never the source.
        entry = pinned["uri"].removeprefix("s3:/")
        assert proxy.count("GET", path=entry) == len(files) * 3
    assert pinned["revision"].startswith("sha256:") and pinned["uri"].startswith(
        f"s3://{s3_bucket}/sweeps/{namespace}/cache/models/"
    )
    state, reason, message = condition(status, preparation.CACHE_READY) or ("", "", "")
    assert (state, reason) == ("True", "Prepared") and f"model at revision {pinned['revision']}" in message, message
    stats = status["preparation"]["stats"]
    assert (stats["model_files"], stats["model_bytes_fetched"], stats["model_reused"]) == (3, size, 0)

    (prepare_pod,) = list_pods(cluster, namespace, PREPARATIONS)
    assert pod_env(prepare_pod)["HF_HUB_OFFLINE"] == "1"
    trial_pods = list_pods(cluster, namespace)
    assert len(trial_pods) == 3
    for pod in trial_pods:
        env = pod_env(pod)
        assert env["HF_HUB_OFFLINE"] == "1"
        assert TrialConfig.model_validate_json(env["LORASWEEP_TRIAL"]).weights.model_dump() == pinned  # type: ignore[union-attr]
    for row in status["trials"]:
        metrics = metrics_of(s3_server, row["metricsUri"])
        assert metrics["model"] == f"s3://{s3_bucket}/models/tiny/" and metrics["model_revision"] == pinned["revision"]
        load = metrics["model_load"]
        assert (load["files"], load["bytes"], load["bytes_fetched"]) == (3, size, size), load
        assert metrics["feature_cache"]["used"] is True and metrics["cache"]["decodes"] == 0
        print(f"\n{row['id']} model_load fetch_s={load['fetch_seconds']} load_s={load['load_seconds']}")


def test_a_model_folder_without_its_weights_fails_the_sweep_with_model_unavailable(
    cluster: Any, namespace: str, operator: OperatorProcess, s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    save_tiny_model(tmp_path / "checkpoint")
    (tmp_path / "checkpoint" / "model.safetensors").unlink()
    upload(s3_server.client(), tmp_path / "checkpoint", s3_bucket, "models/partial/")
    shutil.rmtree(tmp_path / "checkpoint")
    clips_and_secret(cluster, namespace, s3_server, s3_bucket, clips=False)
    sweep = model_sweep(
        "partial", namespace, s3_bucket, s3_server.endpoint_url, f"s3://{s3_bucket}/models/partial/", [1e-3]
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sweep))
    status = wait_phase(cluster, namespace, "partial", ("Succeeded", "Failed"), timeout=300)["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    assert status["preparation"]["reason"] == "ModelUnavailable"
    state, reason, message = condition(status, preparation.CACHE_READY) or ("", "", "")
    assert (state, reason) == ("False", "PreparationFailed")
    assert "ModelUnavailable" in message and "no weight file (model.safetensors" in message, message
    assert list_jobs(cluster, namespace) == []  # no trial Job
    (job,) = list_jobs(cluster, namespace, PREPARATIONS)
    assert job["status"].get("failed", 0) == 1  # exit 2 is permanent: failed at once, not retried
