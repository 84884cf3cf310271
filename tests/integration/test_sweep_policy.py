"""A sweep's author can never do more through the operator than they could do themselves, on the real API server.

Users are impersonated (``kubectl --as``) with only the chart's roles: alice is a lorasweep-editor, carol a
lorasweep-editor who may also get Secret ``s3``, dave a namespace admin (the built-in ``admin`` role, which
the chart's editor role is aggregated into). The chart's ValidatingAdmissionPolicy is installed as the chart
renders it for the test's namespace; the operator runs with the flags the chart's Deployment gives it. Both
see the same cases (tests/policy_cases.py), which tests/unit/test_policy.py also runs through the operator's
pure check. Every namespace here enforces Pod Security "restricted", so the trial pods that run were
admitted under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import OPERATOR_ACCOUNT, OperatorProcess, bind_operator, condition, get_sweep, list_jobs

from fixtures_cluster import wait_for
from lorasweep_operator import status as statuses
from lorasweep_operator.devcluster import binaries
from lorasweep_operator.spec import API_VERSION, KIND
from policy_cases import CASES, CONFIG_MAP, OTHER_CONFIG_MAP, POLICIES, SECRET, STRICT, case_spec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lorasweep"
TINY_SAMPLE = ROOT / "deploy" / "samples" / "tiny-cpu-sweep.yaml"
ADMISSION = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
EDITOR, READER, ADMIN = "alice", "carol", "dave"
OTHER_SECRET = "other"


def render_chart(helm: Path, namespace: str, policy: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """The chart in namespaced mode for `namespace`, with `policy` as its policy values."""
    values = tmp_path / f"values-{namespace}.yaml"
    values.write_text(yaml.safe_dump({"operator": {"watchNamespaces": [namespace]}, "policy": policy}))
    release = f"p-{hashlib.sha256(namespace.encode()).hexdigest()[:12]}"  # cluster-scoped names: one per namespace
    command = [str(helm), "template", release, str(CHART), "--namespace", namespace]
    command += ["--kube-version", binaries.KUBERNETES_VERSION, "--values", str(values)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def policy_flags(objects: list[dict[str, Any]]) -> tuple[str, ...]:
    """The policy flags the chart's Deployment passes to `lorasweep operator`."""
    (deployment,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return tuple(arg for arg in args if arg.startswith(("--allowed-", "--allow-")))


def sweep(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def as_user(
    cluster: Any, user: str, *args: str, body: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = cluster.kubectl(
        f"--as={user}", *args, input=json.dumps(body) if body is not None else None, check=False
    )
    return result


def admitted(cluster: Any, user: str, body: dict[str, Any]) -> tuple[bool, str]:
    """Whether the API server would create the sweep for `user` (a server-side dry run: admission runs)."""
    result = as_user(cluster, user, "create", "--dry-run=server", "-f", "-", body=body)
    return result.returncode == 0, result.stderr


def make_namespace(cluster: Any, name: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def make_users(cluster: Any, namespace: str) -> None:
    for secret in (SECRET, OTHER_SECRET):
        cluster.kubectl("create", "secret", "generic", secret, "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=x")
    for user in (EDITOR, READER):
        cluster.kubectl("create", "rolebinding", f"{user}-editor", "-n", namespace, "--clusterrole=lorasweep-editor",
                        f"--user={user}")  # fmt: skip
    cluster.kubectl("create", "role", "read-s3", "-n", namespace, "--verb=get", "--resource=secrets",
                    f"--resource-name={SECRET}")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "carol-reads-s3", "-n", namespace, "--role=read-s3", f"--user={READER}")
    for config_map in (CONFIG_MAP, OTHER_CONFIG_MAP):
        cluster.kubectl("create", "configmap", config_map, "-n", namespace, "--from-literal=url=http://x")
    cluster.kubectl("create", "role", "read-config", "-n", namespace, "--verb=get", "--resource=configmaps",
                    f"--resource-name={CONFIG_MAP}")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "carol-reads-config", "-n", namespace, "--role=read-config",
                    f"--user={READER}")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "dave-admin", "-n", namespace, "--clusterrole=admin", f"--user={ADMIN}")


@contextlib.contextmanager
def admission_policy(cluster: Any, objects: list[dict[str, Any]]) -> Iterator[None]:
    """The chart's admission objects applied (and removed after: two of them are cluster-scoped)."""
    admission = [obj for obj in objects if obj["kind"] in ADMISSION]
    assert sorted(obj["kind"] for obj in admission) == sorted(ADMISSION)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(admission))
    try:
        yield
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(admission), check=False)


def wait_enforced(cluster: Any, namespace: str) -> None:
    """The policy takes effect once the API server's informers have it: until alice is refused a Secret."""
    probe = sweep("probe", namespace, case_spec({"storage": {"output": "s3://b/", "credentialsSecret": OTHER_SECRET}}))

    def enforced() -> bool:
        ok, message = admitted(cluster, EDITOR, probe)
        return not ok and f"may not get Secret {OTHER_SECRET}" in message

    wait_for("the admission policy to be enforced", enforced, timeout=60)


@pytest.fixture(scope="module")
def helm(cluster: Any) -> Path:
    return Path(cluster.binaries.path("helm"))


def test_chart_and_deploy_carry_the_same_admission_policy(helm: Path, tmp_path: Path) -> None:
    """deploy/admission is the chart's admission policy with the default values, bound in every namespace."""
    plain = [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "admission" / "policy.yaml").read_text()) if doc]
    chart = [obj for obj in render_chart(helm, "ns", STRICT, tmp_path) if obj["kind"] == ADMISSION[0]]
    assert [obj["spec"] for obj in chart] == [obj["spec"] for obj in plain]
    (binding,) = [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "admission" / "binding.yaml").read_text())]
    assert binding["spec"] == {"policyName": plain[0]["metadata"]["name"], "validationActions": ["Deny"]}


def test_admission_holds_each_author_to_their_own_rights(
    cluster: Any, crd: None, helm: Path, namespace: str, tmp_path: Path
) -> None:
    wide = f"{namespace}-wide"[:63]
    make_namespace(cluster, wide)
    try:
        namespaces = {"strict": namespace, "wide": wide}
        with contextlib.ExitStack() as stack:
            for name, where in namespaces.items():
                make_users(cluster, where)
                stack.enter_context(admission_policy(cluster, render_chart(helm, where, POLICIES[name], tmp_path)))
            for where in namespaces.values():
                wait_enforced(cluster, where)

            # storage.credentialsSecret: only a Secret the author may read.
            body = sweep("s", namespace, case_spec({}))
            ok, message = admitted(cluster, EDITOR, body)
            assert not ok
            assert f"{EDITOR} may not get Secret {SECRET} in namespace {namespace}" in message, message
            assert f"resourceNames: [{SECRET}], verbs: [get]" in message, message
            assert admitted(cluster, READER, body) == (True, "")
            assert admitted(cluster, ADMIN, body) == (True, "")
            no_secret = case_spec({"storage": {"output": "s3://bucket/sweeps/"}})
            assert admitted(cluster, EDITOR, sweep("s", namespace, no_secret)) == (True, "")

            # The policy's cases: an editor (who may read the Secret) only within the policy, an admin always.
            for policy, case, changes, refused in CASES:
                body = sweep(case, namespaces[policy], case_spec(changes))
                ok, message = admitted(cluster, READER, body)
                assert ok == (refused is None), (policy, case, message)
                if refused:
                    assert f"{refused} " in message and f"{READER} may not create Jobs" in message, message
                    assert "create on jobs.batch" in message and "policy." in message, message
                assert admitted(cluster, ADMIN, body) == (True, ""), (policy, case)

            # Updates: a spec change is checked like a creation; a metadata-only change is not (kopf's own writes).
            custom = sweep("custom", namespace, case_spec({"serviceAccountName": "trainer", "suspend": True}))
            assert as_user(cluster, ADMIN, "create", "-f", "-", body=custom).returncode == 0
            edit = as_user(cluster, READER, "patch", "lsw", "custom", "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": {"parallelism": 2}}))  # fmt: skip
            assert edit.returncode != 0 and "spec.serviceAccountName trainer" in edit.stderr, edit.stderr
            label = as_user(cluster, READER, "label", "lsw", "custom", "-n", namespace, "team=vision")
            assert label.returncode == 0, label.stderr
    finally:
        cluster.kubectl("delete", "namespace", wide, "--wait=false", check=False)


def test_admission_holds_the_tracking_secret_to_the_authors_rights_too(
    cluster: Any, crd: None, helm: Path, namespace: str, tmp_path: Path
) -> None:
    """spec.tracking.mlflow.credentialsSecret is checked as storage.credentialsSecret is, on its own: carol may get
    Secret ``s3`` only, so she may name it for either, but not ``other`` for tracking."""
    make_users(cluster, namespace)
    with admission_policy(cluster, render_chart(helm, namespace, STRICT, tmp_path)):
        wait_enforced(cluster, namespace)

        def tracked(secret: str) -> dict[str, Any]:
            mlflow = {"uri": "https://mlflow.example", "experiment": "ntu", "credentialsSecret": secret}
            return sweep("tracked", namespace, case_spec({"tracking": {"mlflow": mlflow}}))

        ok, message = admitted(cluster, READER, tracked(OTHER_SECRET))
        assert not ok
        expected = f"spec.tracking.mlflow.credentialsSecret: {READER} may not get Secret {OTHER_SECRET} in namespace"
        assert expected in message, message
        assert f"resourceNames: [{OTHER_SECRET}], verbs: [get]" in message, message
        assert "spec.storage.credentialsSecret" not in message  # her storage Secret is one she may read
        assert admitted(cluster, READER, tracked(SECRET)) == (True, "")
        assert admitted(cluster, ADMIN, tracked(OTHER_SECRET)) == (True, "")
        # alice may get neither Secret: without a storage Secret the tracking one alone refuses her.
        alone = tracked(SECRET)
        alone["spec"]["storage"] = {"output": "s3://bucket/sweeps/"}
        ok, message = admitted(cluster, EDITOR, alone)
        assert not ok and f"spec.tracking.mlflow.credentialsSecret: {EDITOR} may not get Secret {SECRET}" in message
        no_secret = sweep(
            "open", namespace, case_spec({"tracking": {"mlflow": {"uri": "http://m:5000", "experiment": "e"}}})
        )
        assert admitted(cluster, READER, no_secret) == (True, "")


def test_without_the_admission_policy_the_operator_refuses_such_jobs(
    cluster: Any, crd: None, helm: Path, namespace: str, serviceaccount_kubeconfig: Any, tmp_path: Path
) -> None:
    """No ValidatingAdmissionPolicy here: the admin (who may do anything) writes every case, and the operator,
    with the chart's flags for each policy, marks those outside it Invalid with the reason and creates no Job."""
    bind_operator(cluster, namespace)
    kubeconfig = serviceaccount_kubeconfig(namespace, OPERATOR_ACCOUNT)
    cluster.kubectl("create", "secret", "generic", SECRET, "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=x")
    for index, (policy, values) in enumerate(POLICIES.items()):
        flags = policy_flags(render_chart(helm, namespace, values, tmp_path))
        operator = OperatorProcess(namespace, kubeconfig, tmp_path / f"operator-{policy}", flags)
        operator.log_dir.mkdir()
        cases = [(f"{index}-{case}", changes, refused) for name, case, changes, refused in CASES if name == policy]
        for name, changes, refused in cases:
            # Within the policy it would run; suspended, it is only planned, so no trainer is needed here.
            spec = case_spec({**changes, "suspend": refused is None})
            cluster.kubectl("apply", "-f", "-", input=json.dumps(sweep(name, namespace, spec)))
        operator.start()
        try:
            for name, _, refused in cases:

                def judged(name: str = name) -> tuple[str, str, str] | None:
                    return condition(get_sweep(cluster, namespace, name).get("status") or {}, statuses.SPEC_VALID)

                state, reason, message = wait_for(f"sweep {name} judged", judged, timeout=60)
                body = get_sweep(cluster, namespace, name)
                if refused is None:
                    assert (state, reason) == ("True", "Valid"), (name, message)
                    continue
                assert (state, reason) == ("False", "NotAllowedByPolicy"), (name, message)
                assert message.startswith("the operator does not run Jobs outside its policy: ") and refused in message
                assert body["status"]["phase"] == "Failed", body["status"]
                assert body["status"]["message"] == message
                assert not [job for job in list_jobs(cluster, namespace) if job["metadata"]["name"].startswith(name)]
                reasons = cluster.kubectl(
                    "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                    "-o", "jsonpath={.items[*].reason}",
                ).stdout  # fmt: skip
                assert "NotAllowedByPolicy" in reasons
            assert not list_jobs(cluster, namespace)
            # The next policy's operator must not see these (what one refuses the other may allow); deleted
            # while this operator runs, which removes its finalizer.
            cluster.kubectl("delete", "lsw", "--all", "-n", namespace)
        finally:
            operator.stop()


LEAK = r"""
import os, sys
secret = os.environ["AWS_SECRET_ACCESS_KEY"]
print("leaking", secret, flush=True)
print("unrelated:", os.environ.get("UNRELATED_TOKEN", "absent"), flush=True)
sys.stderr.write(f"Traceback (most recent call last): boom {secret}\n")
open(os.environ["LORASWEEP_TERMINATION_LOG"], "w").write(f"not a summary {secret}")
sys.exit(1)
"""


def test_a_planted_secret_reaches_no_status_event_or_operator_log(
    cluster: Any, crd: None, namespace: str, serviceaccount_kubeconfig: Any, tmp_path: Path, s3_server: Any,
    s3_bucket: str,
) -> None:  # fmt: skip
    planted = f"planted-{uuid.uuid4().hex}"
    unrelated = f"unrelated-{uuid.uuid4().hex}"
    cluster.kubectl(
        "create", "secret", "generic", SECRET, "-n", namespace, f"--from-literal=AWS_SECRET_ACCESS_KEY={planted}",
        "--from-literal=AWS_ACCESS_KEY_ID=planted-id", f"--from-literal=UNRELATED_TOKEN={unrelated}",
        "--from-literal=AWS_DEFAULT_REGION=us-east-1",
    )  # fmt: skip
    storage = {"output": f"s3://{s3_bucket}/sweeps/", "endpoint": s3_server.endpoint_url, "credentialsSecret": SECRET}
    common = {"storage": storage, "backoffLimit": 0, "image": "lorasweep-trainer:test"}
    # A command that prints the secret to stdout and stderr and into its termination file, then fails;
    # and the real trainer's preparation, failing on an empty dataset (its structured summary is what status may
    # show).
    stand_in = {"command": ["python", "-c", LEAK], "model": {"preset": "tiny"}}  # no weights to fetch first
    leak = sweep("leak", namespace, case_spec({**common, **stand_in}))
    tiny = yaml.safe_load(TINY_SAMPLE.read_text())["spec"]
    empty = {**tiny["dataset"], "source": f"s3://{s3_bucket}/none/"}
    trainer = sweep("trainer", namespace, case_spec({**common, "model": tiny["model"], "dataset": empty}))
    bind_operator(cluster, namespace)
    operator = OperatorProcess(namespace, serviceaccount_kubeconfig(namespace, OPERATOR_ACCOUNT), tmp_path)
    operator.start()
    try:
        for body in (leak, trainer):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

        def failed(name: str) -> dict[str, Any] | None:
            rows = (get_sweep(cluster, namespace, name).get("status") or {}).get("trials") or []
            return rows[0] if rows and rows[0]["phase"] == "Failed" else None

        def preparation_failed() -> dict[str, Any] | None:
            status = get_sweep(cluster, namespace, "trainer").get("status") or {}
            return status if status.get("phase") == "Failed" else None

        leak_row = wait_for("the leaking trial to fail", lambda: failed("leak"), timeout=120)
        trainer_status = wait_for("the trainer's preparation to fail", preparation_failed, timeout=300)
    finally:
        operator.stop()

    assert (leak_row["reason"], leak_row["message"]) == ("NoSummary", statuses.UNSTRUCTURED_MESSAGE)
    # The trainer's own summary still shows.
    assert trainer_status["preparation"]["reason"] == "DatasetUnusable", trainer_status
    logs = cluster.kubectl("logs", "-n", namespace, "-l", "lorasweep.dev/sweep=leak", "--tail=-1").stdout
    assert planted in logs, "the test has teeth: the command did print the secret"
    assert "unrelated: absent" in logs, "only the trainer's keys of the Secret reach the pod"
    trainer_logs = cluster.kubectl("logs", "-n", namespace, "-l", "lorasweep.dev/sweep=trainer", "--tail=-1").stdout
    assert "DatasetUnusable" in trainer_logs or "dataset" in trainer_logs.lower(), trainer_logs

    sweeps = cluster.kubectl("get", "lsw", "-n", namespace, "-o", "json").stdout
    event_list = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert '"TrialFailed"' in event_list and '"PreparationFailed"' in event_list
    for where, text in (
        ("sweep status", sweeps),
        ("Events", event_list),
        ("operator log", operator.log(limit=None)),
        ("trainer log", trainer_logs),
    ):
        assert planted not in text and unrelated not in text, f"a secret value leaked into the {where}"

    # The trial pod and the preparation pod were admitted (and ran) in this namespace, which enforces Pod
    # Security "restricted".
    labels = json.loads(cluster.kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "lorasweep.dev/sweep", "-o", "json").stdout)
    assert {pod["metadata"]["labels"]["lorasweep.dev/sweep"] for pod in pods["items"]} == {"leak", "trainer"}
    assert all(pod["status"]["phase"] == "Failed" for pod in pods["items"])
