"""Job rendering: one trial to one batch/v1 Job, without a cluster."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from lorasweep_operator import planning, preparation, rendering
from lorasweep_operator.spec import LoraSweepSpec, parse_spec
from lorasweep_trainer.config import TrialConfig

BASE: dict[str, Any] = {
    "image": "registry.example/lorasweep-trainer:0.1.0",
    "dataset": {"source": "s3://bucket/nturgbd_rgb/"},
    "search": {"groups": [{"name": "learning-rate", "values": [{"learningRate": 1e-3}]}]},
    "storage": {"output": "s3://bucket/sweeps/"},
}


# Only the keys the trainer reads, each by name; optional ones do not hold the pod back when missing.
CREDENTIAL_REFS = {
    "AWS_ACCESS_KEY_ID": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"},
    "AWS_SECRET_ACCESS_KEY": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"},
    "AWS_SESSION_TOKEN": {"name": "s3", "key": "AWS_SESSION_TOKEN", "optional": True},
    "AWS_REGION": {"name": "s3", "key": "AWS_REGION", "optional": True},
    "AWS_DEFAULT_REGION": {"name": "s3", "key": "AWS_DEFAULT_REGION", "optional": True},
    "HF_TOKEN": {"name": "s3", "key": "HF_TOKEN", "optional": True},
}


def secret_keys(container: dict[str, Any]) -> dict[str, Any]:
    """env name -> secretKeyRef of every variable taken from a Secret; and no envFrom of a whole Secret."""
    assert "envFrom" not in container
    return {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"] if "valueFrom" in item}


def render(**changes: Any) -> tuple[dict[str, Any], planning.PlannedTrial, LoraSweepSpec]:
    spec = parse_spec({**BASE, **changes})
    trial = planning.plan(spec, "phase1")[1]
    return rendering.render_job(spec, "research", "phase1", "uid-123", trial), trial, spec


def test_job_runs_the_trainer_with_the_trial_contract() -> None:
    job, trial, spec = render()
    assert job["metadata"]["name"] == trial.job_name
    assert job["metadata"]["namespace"] == "research"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "trainer"
    assert container["image"] == "registry.example/lorasweep-trainer:0.1.0"
    assert container["command"] == ["lorasweep-trainer", "train"]
    assert "args" not in container
    env = {item["name"]: item["value"] for item in container["env"]}
    config = TrialConfig.model_validate_json(env["LORASWEEP_TRIAL"])
    cache = preparation.trial_cache(spec, "research", trial)
    assert config == planning.trial_config(spec, "research", "phase1", trial, cache=cache)
    assert (
        config.cache is not None and config.cache.uri == "s3://bucket/sweeps/research/cache/" and config.cache.features
    )
    assert json.loads(env["LORASWEEP_TRIAL"])["training"]["learningRate"] == 1e-3  # camelCase on the wire
    assert env["LORASWEEP_TERMINATION_LOG"] == "/dev/termination-log"
    assert "AWS_ENDPOINT_URL_S3" not in env
    assert "envFrom" not in container
    assert not [item for item in container["env"] if "valueFrom" in item]  # no credentialsSecret, no Secret
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert container["terminationMessagePath"] == "/dev/termination-log"
    # Never the log tail: it may hold whatever the program printed.
    assert container["terminationMessagePolicy"] == "File"


def test_job_meets_pod_security_restricted() -> None:
    job, _, _ = render()
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "hostNetwork" not in pod and "volumes" not in pod


def test_failure_policy_labels_and_owner() -> None:
    job, trial, _ = render()
    spec = job["spec"]
    assert spec["backoffLimit"] == 2
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3, 4]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    assert "activeDeadlineSeconds" not in spec and "ttlSecondsAfterFinished" not in spec and "suspend" not in spec
    labels = job["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "lorasweep",
        "app.kubernetes.io/component": "trial",
        "app.kubernetes.io/managed-by": "lorasweep-operator",
        "app.kubernetes.io/instance": "phase1",
        "lorasweep.dev/sweep": "phase1",
        "lorasweep.dev/trial": trial.id,
    }
    assert spec["template"]["metadata"]["labels"] == labels
    assert rendering.sweep_selector("phase1") == "lorasweep.dev/sweep=phase1"
    assert job["metadata"]["annotations"]["lorasweep.dev/variant"] == "learningRate=0.001"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "lorasweep.dev/v1alpha1",
            "kind": "LoraSweep",
            "name": "phase1",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_scheduling_storage_and_kueue_options_reach_the_job() -> None:
    job, _, _ = render(
        storage={"output": "s3://bucket/sweeps/", "endpoint": "http://minio:9000", "credentialsSecret": "s3"},
        resources={"limits": {"nvidia.com/gpu": 2, "memory": "32Gi"}, "requests": {"cpu": "4"}},
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
        priorityClassName="research",
        imagePullSecrets=[{"name": "registry"}],
        serviceAccountName="trainer",
        backoffLimit=0,
        activeDeadlineSeconds=3600,
        ttlSecondsAfterFinished=600,
        queueName="gpu-queue",
        command=["python", "-m", "lorasweep_trainer", "train"],
    )
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert secret_keys(container) == CREDENTIAL_REFS
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "2", "memory": "32Gi"}, "requests": {"cpu": "4"}}
    assert container["command"] == ["python", "-m", "lorasweep_trainer", "train"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "research"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["serviceAccountName"] == "trainer"
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (0, 3600, 600)
    assert spec["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "kueue.x-k8s.io/queue-name" not in spec["template"]["metadata"]["labels"]


def test_rendered_job_deserializes_as_a_batch_v1_job() -> None:
    job, _, _ = render()
    api = client.ApiClient()

    typed = api.deserialize(json.dumps(job), "V1Job", "application/json")
    assert typed.spec.template.spec.containers[0].security_context.capabilities.drop == ["ALL"]
    assert typed.spec.pod_failure_policy.rules[0].on_exit_codes.values == [2, 3, 4]
    assert api.sanitize_for_serialization(typed) == job


def test_rendering_is_deterministic() -> None:
    first, _, _ = render()
    second, _, _ = render()
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
