"""The chart's RBAC is exactly what the operator uses: no wildcard, no verb the code does not need.

The needed permissions are derived from the code itself: every Kubernetes call goes through
`Kube._call(verb, resource, ...)` in operator/lorasweep_operator/kube.py, and kopf's own needs follow from
the handlers it registers (watched resources: list and watch; resources with stateful handlers: patch, for
kopf's progress annotations and finalizer; events: create). The same rules must be in deploy/rbac/, and the
real API server must grant the chart's ServiceAccount those and nothing more. That they are also enough is
shown by tests/e2e/test_helm_install.py, where the operator runs a sweep with only these permissions.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_operator_rbac import can

from lorasweep_operator import rendering
from lorasweep_operator.devcluster import binaries
from lorasweep_operator.spec import GROUP, PLURAL

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lorasweep"
OPERATOR = ROOT / "operator" / "lorasweep_operator"
KUBE_VERSION = ("--kube-version", binaries.KUBERNETES_VERSION)

# Which API group serves each resource the operator names.
API_GROUPS = {PLURAL: GROUP, "jobs": "batch", "pods": "", "events": "", "tokenreviews": "authentication.k8s.io"}
# kopf decorators whose handlers keep state on the object (progress annotations, the finalizer).
STATEFUL = {"create", "update", "resume", "delete", "timer", "daemon", "field"}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def group_of(resource: str) -> str:
    return API_GROUPS[resource.split("/")[0]]


def flatten(rules: list[dict[str, Any]]) -> set[Grant]:
    grants = set()
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    grants.add((group, resource, verb))
    return grants


def calls_in_kube() -> set[Grant]:
    """(group, resource, verb) of every request in kube.py: each goes through `Kube._request(verb, resource, ...)`.

    A helper that forwards its own `resource` parameter (like `_list`) is followed to its callers.
    """
    tree = ast.parse((OPERATOR / "kube.py").read_text())
    known = {"PLURAL": PLURAL, "GROUP": GROUP}

    def value(node: ast.expr) -> str | None:
        try:
            return str(eval(compile(ast.Expression(node), "kube.py", "eval"), {"__builtins__": {}}, known))  # noqa: S307 - literals and two constants
        except NameError:
            return None

    grants: set[Grant] = set()
    forwarded: dict[str, str] = {}  # helper name -> verb
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        for call in (node for node in ast.walk(function) if isinstance(node, ast.Call)):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "_request":
                verb, resource = value(call.args[0]), value(call.args[1])
                assert verb is not None, ast.unparse(call)
                if resource is None:
                    forwarded[function.name] = verb
                else:
                    grants.add((group_of(resource), resource, verb))
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        if isinstance(call.func, ast.Attribute) and call.func.attr in forwarded:
            resource = value(call.args[0])
            assert resource is not None, ast.unparse(call)
            grants.add((group_of(resource), resource, forwarded[call.func.attr]))
    assert grants, "no Kube._request found: has kube.py changed shape? update this test with it"
    return grants


def kopf_needs() -> set[Grant]:
    """What kopf does for the handlers in handlers.py: watch what they observe, patch what keeps state."""
    tree = ast.parse((OPERATOR / "handlers.py").read_text())
    grants: set[Grant] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if not (isinstance(decorator, ast.Call) and "kopf" in ast.unparse(decorator.func)):
                continue
            kind = ast.unparse(decorator.func).rsplit(".", 1)[1]
            constants = [arg.value for arg in decorator.args if isinstance(arg, ast.Constant)]
            names = {ast.unparse(arg) for arg in decorator.args}
            if not constants and not names:
                continue  # @kopf.on.startup() and the like
            resource = PLURAL if "PLURAL" in names else constants[-1]
            group = group_of(resource)
            grants |= {(group, resource, "list"), (group, resource, "watch")}
            if kind in STATEFUL:
                grants.add((group, resource, "patch"))
    # kopf posts its handlers' outcomes as core Events (settings.posting).
    grants.add(("", "events", "create"))
    return grants


def owner_reference_needs() -> set[Grant]:
    # A Job whose ownerReference blocks the owner's deletion needs update on the owner's finalizers
    # wherever OwnerReferencesPermissionEnforcement is on.
    source = (OPERATOR / "rendering.py").read_text()
    return {(GROUP, f"{PLURAL}/finalizers", "update")} if '"blockOwnerDeletion": True' in source else set()


def render(*args: str) -> list[dict[str, Any]]:
    helm = binaries.ensure().path("helm")
    command = [str(helm), "template", "lorasweep", str(CHART), "--namespace", "lorasweep-system", *KUBE_VERSION, *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def operator_rules(objects: list[dict[str, Any]], kind: str) -> list[list[dict[str, Any]]]:
    return [
        obj["rules"]
        for obj in objects
        if obj["kind"] == kind and not obj["metadata"]["name"].endswith(("-editor", "-viewer"))
    ]


def plain(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "rbac" / name).read_text()) if doc]


def test_no_wildcards_anywhere() -> None:
    for values in [[], ["--values", str(CHART / "ci" / "namespaced-values.yaml")]]:
        for obj in render(*values):
            for rule in obj.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), f"{obj['kind']}/{obj['metadata']['name']}: {rule}"


def test_rules_are_exactly_what_the_code_uses() -> None:
    needed = calls_in_kube() | kopf_needs() | owner_reference_needs()
    (cluster_rules,) = operator_rules(render(), "ClusterRole")
    granted = flatten(cluster_rules)
    assert granted - needed == set(), "granted but never used by the operator"
    assert needed - granted == set(), "used by the operator but not granted"


def test_namespaced_roles_carry_the_same_rules() -> None:
    objects = render("--values", str(CHART / "ci" / "namespaced-values.yaml"))
    (cluster_rules,) = operator_rules(render(), "ClusterRole")
    roles = operator_rules(objects, "Role")
    assert len(roles) == 2
    assert all(flatten(rules) == flatten(cluster_rules) for rules in roles)


def test_chart_and_deploy_rbac_agree() -> None:
    (chart_rules,) = operator_rules(render(), "ClusterRole")
    (plain_role,) = plain("role.yaml")
    assert flatten(chart_rules) == flatten(plain_role["rules"])
    chart_user_roles = {
        obj["metadata"]["name"].rsplit("-", 1)[1]: flatten(obj["rules"])
        for obj in render()
        if obj["kind"] == "ClusterRole" and obj["metadata"]["name"].endswith(("-editor", "-viewer"))
    }
    plain_user_roles = {
        obj["metadata"]["name"].rsplit("-", 1)[1]: flatten(obj["rules"]) for obj in plain("user_roles.yaml")
    }
    assert chart_user_roles == plain_user_roles
    aggregation = {
        obj["metadata"]["name"].rsplit("-", 1)[1]: {
            k: v for k, v in obj["metadata"]["labels"].items() if "aggregate" in k
        }
        for obj in plain("user_roles.yaml")
    }
    for obj in render():
        if obj["kind"] == "ClusterRole" and obj["metadata"]["name"].endswith(("-editor", "-viewer")):
            role = obj["metadata"]["name"].rsplit("-", 1)[1]
            assert aggregation[role].items() <= obj["metadata"]["labels"].items()


def test_trainer_selector_matches_the_rendered_pods() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["podMonitor"]["trainerSelector"].items() <= rendering.APP_LABELS.items()


@pytest.mark.integration
def test_api_server_grants_exactly_these_rules(cluster: Any, namespace: str, serviceaccount_kubeconfig: Any) -> None:
    """Install the namespaced-mode RBAC for real and ask the API server, with the ServiceAccount's own token."""
    objects = render("--namespace", namespace, "--set", f"operator.watchNamespaces={{{namespace}}}")
    rbac = [obj for obj in objects if obj["kind"] in {"ServiceAccount", "Role", "RoleBinding"}]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    account = next(obj["metadata"]["name"] for obj in rbac if obj["kind"] == "ServiceAccount")
    token = serviceaccount_kubeconfig(namespace, account)
    (rules,) = operator_rules(objects, "Role")

    def may(verb: str, resource: str, group: str, where: str = namespace) -> bool:
        name, _, subresource = resource.partition("/")
        return can(cluster, token, where, verb, f"{name}.{group}" if group else name, subresource)

    for group, resource, verb in sorted(flatten(rules)):
        assert may(verb, resource, group), f"{account} cannot {verb} {resource}.{group or 'core'}"
    refused = [
        ("delete", "jobs", "batch"),
        ("update", "jobs", "batch"),
        ("create", "pods", ""),
        ("get", "secrets", ""),
        ("list", "secrets", ""),
        ("delete", PLURAL, GROUP),
        ("create", PLURAL, GROUP),
        ("update", f"{PLURAL}/status", GROUP),
        ("create", "rolebindings", "rbac.authorization.k8s.io"),
    ]
    for verb, resource, group in refused:
        assert not may(verb, resource, group), f"{account} may {verb} {resource}: more than the operator needs"
    # Namespaced mode grants nothing outside the watched namespace.
    assert not may("list", "jobs", "batch", where="default")
    assert not may("watch", PLURAL, GROUP, where="kube-system")


@pytest.mark.integration
def test_cluster_mode_grants_the_same_rules_in_every_namespace(
    cluster: Any, namespace: str, serviceaccount_kubeconfig: Any
) -> None:
    """Cluster mode for real: the ClusterRole and its binding (named after this test's namespace, removed after)."""
    release = f"rbac-{namespace}"[:40]
    helm = binaries.ensure().path("helm")
    command = [str(helm), "template", release, str(CHART), "--namespace", namespace, *KUBE_VERSION]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc]
    rbac = [obj for obj in objects if obj["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}]
    cluster_scoped = [obj for obj in rbac if obj["kind"] != "ServiceAccount"]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    try:
        account = next(obj["metadata"]["name"] for obj in rbac if obj["kind"] == "ServiceAccount")
        token = serviceaccount_kubeconfig(namespace, account)
        (rules,) = operator_rules(objects, "ClusterRole")
        for where in (namespace, "default"):
            for group, resource, verb in sorted(flatten(rules)):
                name, _, subresource = resource.partition("/")
                target = f"{name}.{group}" if group else name
                assert can(cluster, token, where, verb, target, subresource), f"{verb} {resource} in {where}"
            assert not can(cluster, token, where, "delete", "jobs.batch")
            assert not can(cluster, token, where, "get", "secrets")
    finally:
        cluster.kubectl(
            "delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(cluster_scoped), check=False
        )
