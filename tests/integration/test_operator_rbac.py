"""Least privilege on the real API server: what the operator's ServiceAccount (deploy/rbac, bound in one
namespace) and the lorasweep-editor / lorasweep-viewer roles may and may not do."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OPERATOR_ACCOUNT, bind_operator

pytestmark = pytest.mark.usefixtures("crd")


def can(cluster: Any, kubeconfig: Path, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
    argv = [str(cluster.binaries.path("kubectl")), "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource]
    argv += ["-n", namespace] + ([f"--subresource={subresource}"] if subresource else [])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_operator_account_has_what_it_uses_and_nothing_else(
    cluster: Any, namespace: str, serviceaccount_kubeconfig: Any
) -> None:
    bind_operator(cluster, namespace)
    token = serviceaccount_kubeconfig(namespace, OPERATOR_ACCOUNT)
    allowed = [
        ("get", "lorasweeps.lorasweep.dev", ""),
        ("watch", "lorasweeps.lorasweep.dev", ""),
        ("patch", "lorasweeps.lorasweep.dev", ""),
        ("patch", "lorasweeps.lorasweep.dev", "status"),
        ("create", "jobs.batch", ""),
        ("list", "jobs.batch", ""),
        ("get", "jobs.batch", ""),  # early stopping: a trial's epochs and rung decisions on its Job,
        ("patch", "jobs.batch", ""),  # and its deadline cut to end it; spec.suspend on unfinished Jobs
        ("list", "pods", ""),
        ("get", "pods", ""),  # the pod behind a progress report
        ("create", "events", ""),
    ]
    denied = [
        ("create", "lorasweeps.lorasweep.dev", ""),
        ("delete", "lorasweeps.lorasweep.dev", ""),
        ("update", "lorasweeps.lorasweep.dev", ""),
        ("delete", "jobs.batch", ""),
        ("update", "jobs.batch", ""),
        ("get", "secrets", ""),
        ("create", "pods", ""),
        ("get", "pods", "log"),
        ("delete", "events", ""),
    ]
    for verb, resource, sub in allowed:
        assert can(cluster, token, namespace, verb, resource, sub), (verb, resource, sub)
    for verb, resource, sub in denied:
        assert not can(cluster, token, namespace, verb, resource, sub), (verb, resource, sub)
    # Bound in its namespace only: nothing elsewhere.
    assert not can(cluster, token, "default", "create", "jobs.batch")
    assert not can(cluster, token, "default", "list", "lorasweeps.lorasweep.dev")


def test_editor_and_viewer_roles(cluster: Any, namespace: str, serviceaccount_kubeconfig: Any) -> None:
    for role, account in (("lorasweep-editor", "alice"), ("lorasweep-viewer", "bob")):
        cluster.kubectl(
            "create", "rolebinding", account, "-n", namespace, f"--clusterrole={role}",
            f"--serviceaccount={namespace}:{account}",
        )  # fmt: skip
    alice = serviceaccount_kubeconfig(namespace, "alice")
    bob = serviceaccount_kubeconfig(namespace, "bob")
    for verb in ("create", "patch", "delete", "get", "list"):
        assert can(cluster, alice, namespace, verb, "lorasweeps.lorasweep.dev")
    assert not can(cluster, alice, namespace, "patch", "lorasweeps.lorasweep.dev", "status")  # the operator's alone
    assert not can(cluster, alice, namespace, "create", "jobs.batch")
    assert can(cluster, bob, namespace, "get", "lorasweeps.lorasweep.dev")
    assert can(cluster, bob, namespace, "get", "lorasweeps.lorasweep.dev", "status")
    for verb in ("create", "patch", "delete"):
        assert not can(cluster, bob, namespace, verb, "lorasweeps.lorasweep.dev")
