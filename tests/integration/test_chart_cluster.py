"""The real API server accepts every object the chart renders, in a namespace that enforces Pod Security
"restricted", for the default values and every ci/ values file.

ServiceMonitor, PodMonitor and PrometheusRule are checked against the Prometheus Operator's own CRDs (their published
OpenAPI schemas), taken from its Go module through the Go toolchain the test bed already needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasweep_operator.devcluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lorasweep"
CI = CHART / "ci"
KUBE_VERSION = ("--kube-version", binaries.KUBERNETES_VERSION)
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}

pytestmark = pytest.mark.integration


def monitoring_crds() -> list[Path]:
    """The ServiceMonitor, PodMonitor and PrometheusRule CRDs as the Prometheus Operator publishes them (cached by Go)."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", PROMETHEUS_OPERATOR],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    assert result.returncode == 0, f"cannot fetch {PROMETHEUS_OPERATOR} through the Go module proxy: {result.stderr}"
    folder = Path(json.loads(result.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    return [
        folder / f"monitoring.coreos.com_{plural}.yaml"
        for plural in ("servicemonitors", "podmonitors", "prometheusrules")
    ]


@pytest.fixture(scope="module")
def helm(cluster: Any) -> Path:
    return cluster.binaries.path("helm")


@pytest.fixture(scope="module")
def prepared(cluster: Any) -> None:
    """The CRDs every render needs: the chart's own and the Prometheus Operator's three."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    for path in monitoring_crds():
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for name in ("servicemonitors", "podmonitors", "prometheusrules", "lorasweeps"):
        group = "lorasweep.dev" if name == "lorasweeps" else "monitoring.coreos.com"
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}.{group}", "--timeout=60s")


@pytest.fixture
def watched(cluster: Any) -> Iterator[list[str]]:
    """The namespaces ci/namespaced-values.yaml names, made for the test (restricted) and removed after."""
    names = yaml.safe_load((CI / "namespaced-values.yaml").read_text())["operator"]["watchNamespaces"]
    for name in names:
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    yield names
    for name in names:
        with contextlib.suppress(Exception):
            cluster.kubectl("delete", "namespace", name, "--wait=false")


def render(helm: Path, namespace: str, *values: Path) -> list[dict[str, Any]]:
    args = [str(helm), "template", "lorasweep", str(CHART), "--namespace", namespace, *KUBE_VERSION]
    for path in values:
        args += ["--values", str(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def dry_run(cluster: Any, objects: list[dict[str, Any]]) -> str:
    """Server-side dry run of every object; returns kubectl's warnings (Pod Security ones among them)."""
    result = cluster.kubectl(
        "apply", "--dry-run=server", "--server-side", "--field-manager=lorasweep-test", "-f", "-",
        input=yaml.safe_dump_all(objects), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(objects), result.stdout
    return result.stderr


def operator_pod(cluster: Any, objects: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    """The Deployment's pod as a Pod of its own; its ServiceAccount is created for real (admission looks it up)."""
    (account,) = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(account))
    (deployment,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-pod-security-check", "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }


@pytest.mark.parametrize(
    "values",
    [(), (CI / "monitoring-values.yaml",), (CI / "long-names-values.yaml",)],
    ids=["defaults", "monitoring", "long-names"],
)
def test_api_server_accepts_every_rendered_object(
    cluster: Any, prepared: None, helm: Path, namespace: str, values: tuple[Path, ...]
) -> None:
    objects = render(helm, namespace, *values)
    warnings = dry_run(cluster, objects)
    assert "Warning" not in warnings, warnings
    # The namespace enforces "restricted": a Deployment is only warned about, a Pod is refused.
    pod_warnings = dry_run(cluster, [operator_pod(cluster, objects, namespace)])
    assert "PodSecurity" not in pod_warnings, pod_warnings


def test_namespaced_mode_is_accepted_in_the_watched_namespaces(
    cluster: Any, prepared: None, helm: Path, namespace: str, watched: list[str]
) -> None:
    objects = render(helm, namespace, CI / "namespaced-values.yaml")
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] in {"Role", "RoleBinding"}} == set(
        watched
    )
    warnings = dry_run(cluster, objects)
    assert "Warning" not in warnings, warnings


def test_a_pod_that_breaks_restricted_is_refused(cluster: Any, prepared: None, helm: Path, namespace: str) -> None:
    """The check above has teeth: the same pod without its security context is refused by the namespace."""
    pod = operator_pod(cluster, render(helm, namespace), namespace)
    del pod["spec"]["securityContext"]
    del pod["spec"]["containers"][0]["securityContext"]
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted' in result.stderr


def test_notes_tell_the_next_command(cluster: Any, prepared: None, helm: Path, namespace: str) -> None:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    command = [str(helm), "install", "lorasweep", str(CHART), "--dry-run=server", "--namespace", namespace]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {namespace} rollout status deployment/lorasweep" in notes
    assert "kubectl get lsw -w" in notes
    assert "serviceMonitor.enabled=true" in notes
