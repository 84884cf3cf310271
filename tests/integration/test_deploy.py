"""deploy/: `kubectl apply -k deploy/` is accepted by the real API server, the plain operator Deployment is the
chart's, and the sample sweeps are valid LoraSweeps (the API server's schema and the operator's models).
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures_cluster import wait_for
from lorasweep_operator import planning
from lorasweep_operator.devcluster import binaries
from lorasweep_operator.spec import load_sweep_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SAMPLES = sorted((DEPLOY / "samples").glob("*.yaml"))


def kustomize(cluster: Any) -> list[dict[str, Any]]:
    out = cluster.kubectl("kustomize", str(DEPLOY)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.integration
def test_kubectl_apply_k_deploy_is_accepted(cluster: Any) -> None:
    objects = kustomize(cluster)
    kinds = {obj["kind"] for obj in objects}
    assert {"CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    assert {"Deployment", "Service"} <= kinds
    # A dry run cannot create the namespace the other objects go into, so it is made first (and removed
    # again if this test made it); everything else is only dry-run.
    existed = cluster.kubectl("get", "namespace", "lorasweep-system", check=False).returncode == 0
    cluster.kubectl("apply", "-f", str(DEPLOY / "manager" / "namespace.yaml"))
    try:
        result = cluster.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server", check=False)
        assert result.returncode == 0, result.stderr
        # An object another test created with server-side apply draws kubectl's last-applied note; any other
        # warning (Pod Security, deprecations) is a defect.
        warnings = [
            line for line in result.stderr.splitlines() if line.startswith("Warning") and "last-applied" not in line
        ]
        assert not warnings, result.stderr
        assert result.stdout.count("(server dry run)") == len(objects), result.stdout
    finally:
        if not existed:
            with contextlib.suppress(Exception):
                cluster.kubectl("delete", "namespace", "lorasweep-system", "--wait=false")


def test_plain_operator_deployment_is_the_charts() -> None:
    """One source for the operator's pod: deploy/manager must match the chart rendered with its defaults."""
    helm = binaries.ensure().path("helm")
    command = [
        str(helm),
        "template",
        "lorasweep",
        str(ROOT / "charts" / "lorasweep"),
        "--namespace",
        "lorasweep-system",
    ]
    command += ["--kube-version", binaries.KUBERNETES_VERSION, "--set", "fullnameOverride=lorasweep-operator"]
    command += ["--set", "image.tag=0.1.0"]
    rendered = [
        doc
        for doc in yaml.safe_load_all(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        if doc
    ]
    plain = [doc for doc in yaml.safe_load_all((DEPLOY / "manager" / "operator.yaml").read_text()) if doc]

    def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        (found,) = [obj for obj in objects if obj["kind"] == kind]
        return found

    chart_deployment, plain_deployment = one(rendered, "Deployment"), one(plain, "Deployment")
    assert plain_deployment["spec"]["template"]["spec"] == chart_deployment["spec"]["template"]["spec"]
    assert plain_deployment["spec"]["strategy"] == chart_deployment["spec"]["strategy"]
    assert plain_deployment["spec"]["replicas"] == chart_deployment["spec"]["replicas"]
    assert one(plain, "Service")["spec"]["ports"] == one(rendered, "Service")["spec"]["ports"]
    # The plain manifests' names agree with each other: the ServiceAccount in rbac/ is the one the pod uses.
    (account,) = [doc for doc in yaml.safe_load_all((DEPLOY / "rbac" / "service_account.yaml").read_text()) if doc]
    assert plain_deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert plain_deployment["metadata"]["namespace"] == account["metadata"]["namespace"]
    selector = plain_deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= plain_deployment["spec"]["template"]["metadata"]["labels"].items()
    assert one(plain, "Service")["spec"]["selector"] == selector


def test_phase1_sample_is_the_reference_sweep() -> None:
    """11 configurations: the baseline plus learning rate x4, rank x3 (alpha = 2 x rank), alpha ratio x2, dropout x1."""
    manifest = load_sweep_file(DEPLOY / "samples" / "phase1-sweep.yaml")
    trials = planning.plan(manifest.spec, manifest.name)
    assert len(trials) == 11
    configs = {
        (t.training.learning_rate, t.training.lora.rank, t.training.lora.alpha, t.training.lora.dropout) for t in trials
    }
    assert configs == {
        (2e-4, 16, 32, 0.10),
        (5e-5, 16, 32, 0.10),
        (1e-4, 16, 32, 0.10),
        (5e-4, 16, 32, 0.10),
        (1e-3, 16, 32, 0.10),
        (2e-4, 8, 16, 0.10),
        (2e-4, 32, 64, 0.10),
        (2e-4, 64, 128, 0.10),
        (2e-4, 16, 16, 0.10),
        (2e-4, 16, 64, 0.10),
        (2e-4, 16, 32, 0.05),
    }
    spec = manifest.spec
    assert (spec.model.frames_per_clip, spec.dataset.videos_per_class, spec.training.epochs) == (8, 50, 5)
    assert (spec.training.batch_size, spec.training.gradient_accumulation_steps, spec.training.weight_decay) == (
        1,
        4,
        0.01,
    )
    assert spec.resources.limits["nvidia.com/gpu"] == 1


def test_tiny_cpu_sample_needs_no_gpu() -> None:
    manifest = load_sweep_file(DEPLOY / "samples" / "tiny-cpu-sweep.yaml")
    assert manifest.spec.model.preset == "tiny"
    assert "nvidia.com/gpu" not in manifest.spec.resources.limits
    assert len(planning.plan(manifest.spec, manifest.name)) == 2


@pytest.mark.integration
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_are_accepted_by_the_api_server(cluster: Any, namespace: str, sample: Path) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(DEPLOY / "crd"))

    # Polled, not `kubectl wait`: that fails outright when it reads the new CRD before its status has conditions.
    def established() -> bool:
        crd = yaml.safe_load(cluster.kubectl("get", "crd/lorasweeps.lorasweep.dev", "-o", "yaml").stdout)
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for("the CRD to be established", established, timeout=60)
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample), check=False)
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout
