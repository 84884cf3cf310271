"""The good and bad cases of the operator's Job policy, shared by the unit test of the operator's check
(tests/unit/test_policy.py) and by the tests that send them through the chart's ValidatingAdmissionPolicy on
the real API server and through the running operator (tests/integration/test_sweep_policy.py).

A policy is written as the chart's ``policy`` values; a case is (policy, id, spec changes, the field the
policy refuses or None). `AUTHOR_CASES` depend on the author's own rights, which only the admission policy can
ask about (the operator cannot tell who wrote a sweep): the operator allows them all, the admission policy refuses
them to an editor who lacks the right (the text it names) and admits a namespace admin.
"""

from __future__ import annotations

from typing import Any

from lorasweep_operator.policy import JobPolicy

# The chart's defaults (a unit test holds values.yaml to them).
STRICT: dict[str, Any] = {
    "allowedImages": ["ghcr.io/lorasweep/lorasweep-trainer"],
    "allowCommandOverride": False,
    "allowedServiceAccounts": [],
    "allowedPriorityClasses": [],
    "pod": {
        "envSources": ["value", "secretKeyRef", "configMapKeyRef"],
        "volumeTypes": ["emptyDir", "configMap", "persistentVolumeClaim"],
        "allowedClaims": [],
        "allowedLabels": [],
        "allowedAnnotations": [],
    },
}
WIDE: dict[str, Any] = {
    "allowedImages": ["registry.example/team/", "ghcr.io/lorasweep/lorasweep-trainer"],
    "allowCommandOverride": True,
    "allowedServiceAccounts": ["trainer"],
    "allowedPriorityClasses": ["research"],
    "pod": {
        "envSources": ["value"],
        "volumeTypes": ["emptyDir", "persistentVolumeClaim"],
        "allowedClaims": ["model-cache"],
        "allowedLabels": ["team", "example.com/"],
        "allowedAnnotations": ["sidecar.istio.io/inject", "example.com/"],
    },
}
POLICIES = {"strict": STRICT, "wide": WIDE}

SECRET = "s3"
# The test's editor may get this ConfigMap and SECRET, not the other ones (tests/integration/test_sweep_policy.py).
CONFIG_MAP = "trainer-config"
OTHER_SECRET = "other"
OTHER_CONFIG_MAP = "other-config"
BASE: dict[str, Any] = {
    "image": "ghcr.io/lorasweep/lorasweep-trainer:0.1.0",
    "dataset": {"source": "s3://bucket/clips/"},
    "search": {"list": [{"learningRate": 1e-3}]},
    "storage": {"output": "s3://bucket/sweeps/", "credentialsSecret": SECRET},
    "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
}


def pod(
    env: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Spec changes giving spec.pod these parts; each volume is mounted at /mnt/<name>."""
    overrides: dict[str, Any] = {}
    if env:
        overrides["env"] = env
    if volumes:
        overrides["volumes"] = volumes
        overrides["volumeMounts"] = [{"name": v["name"], "mountPath": f"/mnt/{v['name']}"} for v in volumes]
    if labels:
        overrides["labels"] = labels
    if annotations:
        overrides["annotations"] = annotations
    return {"pod": overrides}


def value(name: str, text: str = "1") -> dict[str, Any]:
    return {"name": name, "value": text}


def from_secret(name: str, secret: str = SECRET, key: str = "token") -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def from_config_map(name: str, config_map: str = CONFIG_MAP, key: str = "url") -> dict[str, Any]:
    return {"name": name, "valueFrom": {"configMapKeyRef": {"name": config_map, "key": key}}}


def claim(name: str) -> dict[str, Any]:
    return {"name": name, "persistentVolumeClaim": {"claimName": name}}


def config_map_volume(name: str = CONFIG_MAP) -> dict[str, Any]:
    return {"name": name, "configMap": {"name": name}}


SHM = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}

CASES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("strict", "trainer-image-at-a-tag", {}, None),
    ("strict", "trainer-image-untagged", {"image": "ghcr.io/lorasweep/lorasweep-trainer"}, None),
    ("strict", "trainer-image-by-digest", {"image": "ghcr.io/lorasweep/lorasweep-trainer@sha256:" + "0" * 64}, None),
    ("strict", "default-command-spelled-out", {"command": ["lorasweep-trainer", "train"]}, None),
    ("strict", "look-alike-image", {"image": "ghcr.io/lorasweep/lorasweep-trainer-evil:1"}, "spec.image"),
    ("strict", "other-image", {"image": "docker.io/library/python:3.12"}, "spec.image"),
    ("strict", "command", {"command": ["python", "-c", "print(1)"]}, "spec.command"),
    ("strict", "service-account", {"serviceAccountName": "trainer"}, "spec.serviceAccountName"),
    ("strict", "priority-class", {"priorityClassName": "research"}, "spec.priorityClassName"),
    ("wide", "image-under-an-allowed-prefix", {"image": "registry.example/team/trainer:1"}, None),
    ("wide", "image-beside-the-prefix", {"image": "registry.example/teamx/trainer:1"}, "spec.image"),
    ("wide", "image-outside-the-prefix", {"image": "registry.example/other/trainer:1"}, "spec.image"),
    ("wide", "command-allowed", {"command": ["python", "-c", "print(1)"]}, None),
    ("wide", "allowed-service-account", {"serviceAccountName": "trainer"}, None),
    ("wide", "other-service-account", {"serviceAccountName": "admin"}, "spec.serviceAccountName"),
    ("wide", "allowed-priority-class", {"priorityClassName": "research"}, None),
    ("wide", "other-priority-class", {"priorityClassName": "system-cluster-critical"}, "spec.priorityClassName"),
    # spec.pod
    ("strict", "pod-env-value", pod(env=[value("PUSHGATEWAY_URL", "http://pushgateway.monitoring:9091")]), None),
    ("strict", "pod-harmless-python-env", pod(env=[value("PYTHONUNBUFFERED"), value("PYTHONHASHSEED", "0")]), None),
    ("strict", "pod-shm", {"pod": {"volumes": [SHM], "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]}},
     None),
    ("strict", "pod-secret-env-readable", pod(env=[from_secret("PUSHGATEWAY_PASSWORD")]), None),
    ("strict", "pod-config-map-readable", pod(env=[from_config_map("MLFLOW_URL")], volumes=[config_map_volume()]),
     None),
    ("strict", "pod-python-path", pod(env=[value("PYTHONPATH", "/mnt/code")]), "spec.pod.env"),
    ("strict", "pod-ld-preload", pod(env=[value("LD_PRELOAD", "/mnt/code/hook.so")]), "spec.pod.env"),
    ("strict", "pod-path", pod(env=[value("PATH", "/mnt/code:/usr/bin")]), "spec.pod.env"),
    ("strict", "pod-label", pod(labels={"team": "vision"}), "spec.pod.labels"),
    ("strict", "pod-annotation", pod(annotations={"sidecar.istio.io/inject": "false"}), "spec.pod.annotations"),
    ("wide", "pod-secret-env-not-allowed", pod(env=[from_secret("PUSHGATEWAY_PASSWORD")]), "spec.pod.env"),
    ("wide", "pod-config-map-volume-not-allowed", pod(volumes=[config_map_volume()]), "spec.pod.volumes"),
    ("wide", "pod-listed-claim", pod(volumes=[claim("model-cache")]), None),
    ("wide", "pod-unlisted-claim", pod(volumes=[claim("scratch")]), "spec.pod.volumes"),
    ("wide", "pod-allowed-labels", pod(labels={"team": "vision", "example.com/owner": "carol"}), None),
    ("wide", "pod-other-label", pod(labels={"role": "db-client"}), "spec.pod.labels"),
    ("wide", "pod-label-beside-the-prefix", pod(labels={"example.company/owner": "carol"}), "spec.pod.labels"),
    ("wide", "pod-allowed-annotations", pod(annotations={"sidecar.istio.io/inject": "false"}), None),
    ("wide", "pod-other-annotation", pod(annotations={"vault.hashicorp.com/agent-inject": "true"}),
     "spec.pod.annotations"),
    ("wide", "pod-python-path-with-command-override", pod(env=[value("PYTHONPATH", "/mnt/code")]), None),
]  # fmt: skip

AUTHOR_CASES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("strict", "pod-secret-env-unreadable", pod(env=[from_secret("TOKEN", OTHER_SECRET)]),
     f"may not get Secret {OTHER_SECRET} "),
    # Each reference is its own question to the authorizer: the last of four is asked too, repeats are not.
    ("strict", "pod-secret-in-the-last-slot",
     pod(env=[from_secret("A"), from_secret("B"), from_secret("C"), from_secret("D", OTHER_SECRET)]),
     f"may not get Secret {OTHER_SECRET} "),
    ("strict", "pod-four-refs-to-a-readable-secret",
     pod(env=[from_secret("A"), from_secret("B"), from_secret("C"), from_secret("D")]), None),
    ("strict", "pod-config-map-env-unreadable", pod(env=[from_config_map("URL", OTHER_CONFIG_MAP)]),
     f"may not get ConfigMap {OTHER_CONFIG_MAP} "),
    ("strict", "pod-config-map-volume-unreadable", pod(volumes=[config_map_volume(OTHER_CONFIG_MAP)]),
     f"may not get ConfigMap {OTHER_CONFIG_MAP} "),
    ("strict", "pod-config-map-volume-after-a-readable-one",
     pod(env=[from_config_map("URL")], volumes=[config_map_volume(OTHER_CONFIG_MAP)]),
     f"may not get ConfigMap {OTHER_CONFIG_MAP} "),
    # No claims listed: any claim, from an author who could mount it in a pod of their own.
    ("strict", "pod-any-claim", pod(volumes=[claim("scratch")]), "may not create Jobs"),
]  # fmt: skip


def case_spec(changes: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **changes}


def job_policy(values: dict[str, Any]) -> JobPolicy:
    """The operator's policy for chart `policy` values, as the Deployment's flags give it."""
    return JobPolicy(
        allowed_images=tuple(values["allowedImages"]),
        allow_command_override=values["allowCommandOverride"],
        allowed_service_accounts=tuple(values["allowedServiceAccounts"]),
        allowed_priority_classes=tuple(values["allowedPriorityClasses"]),
        env_sources=tuple(values["pod"]["envSources"]),
        volume_types=tuple(values["pod"]["volumeTypes"]),
        allowed_claims=tuple(values["pod"]["allowedClaims"]),
        allowed_labels=tuple(values["pod"]["allowedLabels"]),
        allowed_annotations=tuple(values["pod"]["allowedAnnotations"]),
    )
