"""The dev node's pure kubelet logic: environment resolution, argv, termination messages, pod status."""

from __future__ import annotations

from typing import Any

import pytest

from lorasweep_operator.devcluster import pods
from lorasweep_operator.devcluster.pods import ContainerRun

POD: dict[str, Any] = {
    "metadata": {
        "name": "trial-0",
        "namespace": "sweeps",
        "uid": "uid-1",
        "labels": {"lorasweep.dev/sweep": "phase1"},
        "annotations": {"note": "hi"},
    },
    "spec": {
        "nodeName": "lorasweep-dev-node",
        "serviceAccountName": "trainer",
        "restartPolicy": "Never",
        "containers": [
            {"name": "main", "image": "trainer:dev", "resources": {"limits": {"cpu": "1500m", "memory": "2Gi"}}}
        ],
    },
}
CONFIGMAPS = {"settings": {"MODE": "fast", "EPOCHS": "5", "bad key": "x"}}
SECRETS = {"s3": {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "shh"}}


def resolve(container: dict[str, Any], configmaps: Any = None, secrets: Any = None) -> dict[str, str]:
    cms = CONFIGMAPS if configmaps is None else configmaps
    scs = SECRETS if secrets is None else secrets
    return pods.container_env(POD, {"name": "main", **container}, cms.get, scs.get, {"cpu": "32", "memory": "128Gi"})


def test_env_from_then_env_with_references_and_expansion() -> None:
    env = resolve(
        {
            "envFrom": [{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "s3"}, "prefix": "S3_"}],
            "env": [
                {"name": "MODE", "value": "override-$(MODE)"},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
                {"name": "EPOCHS_TOO", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "EPOCHS"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "SWEEP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['lorasweep.dev/sweep']"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "LITERAL", "value": "$$(MODE) and $(UNDEFINED)"},
            ],
        }
    )
    assert env == {
        "MODE": "override-fast",
        "EPOCHS": "5",
        "S3_AWS_ACCESS_KEY_ID": "AKIA",
        "S3_AWS_SECRET_ACCESS_KEY": "shh",
        "KEY": "shh",
        "EPOCHS_TOO": "5",
        "POD": "trial-0",
        "NS": "sweeps",
        "SWEEP": "phase1",
        "SA": "trainer",
        "CPU": "2",  # 1500m rounded up, as the kubelet does
        "MEM_MI": "2048",
        "LITERAL": "$(MODE) and $(UNDEFINED)",
    }
    assert "bad key" not in env  # not a valid variable name: skipped like the kubelet does


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"envFrom": [{"configMapRef": {"name": "missing"}}]}, 'configmap "missing" not found'),
        ({"envFrom": [{"secretRef": {"name": "missing"}}]}, 'secret "missing" not found'),
        (
            {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "NOPE"}}}]},
            "couldn't find key NOPE in Secret s3",
        ),
        (
            {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "K"}}}]},
            'configmap "gone" not found',
        ),
        ({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]}, "unsupported fieldRef"),
    ],
)
def test_missing_references_are_config_errors(container: dict[str, Any], message: str) -> None:
    with pytest.raises(pods.EnvError, match=message):
        resolve(container)


def test_optional_references_may_be_missing() -> None:
    env = resolve(
        {
            "envFrom": [{"configMapRef": {"name": "missing", "optional": True}}],
            "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "NOPE", "optional": True}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "K", "optional": True}}},
            ],
        }
    )
    assert env == {}


def test_argv_expands_variables_and_needs_a_command() -> None:
    container = {"name": "main", "command": ["lorasweep-trainer", "train"], "args": ["--out", "$(OUT)", "$$(OUT)"]}
    assert pods.container_argv(container, {"OUT": "/tmp/x"}) == [
        "lorasweep-trainer",
        "train",
        "--out",
        "/tmp/x",
        "$(OUT)",
    ]
    with pytest.raises(pods.StartError, match="cannot run the entrypoint of image 'trainer:dev'"):
        pods.container_argv({"name": "main", "image": "trainer:dev", "args": ["x"]}, {})


@pytest.mark.parametrize(
    ("file_text", "log", "policy", "code", "expected"),
    [
        ('{"status": "ok"}', "noise", "File", 0, '{"status": "ok"}'),
        ("", "line1\nboom", "FallbackToLogsOnError", 1, "line1\nboom"),
        ("", "line1\nboom", "FallbackToLogsOnError", 0, ""),  # only on error
        ("", "line1\nboom", "File", 1, ""),
        ("x" * 5000, "", "File", 0, "x" * 4096),  # the kubelet's 4 KiB limit
    ],
)
def test_termination_message(file_text: str, log: str, policy: str, code: int, expected: str) -> None:
    assert pods.termination_message(file_text, log, policy, code) == expected


def test_exit_codes_of_signals_are_128_plus_signal() -> None:
    assert pods.exit_code_of(-9) == 137
    assert pods.exit_code_of(-15) == 143
    assert pods.exit_code_of(3) == 3


def run(state: str, exit_code: int | None = None, name: str = "main") -> ContainerRun:
    container = ContainerRun(name=name, image="trainer:dev", state=state, started_at="2026-01-01T00:00:00Z")
    if state == "terminated":
        container.exit_code = exit_code
        container.reason = "Completed" if exit_code == 0 else "Error"
        container.finished_at = "2026-01-01T00:01:00Z"
    return container


@pytest.mark.parametrize(
    ("policy", "init", "main", "deleted", "phase"),
    [
        ("Never", [], [run("waiting")], False, "Pending"),
        ("Never", [], [run("running")], False, "Running"),
        ("Never", [], [run("terminated", 0)], False, "Succeeded"),
        ("Never", [], [run("terminated", 3)], False, "Failed"),
        ("Never", [], [run("terminated", 0), run("running", name="side")], False, "Running"),
        ("OnFailure", [], [run("terminated", 1)], False, "Running"),  # will restart
        ("OnFailure", [], [run("terminated", 0)], False, "Succeeded"),
        ("Always", [], [run("terminated", 0)], False, "Running"),
        ("Never", [run("terminated", 1, "init")], [run("waiting")], False, "Failed"),
        ("OnFailure", [run("terminated", 1, "init")], [run("waiting")], False, "Pending"),
        ("Never", [run("running", name="init")], [run("waiting")], False, "Pending"),
        ("Always", [], [run("terminated", 143)], True, "Failed"),
        ("Always", [], [run("terminated", 0)], True, "Succeeded"),
        ("Never", [], [run("waiting")], True, "Failed"),
    ],
)
def test_pod_phase(policy: str, init: list[ContainerRun], main: list[ContainerRun], deleted: bool, phase: str) -> None:
    assert pods.pod_phase(policy, init, main, deleted) == phase


def test_status_of_a_failed_start_is_what_the_job_controller_reads() -> None:
    container = ContainerRun(name="main", image="trainer:dev", state="terminated", exit_code=128, reason="StartError")
    container.message = 'exec: "nope": executable file not found in $PATH'
    container.started_at = container.finished_at = "2026-01-01T00:00:00Z"
    status = pods.pod_status(POD, [], [container], "2026-01-01T00:00:05Z", "2026-01-01T00:00:00Z")
    assert status["phase"] == "Failed"
    (reported,) = status["containerStatuses"]
    assert reported["state"] == {
        "terminated": {
            "exitCode": 128,
            "reason": "StartError",
            "message": 'exec: "nope": executable file not found in $PATH',
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": "2026-01-01T00:00:00Z",
        }
    }
    assert reported["ready"] is False and reported["containerID"] == "lorasweep-dev://uid-1-main-0"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["PodScheduled"]["status"] == "True"
    assert status["podIP"] == "127.0.0.1" and status["hostIP"] == "127.0.0.1"


def test_running_status_is_ready_and_keeps_transition_times() -> None:
    before = {
        **POD,
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"}]},
    }
    status = pods.pod_status(before, [], [run("running")], "2026-01-01T00:09:00Z", "2026-01-01T00:00:00Z")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Running"
    assert conditions["Ready"] == {
        "type": "Ready",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": "2026-01-01T00:00:01Z",
    }
    assert conditions["ContainersReady"]["lastTransitionTime"] == "2026-01-01T00:09:00Z"
    (reported,) = status["containerStatuses"]
    assert reported["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert reported["ready"] is True and reported["started"] is True


def test_waiting_status_carries_the_config_error() -> None:
    container = ContainerRun(
        name="main", waiting_reason="CreateContainerConfigError", waiting_message='secret "s3" not found'
    )
    status = pods.pod_status(POD, [], [container], "t", "t")
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'}
    }
    assert "containerID" not in status["containerStatuses"][0]


def test_restarted_container_reports_its_last_state() -> None:
    container = run("running")
    container.restart_count = 1
    container.last_state = {"terminated": {"exitCode": 1, "reason": "Error"}}
    (reported,) = pods.pod_status(POD, [], [container], "t", "t")["containerStatuses"]
    assert reported["restartCount"] == 1
    assert reported["lastState"] == {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert reported["containerID"].endswith("-main-1")
