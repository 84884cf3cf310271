"""spec.pod rendered into every pod the operator makes for a sweep (trial, pack, preparation, report), and the
operator's own env, volumes, mounts, labels and annotations out of its reach; no cluster."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client

from lorasweep_operator import planning, preparation, rendering
from lorasweep_operator.spec import STORAGE_ENV_NAMES, LoraSweepSpec, SpecError, parse_spec
from lorasweep_trainer.config import DEFAULT_TERMINATION_LOG

BASE: dict[str, Any] = {
    "image": "registry.example/lorasweep-trainer:0.1.0",
    "dataset": {"source": "s3://bucket/clips/"},
    "search": {"list": [{"learningRate": 1e-3}, {"learningRate": 2e-3}]},
    "storage": {"output": "s3://bucket/sweeps/", "endpoint": "http://minio:9000", "credentialsSecret": "s3"},
}
POD: dict[str, Any] = {
    "env": [
        {"name": "PUSHGATEWAY_URL", "value": "http://pushgateway.monitoring:9091"},
        {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mlflow", "key": "token"}}},
        {"name": "AWS_CA_BUNDLE", "value": "/mnt/ca/ca.crt"},
    ],
    "volumes": [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        {"name": "hf", "persistentVolumeClaim": {"claimName": "model-cache", "readOnly": True}},
        {"name": "ca", "configMap": {"name": "ca-bundle", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    ],
    "volumeMounts": [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "hf", "mountPath": "/models/hf", "readOnly": True},
        {"name": "ca", "mountPath": "/mnt/ca"},
    ],
    "labels": {"team": "vision"},
    "annotations": {"sidecar.istio.io/inject": "false"},
}


def sweep(**changes: Any) -> LoraSweepSpec:
    return parse_spec({**copy.deepcopy(BASE), **changes})


def every_job(spec: LoraSweepSpec) -> dict[str, dict[str, Any]]:
    """Each kind of Job the operator makes for `spec`, by name."""
    trials = planning.plan(spec, "phase1")
    prepared = preparation.plan_preparation(spec, "research", "phase1", trials)
    packed = sweep(**{**spec.model_dump(mode="json", by_alias=True, exclude_none=True), "packing": 2})
    return {
        "trial": rendering.render_job(spec, "research", "phase1", "uid", trials[0]),
        "trial-early-stopping": rendering.render_job(
            sweep(**{**spec.model_dump(mode="json", by_alias=True, exclude_none=True), "earlyStopping": {}}),
            "research", "phase1", "uid", trials[0], progress_url="http://operator:8082/v1/progress",
        ),
        "pack": rendering.render_pack_job(packed, "research", "phase1", "uid", planning.plan(packed, "phase1")),
        "prepare": rendering.render_prepare_job(spec, "research", "phase1", "uid", prepared),
        "report": rendering.render_report_job(spec, "research", "phase1", "uid", [t.id for t in trials], {}),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["trial", "trial-early-stopping", "pack", "prepare", "report"])
def test_every_pod_gets_the_sweeps_env_volumes_mounts_labels_and_annotations(kind: str) -> None:
    plain = every_job(sweep())[kind]
    job = every_job(sweep(pod=POD))[kind]
    template, before = job["spec"]["template"], plain["spec"]["template"]
    (container,), (container_before,) = template["spec"]["containers"], before["spec"]["containers"]
    # The operator's own come first and unchanged; the sweep's follow, as written.
    assert container["env"] == container_before["env"] + POD["env"]
    assert container.get("volumeMounts", []) == container_before.get("volumeMounts", []) + POD["volumeMounts"]
    assert template["spec"].get("volumes", []) == before["spec"].get("volumes", []) + POD["volumes"]
    assert template["metadata"]["labels"] == {**before["metadata"]["labels"], "team": "vision"}
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    # Labels and annotations are the pods': the Job's own stay the operator's (its selectors, its bookkeeping).
    assert job["metadata"] == plain["metadata"]
    # Everything else about the pod is as the operator makes it.
    strip = ("env", "volumeMounts")
    assert {k: v for k, v in container.items() if k not in strip} == {
        k: v for k, v in container_before.items() if k not in strip
    }
    assert {k: v for k, v in template["spec"].items() if k not in ("containers", "volumes")} == {
        k: v for k, v in before["spec"].items() if k not in ("containers", "volumes")
    }
    assert {k: v for k, v in job["spec"].items() if k != "template"} == {
        k: v for k, v in plain["spec"].items() if k != "template"
    }
    typed = client.ApiClient().deserialize(json.dumps(job), "V1Job", "application/json")
    assert client.ApiClient().sanitize_for_serialization(typed) == job  # a valid Job, nothing dropped


def test_an_empty_spec_pod_changes_nothing() -> None:
    assert every_job(sweep(pod={})) == every_job(sweep())


def test_the_progress_token_stays_beside_the_sweeps_volumes() -> None:
    pod = every_job(sweep(pod=POD))["trial-early-stopping"]["spec"]["template"]["spec"]
    assert [volume["name"] for volume in pod["volumes"]] == [rendering.PROGRESS_VOLUME, "shm", "hf", "ca"]
    mounts = [mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]]
    assert mounts == [rendering.PROGRESS_MOUNT, "/dev/shm", "/models/hf", "/mnt/ca"]


def operators_own(jobs: dict[str, dict[str, Any]]) -> tuple[set[str], set[str], set[str], set[str]]:
    """(env names, label and annotation keys, volume names, mount paths) the operator puts in its Jobs and pods."""
    env, keys, volumes, paths = set(), set(), set(), set()
    for job in jobs.values():
        template = job["spec"]["template"]
        for metadata in (job["metadata"], template["metadata"]):
            keys |= set(metadata.get("labels", {})) | set(metadata.get("annotations", {}))
        volumes |= {volume["name"] for volume in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"]:
            env |= {item["name"] for item in container["env"]}
            paths |= {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            paths.add(container["terminationMessagePath"])
    return env, keys, volumes, paths


def test_nothing_the_operator_sets_can_be_set_through_spec_pod() -> None:
    everything = sweep(queueName="gpu-queue")
    env, keys, volumes, paths = operators_own(every_job(everything))
    assert {"LORASWEEP_TRIAL", "LORASWEEP_PACK", "LORASWEEP_PREPARE", "AWS_ENDPOINT_URL_S3", "HF_TOKEN"} <= env
    assert set(rendering.CREDENTIAL_KEYS) | {rendering.ENDPOINT_ENV} == set(STORAGE_ENV_NAMES)
    assert {"lorasweep.dev/trial", "app.kubernetes.io/component", "kueue.x-k8s.io/queue-name"} <= keys
    assert DEFAULT_TERMINATION_LOG in paths and rendering.PROGRESS_MOUNT in paths
    for name in env | {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"}:
        with pytest.raises(SpecError, match=rf"spec.pod.env {name}: .*; remove it"):
            sweep(pod={"env": [{"name": name, "value": "x"}]})
    for key in keys | {"job-name", "controller-uid", "batch.kubernetes.io/job-name"}:
        for field in ("labels", "annotations"):
            with pytest.raises(SpecError, match=rf"spec.pod.{field} {key}: keys under kubernetes.io"):
                sweep(pod={field: {key: "x"}})
    for name in volumes:
        mount = [{"name": name, "mountPath": "/mnt/x"}]
        with pytest.raises(SpecError, match=rf"spec.pod.volumes {name}: names starting with lorasweep- are"):
            sweep(pod={"volumes": [{"name": name, "emptyDir": {}}], "volumeMounts": mount})
    for path in paths | {f"{rendering.PROGRESS_MOUNT}/token", "/usr/local/lib", "/opt/lorasweep", "/home/lorasweep"}:
        with pytest.raises(SpecError, match=rf"spec.pod.volumeMounts {path}: mount at /dev/shm or at or under"):
            sweep(pod={"volumes": [{"name": "v", "emptyDir": {}}], "volumeMounts": [{"name": "v", "mountPath": path}]})


def test_a_refusal_lists_every_problem_of_spec_pod() -> None:
    with pytest.raises(SpecError) as error:
        sweep(
            pod={
                "volumes": [{"name": "a", "emptyDir": {}}],
                "volumeMounts": [{"name": "b", "mountPath": "/mnt/b"}],
                "labels": {"lorasweep.dev/sweep": "x", "bad key": "y"},
            }
        )
    message = str(error.value)
    for part in (
        "spec.pod.volumeMounts b: no such volume in spec.pod.volumes; add it there or fix the name",
        "spec.pod.volumes a mounted nowhere",
        "spec.pod.labels bad key: a key is an optional DNS prefix",
        "spec.pod.labels lorasweep.dev/sweep: keys under",
    ):
        assert part in message, message


def test_the_spec_pod_sources_and_names() -> None:
    overrides = sweep(pod=POD).pod
    assert overrides is not None
    assert [item.source for item in overrides.env] == ["value", "secretKeyRef", "value"]
    assert [volume.type for volume in overrides.volumes] == ["emptyDir", "persistentVolumeClaim", "configMap"]
    assert (overrides.secret_names(), overrides.config_map_names(), overrides.claim_names()) == (
        ["mlflow"],
        ["ca-bundle"],
        ["model-cache"],
    )
