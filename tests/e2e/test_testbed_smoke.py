"""The test bed itself, end to end on the real control plane: Jobs run on the dev node and report like a
kubelet, the garbage collector and the scheduler work, RBAC and Pod Security are enforced."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fixtures_cluster import processes_running, wait_for
from lorasweep_operator.devcluster import binaries

pytestmark = pytest.mark.e2e

# What Pod Security Standards "restricted" asks of every container (the test namespaces enforce it).
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container(command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": "main",
        "image": "lorasweep-trainer:dev",
        "command": command,
        "securityContext": RESTRICTED,
        **extra,
    }


def job(name: str, command: list[str], backoff_limit: int = 0, **spec: Any) -> dict[str, Any]:
    pod_spec = {"restartPolicy": "Never", "containers": [container(command, **spec.pop("container", {}))]}
    pod_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": pod_spec}, **spec},
    }


def apply(cluster: Any, namespace: str, *documents: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))


def job_condition(batch: client.BatchV1Api, namespace: str, name: str) -> str | None:
    conditions = batch.read_namespaced_job(name, namespace).status.conditions or []
    done = [c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"]
    return done[0] if done else None


def pods_of(core: client.CoreV1Api, namespace: str, job_name: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items


def pod_reader(namespace: str, account: str) -> list[dict[str, Any]]:
    """A Role that may only `get` pods, bound to ``account``."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"pod-reader-{account}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    return [role, binding]


def test_job_completes_and_its_termination_message_is_readable(cluster: Any, api_client: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"MODE": "smoke"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"key": "s3cr3t"}}
    program = (
        "import json, os; "
        "summary = {k: os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', 'MODE', 'ACCESS_KEY', 'POD_NAME', 'GREETING')}; "
        "open(os.environ['LORASWEEP_TERMINATION_LOG'], 'w').write(json.dumps(summary)); "
        "print('trial finished')"
    )
    env = [
        {"name": "ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "mode=$(MODE)"},
    ]
    apply(cluster, namespace, settings, secret)
    apply(
        cluster,
        namespace,
        job(
            "smoke",
            ["python", "-c", program],
            container={"env": env, "envFrom": [{"configMapRef": {"name": "settings"}}]},
        ),
    )

    assert wait_for("job smoke to finish", lambda: job_condition(batch, namespace, "smoke"), timeout=90) == "Complete"
    (pod,) = pods_of(core, namespace, "smoke")
    assert pod.status.phase == "Succeeded"
    assert pod.status.pod_ip == "127.0.0.1"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at is not None and terminated.finished_at is not None
    assert json.loads(terminated.message) == {
        "CUDA_VISIBLE_DEVICES": "",
        "MODE": "smoke",
        "ACCESS_KEY": "s3cr3t",
        "POD_NAME": pod.metadata.name,
        "GREETING": "mode=smoke",
    }
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == "True" and conditions["Ready"] == "False"
    # kubectl logs goes API server -> the node's /containerLogs endpoint.
    assert cluster.kubectl("logs", "-n", namespace, pod.metadata.name).stdout.strip() == "trial finished"


def test_deleting_a_job_deletes_its_pod_and_stops_its_process(cluster: Any, api_client: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    marker = f"marker-{uuid.uuid4().hex}"
    apply(cluster, namespace, job("sleeper", ["python", "-c", f"import time; time.sleep(600)  # {marker}"]))
    wait_for(
        "the sleeper pod to run",
        lambda: any(p.status.phase == "Running" for p in pods_of(core, namespace, "sleeper")),
        timeout=60,
    )
    assert processes_running(marker)

    batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Background")

    wait_for(
        "the garbage collector to delete the Job's pod", lambda: not pods_of(core, namespace, "sleeper"), timeout=90
    )
    assert not processes_running(marker)


def test_gpu_requests_schedule_against_node_capacity(cluster: Any, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    gpus = {"resources": {"limits": {"nvidia.com/gpu": 5}}}
    one_gpu = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
    apply(cluster, namespace, job("five-gpus", ["python", "-c", "pass"], container=gpus))
    apply(cluster, namespace, job("one-gpu", ["python", "-c", "pass"], container=one_gpu))

    def unschedulable() -> Any:
        for pod in pods_of(core, namespace, "five-gpus"):
            for condition in pod.status.conditions or []:
                if condition.type == "PodScheduled" and condition.status == "False":
                    return pod, condition
        return None

    pod, condition = wait_for("the 5-GPU pod to be found unschedulable", unschedulable, timeout=60)
    assert condition.reason == "Unschedulable"
    assert "nvidia.com/gpu" in condition.message
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    # The node has 4: a 1-GPU pod is placed on it and runs.
    (placed,) = wait_for(
        "the 1-GPU pod to succeed",
        lambda: [p for p in pods_of(core, namespace, "one-gpu") if p.status.phase == "Succeeded"],
    )
    assert placed.spec.node_name == "lorasweep-dev-node"


def test_restricted_serviceaccount_is_refused_what_its_role_does_not_grant(
    cluster: Any, api_client: Any, namespace: str, serviceaccount_kubeconfig: Any
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "target"},
        "spec": {"restartPolicy": "Never", "containers": [container(["python", "-c", "pass"])]},
    }
    apply(cluster, namespace, *pod_reader(namespace, "reader"), pod)
    kubeconfig = serviceaccount_kubeconfig(namespace, "reader")
    restricted = config.new_client_from_config(config_file=str(kubeconfig))
    core, batch = client.CoreV1Api(restricted), client.BatchV1Api(restricted)

    assert core.read_namespaced_pod("target", namespace).metadata.name == "target"
    refused = {
        "list jobs": lambda: batch.list_namespaced_job(namespace),
        "list pods": lambda: core.list_namespaced_pod(namespace),
        "create pods": lambda: core.create_namespaced_pod(namespace, pod | {"metadata": {"name": "intruder"}}),
        "get secrets": lambda: core.read_namespaced_secret("anything", namespace),
    }
    for what, call in refused.items():
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == 403, what
        assert f"system:serviceaccount:{namespace}:reader" in caught.value.body, what


def test_pod_gets_a_kubeconfig_for_its_serviceaccount(cluster: Any, api_client: Any, namespace: str) -> None:
    """The operator runs as a pod: its process must reach the API server as its ServiceAccount."""
    core = client.CoreV1Api(api_client)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator"}}
    program = (
        "import os; from kubernetes import client, config; "
        "api = client.CoreV1Api(config.new_client_from_config()); "
        "pod = api.read_namespaced_pod(os.environ['POD_NAME'], os.environ['POD_NAMESPACE']); "
        "open(os.environ['LORASWEEP_TERMINATION_LOG'], 'w').write(pod.spec.service_account_name)"
    )
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    apply(cluster, namespace, account, *pod_reader(namespace, "operator"))
    apply(
        cluster,
        namespace,
        job("whoami", ["python", "-c", program], container={"env": env}, pod={"serviceAccountName": "operator"}),
    )

    def finished() -> client.V1Pod | None:
        pods = [p for p in pods_of(core, namespace, "whoami") if p.status.phase in ("Succeeded", "Failed")]
        return pods[0] if pods else None

    pod = wait_for("the whoami pod to finish", finished, timeout=90)
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded", cluster.kubectl("logs", "-n", namespace, pod.metadata.name).stdout
    assert terminated.message == "operator"


def test_pod_whose_command_does_not_exist_fails_with_a_reason(cluster: Any, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "missing-command"},
        "spec": {"restartPolicy": "Never", "containers": [container(["lorasweep-no-such-command", "--flag"])]},
    }
    apply(cluster, namespace, pod)

    failed = wait_for(
        "the pod to fail",
        lambda: (p := core.read_namespaced_pod("missing-command", namespace)).status.phase == "Failed" and p,
        timeout=60,
    )
    terminated = failed.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 128
    assert terminated.reason == "StartError"
    assert 'exec: "lorasweep-no-such-command": executable file not found in $PATH' in terminated.message


def test_pod_failure_policy_reads_the_exit_code(cluster: Any, api_client: Any, namespace: str) -> None:
    """The operator's Jobs stop retrying on exit codes 2 and 3: the Job controller must see them."""
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    policy = {
        "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [2, 3]}}]
    }
    apply(
        cluster,
        namespace,
        job("bad-config", ["python", "-c", "raise SystemExit(3)"], backoff_limit=4, podFailurePolicy=policy),
    )

    assert (
        wait_for("job bad-config to finish", lambda: job_condition(batch, namespace, "bad-config"), timeout=90)
        == "Failed"
    )
    failed = next(c for c in batch.read_namespaced_job("bad-config", namespace).status.conditions if c.type == "Failed")
    assert failed.reason == "PodFailurePolicy"
    assert len(pods_of(core, namespace, "bad-config")) == 1


def test_pod_security_restricted_is_enforced(cluster: Any, namespace: str) -> None:
    # Fine under "baseline", refused under "restricted": no securityContext at all.
    unhardened = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "unhardened"},
        "spec": {"containers": [{"name": "main", "image": "x", "command": ["true"]}]},
    }
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(unhardened), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr
    assert "allowPrivilegeEscalation != false" in result.stderr


def test_server_reports_the_pinned_version(cluster: Any) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == binaries.KUBERNETES_VERSION == "v1.34.4"
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    (node,) = [n for n in nodes if n["metadata"]["name"] == "lorasweep-dev-node"]
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
