"""spec.tracking.mlflow on the real control plane, against a real `mlflow server` (sqlite backend) on loopback:
the preparation Job finds or creates the sweep's one parent run and the operator hands its id to the trials, each
of which logs one child run (params, per-epoch histories, final metrics, artifact URIs), read back with the MLflow
client; with the server down the sweep succeeds all the same and every trial counts its failures. The real
trainer, a tiny V-JEPA2 on CPU, synthetic clips in the S3-protocol server, the tracking Secret's key by
secretKeyRef."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from operator_harness import OperatorProcess, get_sweep, tiny_trainer_sweep, wait_phase

from fixtures_cluster import wait_for
from fixtures_mlflow import MlflowServer
from lorasweep_trainer import tracking

pytestmark = pytest.mark.integration

RATES = [1e-3, 3e-3, 5e-3]


def tracked_sweep(
    cluster: Any, namespace: str, name: str, s3_server: Any, s3_bucket: str, uri: str, rates: list[float]
) -> tuple[dict[str, Any], str]:
    manifest = tiny_trainer_sweep(cluster, namespace, name, s3_server, s3_bucket)
    experiment = f"{name}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl(
        "create", "secret", "generic", "mlflow", "-n", namespace, "--from-literal=MLFLOW_TRACKING_TOKEN=unused"
    )
    spec = manifest["spec"]
    spec["search"] = {"list": [{"learningRate": rate} for rate in rates]}
    spec["parallelism"] = len(rates)
    spec["tracking"] = {"mlflow": {"uri": uri, "experiment": experiment, "credentialsSecret": "mlflow"}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    return manifest, experiment


def metrics_of(s3_server: Any, uri: str) -> dict[str, Any]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    loaded: dict[str, Any] = json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    return loaded


def test_a_sweep_leaves_one_parent_run_and_a_child_run_per_trial(
    cluster: Any,
    namespace: str,
    operator: OperatorProcess,
    s3_server: Any,
    s3_bucket: str,
    mlflow_server: MlflowServer,
) -> None:
    _, experiment = tracked_sweep(cluster, namespace, "tracked", s3_server, s3_bucket, mlflow_server.uri, RATES)
    wait_phase(cluster, namespace, "tracked", ("Succeeded", "Failed"), timeout=900)

    def reported() -> dict[str, Any] | None:  # the report Job runs after the sweep has finished
        body = get_sweep(cluster, namespace, "tracked")
        return body if body["status"].get("reportUri") else None

    body = wait_for("the sweep's report", reported, timeout=300)
    status = body["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
    parent_id = status["preparation"].get("mlflowParentRunId")
    assert parent_id, status["preparation"]

    client = mlflow_server.client()
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    parents = [run for run in runs if run.data.tags.get(tracking.ROLE_TAG) == tracking.SWEEP_ROLE]
    children = [run for run in runs if run.data.tags.get(tracking.ROLE_TAG) == tracking.TRIAL_ROLE]
    assert [run.info.run_id for run in parents] == [parent_id] and len(runs) == 1 + len(RATES)
    parent = parents[0]
    key = tracking.sweep_key(namespace, "tracked", body["metadata"]["uid"])
    assert parent.data.tags[tracking.SWEEP_KEY_TAG] == key
    assert (parent.data.tags["lorasweep.sweep"], parent.data.tags["lorasweep.namespace"]) == ("tracked", namespace)
    # The report Job finished it with the sweep's best.
    assert parent.info.status == "FINISHED", parent.info
    assert parent.data.tags["lorasweep.best_trial"] == status["best"]["trial"]
    assert parent.data.tags["lorasweep.report"] == status["reportUri"]
    assert parent.data.tags["lorasweep.best_adapter"] == status["best"]["adapterUri"]
    assert parent.data.metrics["best_val_accuracy"] == status["best"]["objective"]

    rows = {row["id"]: row for row in status["trials"]}
    assert {run.data.tags["lorasweep.trial"] for run in children} == set(rows)
    for run in children:
        row = rows[run.data.tags["lorasweep.trial"]]
        metrics = metrics_of(s3_server, row["metricsUri"])
        assert run.info.status == "FINISHED"
        assert run.data.tags[tracking.PARENT_TAG] == parent_id
        assert run.data.tags["lorasweep.sweep"] == "tracked" and run.data.tags["lorasweep.namespace"] == namespace
        assert run.data.tags["lorasweep.variant"] == row["variant"] and run.data.tags["lorasweep.preset"] == "tiny"
        assert run.data.tags["mlflow.source.git.commit"] == metrics["git_commit"]
        assert run.data.tags["lorasweep.artifact.metrics"] == row["metricsUri"]
        assert (
            run.data.tags["lorasweep.artifact.adapter"] == row["metricsUri"].removesuffix("metrics.json") + "adapter/"
        )
        params = run.data.params
        assert float(params["learning_rate"]) == row["params"]["learningRate"]
        assert (params["lora_rank"], params["epochs"], params["seed"]) == ("4", "2", str(row["seed"]))
        for name in ("val_accuracy", "train_loss"):
            history = client.get_metric_history(run.info.run_id, name)
            assert [(m.step, m.value) for m in history] == [(e["epoch"], e[name]) for e in metrics["epochs"]], name
        assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
        assert run.data.metrics["best_val_accuracy"] == row["objective"]
        use = metrics["tracking"]
        assert (use["run_id"], use["parent_run_id"], use["failures"], use["dropped"]) == (
            run.info.run_id,
            parent_id,
            0,
            0,
        )


def test_with_the_tracking_server_down_the_sweep_succeeds_and_counts_the_failures(
    cluster: Any,
    namespace: str,
    operator: OperatorProcess,
    s3_server: Any,
    s3_bucket: str,
    mlflow_down_uri: str,
) -> None:
    tracked_sweep(cluster, namespace, "untracked", s3_server, s3_bucket, mlflow_down_uri, RATES[:2])
    status = wait_phase(cluster, namespace, "untracked", ("Succeeded", "Failed"), timeout=900)["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
    assert status["counts"]["succeeded"] == 2
    assert "mlflowParentRunId" not in status["preparation"]
    for row in status["trials"]:
        use = metrics_of(s3_server, row["metricsUri"])["tracking"]
        # The trial found no parent id and tried to find or create it: one failure then, one at the end retry.
        assert use["run_id"] is None and (use["failures"], use["dropped"]) == (2, 5), use
