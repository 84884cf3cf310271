"""The good and bad cases of the operator's Job policy, shared by the unit test of the operator's check
(tests/unit/test_policy.py) and by the tests that send them through the chart's ValidatingAdmissionPolicy on
the real API server and through the running operator (tests/integration/test_sweep_policy.py).

A policy is written as the chart's ``policy`` values; a case is (policy, id, spec changes, the field the
policy refuses or None).
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
}
WIDE: dict[str, Any] = {
    "allowedImages": ["registry.example/team/", "ghcr.io/lorasweep/lorasweep-trainer"],
    "allowCommandOverride": True,
    "allowedServiceAccounts": ["trainer"],
    "allowedPriorityClasses": ["research"],
}
POLICIES = {"strict": STRICT, "wide": WIDE}

SECRET = "s3"
BASE: dict[str, Any] = {
    "image": "ghcr.io/lorasweep/lorasweep-trainer:0.1.0",
    "dataset": {"source": "s3://bucket/clips/"},
    "search": {"list": [{"learningRate": 1e-3}]},
    "storage": {"output": "s3://bucket/sweeps/", "credentialsSecret": SECRET},
    "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
}

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
]


def case_spec(changes: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **changes}


def job_policy(values: dict[str, Any]) -> JobPolicy:
    """The operator's policy for chart `policy` values, as the Deployment's flags give it."""
    return JobPolicy(
        allowed_images=tuple(values["allowedImages"]),
        allow_command_override=values["allowCommandOverride"],
        allowed_service_accounts=tuple(values["allowedServiceAccounts"]),
        allowed_priority_classes=tuple(values["allowedPriorityClasses"]),
    )
