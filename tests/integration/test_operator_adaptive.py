"""Adaptive sweeps on the real control plane: ASHA stops the real trainer's trials that are behind at the first
rung (their Jobs end, their pods go, the status says Stopped with their last metrics), the progress endpoint
accepts only a pod's own audience-bound token (TokenReview against the real API server), and a TPE sweep runs
to its end through an operator killed midway, with no duplicate and no changed proposal."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    OperatorProcess,
    allow_token_reviews,
    apply,
    get_sweep,
    list_jobs,
    list_pods,
    sweep_manifest,
    tiny_trainer_sweep,
    wait_phase,
)

from fixtures_cluster import wait_for
from lorasweep_operator import rendering
from lorasweep_trainer.config import TRIAL_ENV, TrialConfig

BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "tiny-cpu-sweep.yaml"
# Nine learning rates, far apart: some trials learn in one epoch, some hardly move.
RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


@pytest.fixture
def token_reviews(cluster: Any, namespace: str) -> Any:
    undo = allow_token_reviews(cluster, namespace)
    yield
    undo()


def annotations(job: dict[str, Any], key: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(job["metadata"].get("annotations", {}).get(key) or "{}")
    return value


def test_asha_stops_the_trials_behind_at_the_first_rung(
    cluster: Any, namespace: str, operator: OperatorProcess, token_reviews: None, s3_server: Any, s3_bucket: str
) -> None:
    manifest = tiny_trainer_sweep(cluster, namespace, "asha", s3_server, s3_bucket)
    spec = manifest["spec"]
    spec["training"].update(epochs=3)
    spec["search"] = {"list": [{"learningRate": rate} for rate in RATES]}
    # val_loss, not val_accuracy: a handful of validation clips gives accuracies that tie, losses do not.
    spec["earlyStopping"] = {"algorithm": "asha", "metric": "val_loss", "reductionFactor": 3, "minEpochs": 1}
    spec.update(parallelism=3, resources={"limits": {"cpu": "1", "memory": "2Gi"}})
    spec["storage"] = {
        "output": f"s3://{s3_bucket}/sweeps/",
        "endpoint": s3_server.endpoint_url,
        "credentialsSecret": "s3",
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    body = wait_phase(cluster, namespace, "asha", ("Succeeded", "Failed"), timeout=900)
    status = body["status"]
    counts = status["counts"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
    assert counts["total"] == 9 and counts["failed"] == 0, counts
    assert counts["stopped"] >= 1 and counts["succeeded"] + counts["stopped"] == 9, counts
    assert f"{counts['stopped']} stopped early" in status["message"]

    jobs = {job["metadata"]["labels"][rendering.TRIAL_LABEL]: job for job in list_jobs(cluster, namespace)}
    rows = {row["id"]: row for row in status["trials"]}
    for trial, job in jobs.items():
        progress = annotations(job, rendering.PROGRESS_ANNOTATION)
        decisions = annotations(job, rendering.EARLY_STOPPING_ANNOTATION)
        rung = decisions["1"]  # every trial reached the first (and only) rung of a 3-epoch trial
        loss = progress["1"]["val_loss"]
        row = rows[trial]
        if rung["stop"]:
            assert loss > rung["cutoff"], (trial, progress, decisions)
            assert row["phase"] == "Stopped" and row["epochsCompleted"] == 1 and row["reason"] == "EarlyStopped"
            assert row["metrics"]["val_accuracy"] == progress["1"]["val_accuracy"]
            assert "objective" not in row
            failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed" and c["status"] == "True"]
            # Whichever came first: the deadline the operator cut, or the trainer's own exit 4 (told in its answer).
            assert failed and failed[0]["reason"] in ("DeadlineExceeded", "PodFailurePolicy"), job["status"]
            assert sorted(progress) == ["1"]  # stopped before a second epoch reported
        else:
            assert loss <= rung["cutoff"], (trial, progress, decisions)
            assert row["phase"] == "Succeeded" and sorted(progress) == ["1", "2", "3"]
        assert 1 <= rung["compared"] <= 9

    # The stopped trials' pods are gone (the Job controller deleted them; the node agent ended the processes).
    stopped = {trial for trial, row in rows.items() if row["phase"] == "Stopped"}

    def pods_gone() -> bool:
        left = [p for p in list_pods(cluster, namespace) if p["metadata"]["labels"][rendering.TRIAL_LABEL] in stopped]
        return not left

    wait_for("the stopped trials' pods to go", pods_gone, timeout=120)
    table = cluster.kubectl("get", "lsw", "asha", "-n", namespace).stdout.splitlines()
    header, line = table[0].split(), table[1].split()
    assert line[header.index("STOPPED")] == str(counts["stopped"])
    # The outcomes keep each trial's losses, so later decisions survive the Jobs' deletion.
    assert all(
        status["outcomes"][trial]["rungs"]["1"] == annotations(job, rendering.PROGRESS_ANNOTATION)["1"]["val_loss"]
        for trial, job in jobs.items()
    )


def post(url: str, body: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_progress_endpoint_takes_only_a_pods_own_token_for_its_own_trial(
    cluster: Any, namespace: str, operator: OperatorProcess, token_reviews: None
) -> None:
    # A pod that never runs (nothing matches its selector) but exists, so tokens can be bound to it.
    labels = {rendering.TRIAL_LABEL: "abc123", "batch.kubernetes.io/job-name": "no-such-job"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "parked", "namespace": namespace, "labels": labels},
        "spec": {
            "nodeSelector": {"lorasweep.dev/none": "none"},
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": "none",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    uid = json.loads(cluster.kubectl("get", "pod", "parked", "-n", namespace, "-o", "json").stdout)["metadata"]["uid"]

    def token(audience: str | None) -> str:
        args = ["create", "token", "default", "-n", namespace, "--bound-object-kind=Pod", "--bound-object-name=parked"]
        args += [f"--bound-object-uid={uid}"] + ([f"--audience={audience}"] if audience else [])
        return str(cluster.kubectl(*args).stdout.strip())

    report = {"trial": "abc123", "epoch": 1, "metrics": {"val_accuracy": 0.5}}
    url = operator.progress_url
    assert post(url, report, None)[0] == 401
    code, answer = post(url, report, token(None))  # the API server's audience, not lorasweep's
    assert code == 401 and "audience lorasweep" in answer["error"]
    mine = token("lorasweep")
    assert post(url, {"trial": "abc123"}, mine)[0] == 400
    code, answer = post(url, {**report, "trial": "other"}, mine)
    assert code == 403 and "is not trial other's" in answer["error"]
    code, answer = post(url, report, mine)  # its own trial, but no Job of a sweep behind it
    assert code == 404 and "no-such-job" in answer["error"]
    unbound = str(cluster.kubectl("create", "token", "default", "-n", namespace, "--audience=lorasweep").stdout.strip())
    assert post(url, report, unbound)[0] == 403  # not bound to a pod


def job_proposals(cluster: Any, namespace: str) -> dict[int, tuple[str, str]]:
    """index -> (Job name, its training as JSON) of every trial Job."""
    found = {}
    for job in list_jobs(cluster, namespace):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        value = next(e["value"] for e in container["env"] if e["name"] == TRIAL_ENV)
        training = TrialConfig.model_validate_json(value).training.model_dump_json(by_alias=True)
        found[int(job["metadata"]["annotations"][rendering.INDEX_ANNOTATION])] = (job["metadata"]["name"], training)
    return found


def test_tpe_sweep_survives_an_operator_restart_with_the_same_proposals(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    space = {
        "learningRate": {"logUniform": {"min": 1.0e-4, "max": 9.0e-3}},
        "lora": {"dropout": {"uniform": {"min": 0.0, "max": 0.3}}},
    }
    search = {"optimize": {"algorithm": "tpe", "trials": 12, "seed": 3, "space": space}}
    assert apply(cluster, sweep_manifest("tpe", namespace, search=search, parallelism=3)).returncode == 0

    def some_done() -> dict[int, tuple[str, str]] | None:
        found = job_proposals(cluster, namespace)
        return found if len(found) >= 5 else None

    before = wait_for("five proposals", some_done, timeout=300, interval=0.5)
    operator.kill()
    assert len(before) < 12
    before = job_proposals(cluster, namespace)  # whatever it created up to its death
    operator.start()

    body = wait_phase(cluster, namespace, "tpe", ("Succeeded", "Failed"), timeout=600)
    status = body["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
    assert status["counts"]["total"] == 12 and status["counts"]["succeeded"] == 12
    after = job_proposals(cluster, namespace)
    assert sorted(after) == list(range(12))
    assert len({name for name, _ in after.values()}) == 12
    assert {index: after[index] for index in before} == before  # nothing proposed before the restart changed
    assert len({training for _, training in after.values()}) == 12
    rates = [json.loads(training)["learningRate"] for _, training in after.values()]
    assert all(1.0e-4 <= rate <= 9.0e-3 for rate in rates)
    # The stand-in scores 100 x learningRate: the best trial is the one with the highest rate.
    assert status["best"]["objective"] == pytest.approx(100 * max(rates))
    assert {row["group"] for row in status["trials"]} == {"optimize"}
    assert all(outcome["index"] is not None for outcome in status["outcomes"].values())
    assert get_sweep(cluster, namespace, "tpe")["status"]["counts"] == status["counts"]


# One rule, one place: the API server (CEL and schema) and the pydantic models refuse the same adaptive sweeps.
ADAPTIVE_BAD = [
    pytest.param(
        {
            "search": {
                "optimize": {"trials": 4, "space": {"learningRate": {"logUniform": {"min": 1e-4, "max": 1e-2}}}},
                "seeds": [1, 2],
            }
        },
        "search.optimize proposes every trial itself",
        id="optimize-two-seeds",
    ),
    pytest.param(
        {"search": {"optimize": {"trials": 4, "space": {}}}},
        "search.optimize.space names no parameter",
        id="optimize-empty-space",
    ),
    pytest.param(
        {"search": {"optimize": {"trials": 4, "space": {"learningRate": {"choice": [1e-3]}}}, "list": [{"epochs": 1}]}},
        "search needs exactly one of groups, grid, random, list, fromSweep, optimize",
        id="optimize-and-list",
    ),
    pytest.param({"earlyStopping": {"reductionFactor": 1}}, "reductionFactor", id="reduction-factor-1"),
    pytest.param({"earlyStopping": {"algorithm": "median"}}, "algorithm", id="unknown-algorithm"),
]


@pytest.mark.usefixtures("crd")
@pytest.mark.parametrize(("changes", "message"), ADAPTIVE_BAD)
def test_api_server_and_models_refuse_the_same_adaptive_sweeps(
    cluster: Any, namespace: str, changes: dict[str, Any], message: str
) -> None:
    from lorasweep_operator.spec import SpecError, parse_spec

    manifest = sweep_manifest("bad", namespace, search={"list": [{"learningRate": 1e-3}]})
    manifest["spec"].update(changes)
    result = apply(cluster, manifest)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    with pytest.raises(SpecError, match=message):
        parse_spec(manifest["spec"])
    good = sweep_manifest("good", namespace, search={"fromSweep": {"name": "phase1", "refine": True}})
    good["spec"]["earlyStopping"] = {"metric": "val_loss", "reductionFactor": 2, "minEpochs": 2}
    assert apply(cluster, good).returncode == 0
    assert parse_spec(get_sweep(cluster, namespace, "good")["spec"]) == parse_spec(good["spec"])
