"""The Helm chart rendered by the real helm binary: lint, render, names, labels, values, schema, CRD copy.

No cluster needed; tests/integration/test_chart_cluster.py sends the same renders to the API server.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasweep_operator import cli
from lorasweep_operator.devcluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lorasweep"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
}

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="module")
def helm() -> Path:
    return binaries.ensure().path("helm")


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def render(helm: Path) -> Render:
    def _render(
        *values: Path, namespace: str = "lorasweep-system", release: str = "lorasweep", sets: tuple[str, ...] = ()
    ):
        # No --kube-version: the test bed's helm is built to assume the Kubernetes version it ships with.
        args = ["template", release, str(CHART), "--namespace", namespace, "--include-crds"]
        for path in values:
            args += ["--values", str(path)]
        for item in sets:
            args += ["--set", item]
        out = run_helm(helm, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return _render


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_helm_lint_is_clean(helm: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    result = run_helm(helm, *args)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_renders_with_standard_labels_and_valid_names(render: Render, values: Path | None) -> None:
    objects = render(*([values] if values else []))
    kinds = {obj["kind"] for obj in objects}
    assert {"CustomResourceDefinition", "ServiceAccount", "Deployment", "Service"} <= kinds
    for obj in objects:
        meta = obj["metadata"]
        where = f"{obj['kind']}/{meta['name']}"
        limit = 253 if obj["kind"] == "CustomResourceDefinition" else 63
        assert len(meta["name"]) <= limit and re.fullmatch(r"[a-z0-9.-]+", meta["name"]), where
        if obj["kind"] in {"Service", "Deployment", "ServiceAccount", "ConfigMap"}:
            assert DNS_LABEL.match(meta["name"]), f"{where}: not a DNS label"
        if obj["kind"] == "CustomResourceDefinition":
            continue
        labels = meta.get("labels", {})
        assert set(labels) >= STANDARD_LABELS, f"{where} lacks {STANDARD_LABELS - set(labels)}"
        for key, value in labels.items():
            assert LABEL_VALUE.match(str(value)), f"{where}: label {key}={value!r} is not a valid label value"
        assert labels["app.kubernetes.io/version"], f"{where}: empty version label"


def test_version_label_is_the_image_tag_or_the_app_version(render: Render) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (deployment,) = by_kind(render(), "Deployment")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == chart["appVersion"]
    (deployment,) = by_kind(render(sets=("image.tag=1.2.3+cu128",)), "Deployment")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "1.2.3_cu128"


def test_long_names_are_cut_to_63_characters(render: Render) -> None:
    objects = render(CHART / "ci" / "long-names-values.yaml", release="a-release-name-that-is-long-too")
    names = {obj["metadata"]["name"] for obj in objects if obj["kind"] != "CustomResourceDefinition"}
    assert max(len(name) for name in names) == 63, "the long override should reach the limit"
    identities = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in objects]
    assert len(set(identities)) == len(identities), "cutting names made two objects collide"
    dashboards = by_kind(objects, "ConfigMap")
    assert len({cm["metadata"]["name"] for cm in dashboards}) == len(list((CHART / "dashboards").glob("*.json")))


def test_crds_are_identical_to_deploy_crd() -> None:
    chart = {path.name: path.read_bytes() for path in (CHART / "crds").iterdir()}
    plain = {path.name: path.read_bytes() for path in (ROOT / "deploy" / "crd").glob("*.yaml")}
    plain.pop("kustomization.yaml")
    assert chart == plain, "copy deploy/crd/*.yaml to charts/lorasweep/crds/ (the chart ships the same CRD)"


def test_operator_deployment(render: Render) -> None:
    objects = render()
    deployment = the(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081, "progress": 8082}
    # The probes call kopf's liveness endpoint, at the port and path the operator is told to serve it on.
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    args = cli.build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.command == "operator"
    assert (args.metrics_port, args.health_port, args.all_namespaces) == (8080, 8081, True)
    assert (args.watch_inactivity_timeout, args.watch_server_timeout) == (70, 600)  # operator.watch.*
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Pod Security "restricted", field by field (the API server check is in test_chart_cluster.py).
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["serviceAccountName"] == the(objects, "ServiceAccount")["metadata"]["name"]
    service = the(objects, "Service")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"},
        {"name": "progress", "port": 8082, "targetPort": "progress", "protocol": "TCP"},
    ]
    # Trial pods of sweeps with spec.earlyStopping report their epochs through that Service.
    service_host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert "--progress-port=8082" in container["args"]
    assert f"--progress-url=http://{service_host}:8082/v1/progress" in container["args"]


def test_cluster_mode_uses_one_cluster_role(render: Render) -> None:
    objects = render()
    operator_roles = [
        role
        for role in by_kind(objects, "ClusterRole")
        if not role["metadata"]["name"].endswith(("-editor", "-viewer"))
    ]
    assert len(operator_roles) == 1 and not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    binding = the(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == operator_roles[0]["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": the(objects, "ServiceAccount")["metadata"]["name"],
            "namespace": "lorasweep-system",
        }
    ]
    assert "--all-namespaces" in the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_namespaced_mode_grants_nothing_cluster_wide(render: Render) -> None:
    values = CHART / "ci" / "namespaced-values.yaml"
    watched = yaml.safe_load(values.read_text())["operator"]["watchNamespaces"]
    objects = render(values)
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    roles, bindings = by_kind(objects, "Role"), by_kind(objects, "RoleBinding")
    assert sorted(role["metadata"]["namespace"] for role in roles) == sorted(watched)
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == sorted(watched)
    args = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [arg for arg in args if arg.startswith("--namespace=")] == [f"--namespace={ns}" for ns in watched]
    assert "--all-namespaces" not in args
    # TokenReviews are cluster-scoped: no progress endpoint (early stopping) without a cluster-wide grant.
    assert not [arg for arg in args if arg.startswith("--progress-")]


def test_monitors_and_dashboards(render: Render) -> None:
    objects = render(CHART / "ci" / "monitoring-values.yaml")
    service_monitor = the(objects, "ServiceMonitor")
    assert service_monitor["spec"]["selector"]["matchLabels"] == the(objects, "Service")["spec"]["selector"]
    assert service_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_monitor = the(objects, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    files = {path.name: path.read_text() for path in (CHART / "dashboards").glob("*.json")}
    configmaps = by_kind(objects, "ConfigMap")
    assert len(configmaps) == len(files) >= 2
    shipped = {}
    for configmap in configmaps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["annotations"] == {"grafana_folder": "LoRA sweeps"}
        ((key, text),) = configmap["data"].items()
        shipped[key.removeprefix("lorasweep-")] = text
    assert {name: json.loads(text) for name, text in shipped.items()} == {
        name: json.loads(text) for name, text in files.items()
    }


def test_optional_objects_are_off_by_default(render: Render) -> None:
    kinds = {obj["kind"] for obj in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "ConfigMap"}


def test_every_value_has_a_comment() -> None:
    # Keys inside these blocks are Kubernetes objects passed through as they are; the block carries the comment.
    passthrough = ("resources", "podSecurityContext", "securityContext", "probes.liveness", "probes.readiness")
    passthrough += ("podMonitor.trainerSelector",)
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    missing = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        path = [(i, key) for i, key in path if i < indent] + [(indent, match.group(2))]
        dotted = ".".join(key for _, key in path)
        if any(dotted.startswith(block + ".") for block in passthrough):
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            missing.append(dotted)
    assert not missing, f"values without a comment line right above them: {missing}"


def test_schema_accepts_the_defaults_and_every_ci_file() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(schema["properties"]) == set(defaults), "the schema and values.yaml describe the same keys"


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("operator.watchNamespaces={Not_A_Namespace}", "/operator/watchNamespaces/0"),
        ("metrics.port=70000", "/metrics/port"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.watchNamespace=team-a", "watchNamespace"),
        ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
        ("policy.pod.volumeTypes={hostPath}", "/policy/pod/volumeTypes/0"),
        ("policy.pod.envSources={fieldRef}", "/policy/pod/envSources/0"),
        ("policy.pod.allowedLabels={not a key}", "/policy/pod/allowedLabels/0"),
        ("policy.pod.allowedClaims={Not_A_Claim}", "/policy/pod/allowedClaims/0"),
        ("operator.watch.serverTimeoutSeconds=0", "/operator/watch/serverTimeoutSeconds"),
    ],
)
def test_schema_rejects_bad_values_with_a_readable_message(helm: Path, setting: str, complaint: str) -> None:
    result = run_helm(helm, "template", "x", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


@pytest.mark.parametrize("policy", ["strict", "wide"])
def test_policy_values_become_the_operators_policy(render: Render, tmp_path: Path, policy: str) -> None:
    """The Deployment's flags give the operator the policy the admission policy holds authors to (policy_cases)."""
    from lorasweep_operator.commands.operator import job_policy as cli_policy
    from policy_cases import POLICIES, job_policy

    values = tmp_path / "policy.yaml"
    values.write_text(yaml.safe_dump({"policy": POLICIES[policy]}))
    (container,) = the(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert cli_policy(args) == job_policy(POLICIES[policy])


def test_no_env_sources_or_volume_types_become_flags_that_allow_none(render: Render, tmp_path: Path) -> None:
    from lorasweep_operator.commands.operator import job_policy as cli_policy

    values = tmp_path / "none.yaml"
    values.write_text(yaml.safe_dump({"policy": {"pod": {"envSources": [], "volumeTypes": []}}}))
    (container,) = the(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    policy = cli_policy(cli.build_parser().parse_args([*container["command"][1:], *container["args"]]))
    assert (policy.env_sources, policy.volume_types) == ((), ())
