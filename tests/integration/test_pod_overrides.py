"""spec.pod on the real control plane: what a sweep adds reaches its pods, and what an author could not do alone
is refused at admission.

The admission tests use the chart's ValidatingAdmissionPolicy and the users of tests/integration/test_sweep_policy.py
(alice a lorasweep-editor, carol an editor who may also get Secret ``s3`` and ConfigMap ``trainer-config``, dave a
namespace admin), impersonated. The shared policy cases (tests/policy_cases.py CASES) run there; here run the cases
that depend on the author's own rights (AUTHOR_CASES), and the full messages an editor reads. The trial pods run in
a namespace that enforces Pod Security "restricted", so they were admitted under it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    REPORTS,
    STAND_IN,
    TEST_POLICY,
    get_sweep,
    learning_rates,
    list_pods,
    running_operator,
    sweep_manifest,
    wait_phase,
)
from test_sweep_policy import (
    ADMIN,
    EDITOR,
    READER,
    admission_policy,
    admitted,
    as_user,
    make_users,
    policy_flags,
    render_chart,
    sweep,
    wait_enforced,
)

from fixtures_cluster import wait_for
from policy_cases import AUTHOR_CASES, OTHER_SECRET, POLICIES, SHM, STRICT, case_spec, from_secret, pod, value

NO_SECRET = {"storage": {"output": "s3://bucket/sweeps/"}}


@pytest.fixture(scope="module")
def helm(cluster: Any) -> Path:
    return Path(cluster.binaries.path("helm"))


def test_admission_asks_whether_the_author_could_do_it_alone(
    cluster: Any, crd: None, helm: Path, namespace: str, tmp_path: Path
) -> None:
    make_users(cluster, namespace)
    objects = render_chart(helm, namespace, STRICT, tmp_path)
    with admission_policy(cluster, objects):
        wait_enforced(cluster, namespace)
        for policy_name, case, changes, refused in AUTHOR_CASES:
            assert policy_name == "strict"
            body = sweep(case, namespace, case_spec(changes))
            ok, message = admitted(cluster, READER, body)
            assert ok == (refused is None), (case, message)
            if refused:
                assert refused in message and READER in message, (case, message)
            assert admitted(cluster, ADMIN, body) == (True, ""), case

        # What an editor reads, whole: which override, which right is missing, and how to get it.
        body = sweep("code", namespace, case_spec({**NO_SECRET, **pod(env=[value("PYTHONPATH", "/mnt/code")])}))
        ok, message = admitted(cluster, EDITOR, body)
        assert not ok
        assert (
            "spec.pod.env PYTHONPATH change which code the trainer runs, as a spec.command would, which the policy "
            f"does not allow, and {EDITOR} may not create Jobs in namespace {namespace} to do so directly. Ask a "
            "namespace admin for create on jobs.batch there (the built-in edit or admin role has it), or a cluster "
            "admin to widen the lorasweep chart value policy.allowCommandOverride"
        ) in message, message
        body = sweep("secret", namespace, case_spec({**NO_SECRET, **pod(env=[from_secret("TOKEN", OTHER_SECRET)])}))
        ok, message = admitted(cluster, EDITOR, body)
        assert not ok
        assert f"spec.pod.env: {EDITOR} may not get Secret {OTHER_SECRET} in namespace {namespace}" in message, message
        assert f"resourceNames: [{OTHER_SECRET}], verbs: [get]" in message, message
        body = sweep("label", namespace, case_spec({**NO_SECRET, **pod(labels={"app": "frontend"})}))
        ok, message = admitted(cluster, EDITOR, body)
        assert not ok and "spec.pod.labels app are not among the allowed keys (none)" in message, message
        assert "policy.pod.allowedLabels" in message, message
        shm = sweep("shm", namespace, case_spec({**NO_SECRET, "suspend": True, "pod": {
            "env": [value("PUSHGATEWAY_URL", "http://pushgateway:9091")], "volumes": [SHM],
            "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]}}))  # fmt: skip
        assert admitted(cluster, EDITOR, shm) == (True, "")

        # An edit that adds an override is judged like a creation.
        assert as_user(cluster, EDITOR, "create", "-f", "-", body=shm).returncode == 0
        patch = {"spec": {"pod": {"env": [value("LD_PRELOAD", "/dev/shm/hook.so")]}}}
        edit = as_user(cluster, EDITOR, "patch", "lsw", "shm", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
        assert edit.returncode != 0 and "spec.pod.env LD_PRELOAD change which code" in edit.stderr, edit.stderr


# Fails the trial unless the sweep's env reached the process; then the usual stand-in trial.
CHECK_ENV = r"""
import os, sys
if os.environ.get("EXTRA_SETTING") != "from-the-sweep" or os.environ.get("FROM_CONFIG") != "http://x":
    sys.exit(1)
"""


def test_trial_pods_get_the_sweeps_env_volumes_labels_and_annotations(
    cluster: Any, crd: None, helm: Path, namespace: str, serviceaccount_kubeconfig: Any, tmp_path: Path
) -> None:
    values = {
        **POLICIES["strict"],
        "pod": {**STRICT["pod"], "allowedLabels": ["team"], "allowedAnnotations": ["example.com/"]},
    }
    chart_flags = policy_flags(render_chart(helm, namespace, values, tmp_path))
    flags = [flag for flag in chart_flags if not flag.startswith("--allowed-image")]  # TEST_POLICY's images instead
    cluster.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=url=http://x")
    overrides = {
        "env": [value("EXTRA_SETTING", "from-the-sweep"),
                {"name": "FROM_CONFIG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "url"}}}],
        "volumes": [SHM, {"name": "cache", "emptyDir": {}}],
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "cache", "mountPath": "/cache"}],
        "labels": {"team": "vision"},
        "annotations": {"example.com/owner": "carol"},
    }  # fmt: skip
    manifest = sweep_manifest("shm", namespace, search=learning_rates(1e-3, 2e-3), parallelism=2, pod=overrides,
                              command=["python", "-c", CHECK_ENV + STAND_IN])  # fmt: skip
    with running_operator(cluster, namespace, serviceaccount_kubeconfig, tmp_path, (*TEST_POLICY, *flags)):
        assert cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest)).returncode == 0
        status = wait_phase(cluster, namespace, "shm", ("Succeeded", "Failed"))["status"]
        # The env reached the trainer's process (CHECK_ENV fails the trial otherwise).
        assert status["phase"] == "Succeeded" and status["counts"]["succeeded"] == 2, status
        reports = wait_for("the report pod", lambda: list_pods(cluster, namespace, REPORTS), timeout=120)

    trials = list_pods(cluster, namespace)
    assert len(trials) == 2
    for pod_body in [*trials, reports[0]]:
        spec, metadata = pod_body["spec"], pod_body["metadata"]
        (container,) = spec["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert env["EXTRA_SETTING"] == {"name": "EXTRA_SETTING", "value": "from-the-sweep"}
        assert env["FROM_CONFIG"]["valueFrom"]["configMapKeyRef"] == {"name": "settings", "key": "url"}
        assert "LORASWEEP_TERMINATION_LOG" in env  # the operator's own stay
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
        assert volumes["cache"]["emptyDir"] == {}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts == {"/dev/shm": "shm", "/cache": "cache"}
        assert metadata["labels"]["team"] == "vision" and metadata["labels"]["lorasweep.dev/sweep"] == "shm"
        assert metadata["annotations"]["example.com/owner"] == "carol"
        # Still the operator's: Pod Security "restricted" (the namespace enforces it), no token, never restarted.
        assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    labels = json.loads(cluster.kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The Jobs keep the operator's labels only: the sweep's are the pods'.
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    assert jobs and all("team" not in job["metadata"]["labels"] for job in jobs)
    assert "team" not in get_sweep(cluster, namespace, "shm")["metadata"].get("labels", {})
