"""What the operator's integration tests share: the CRD and RBAC installed from deploy/, the operator as a
subprocess (`lorasweep operator --namespace NS`) holding a token of the deploy/rbac ServiceAccount, a
stand-in trial command, and small readers of sweeps and Jobs through the admin client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from fixtures_cluster import wait_for
from lorasweep_operator.devcluster.cluster import free_ports
from lorasweep_operator.spec import GROUP, VERSION

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "deploy" / "crd" / "lorasweeps.lorasweep.dev.yaml"
RBAC = ROOT / "deploy" / "rbac"
OPERATOR_ACCOUNT = "lorasweep-operator"
# Trial Jobs and pods carry the trial label; a finished sweep's report Job has the sweep label only.
TRIALS = "lorasweep.dev/trial"
REPORTS = "app.kubernetes.io/component=report"
LORASWEEP = Path(sys.executable).with_name("lorasweep")
# The operator's Job policy for these tests: the local trainer images and the stand-in command below.
TEST_POLICY = ("--allowed-image=lorasweep-trainer", "--allow-command-override")

# A trial in a few lines: reads the contract, sleeps `epochs` x 0.5 s, reports val_accuracy = 100 x learningRate,
# and exits 2 (invalid configuration) when learningRate >= 0.5, as the trainer does for a bad trial.
STAND_IN = r"""
import json, os, sys, time
trial = json.loads(os.environ["LORASWEEP_TRIAL"])
training = trial["training"]
time.sleep(training["epochs"] * 0.5)
rate = training["learningRate"]
path = os.environ["LORASWEEP_TERMINATION_LOG"]
if rate >= 0.5:
    summary = {"trial": trial["trial"], "status": "Failed", "reason": "InvalidConfig", "message": "learningRate too high"}
    open(path, "w").write(json.dumps(summary))
    sys.exit(2)
metrics = {"val_accuracy": round(100 * rate, 6), "test_accuracy": 0.5}
uri = trial["output"] + "metrics.json"
open(path, "w").write(json.dumps({"trial": trial["trial"], "status": "Succeeded", "metrics": metrics,
                                  "best_epoch": training["epochs"], "metrics_uri": uri}))
"""


SAMPLE = ROOT / "deploy" / "samples" / "tiny-cpu-sweep.yaml"


def tiny_trainer_sweep(cluster: Any, namespace: str, name: str, s3_server: Any, s3_bucket: str) -> dict[str, Any]:
    """The shipped tiny CPU sample for the real trainer, made smaller still: synthetic clips in `s3_bucket` (three
    actions, four clips each), the server's credentials in Secret ``s3``, results under ``s3://<bucket>/sweeps/``."""
    bin_dir = Path(sys.executable).parent
    synth = [str(bin_dir / "lorasweep-trainer"), "synth", f"s3://{s3_bucket}/clips/", "--actions", "8,9,23"]
    env = {**s3_server.env, "PATH": str(bin_dir)}
    subprocess.run([*synth, "--clips-per-action", "4"], check=True, capture_output=True, env=env)
    secret = {k: v for k, v in s3_server.env.items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL_S3"}
    cluster.kubectl(
        "create", "secret", "generic", "s3", "-n", namespace, *[f"--from-literal={k}={v}" for k, v in secret.items()]
    )
    manifest: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    spec = manifest["spec"]
    spec["dataset"].update(
        source=f"s3://{s3_bucket}/clips/", classes={"sit_down": [8], "stand_up": [9], "other": "rest"}, videosPerClass=4
    )
    spec["storage"] = {
        "output": f"s3://{s3_bucket}/sweeps/",
        "endpoint": s3_server.endpoint_url,
        "credentialsSecret": "s3",
    }
    return manifest


def install_crd(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))

    # Polled, not `kubectl wait`: that fails outright when it reads the CRD before its status has conditions.
    def established() -> bool:
        crd = json.loads(cluster.kubectl("get", "crd/lorasweeps.lorasweep.dev", "-o", "json").stdout)
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for("the CRD to be established", established, timeout=60)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RBAC / "role.yaml"))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RBAC / "user_roles.yaml"))
    token_review_role = yaml.safe_load_all((RBAC / "token_review.yaml").read_text())
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(next(token_review_role)))


def allow_token_reviews(cluster: Any, namespace: str) -> Callable[[], None]:
    """deploy/rbac/token_review.yaml's binding for this namespace's operator; returns its undo (cluster-scoped)."""
    name = f"lorasweep-token-review-{namespace}"
    cluster.kubectl(
        "create", "clusterrolebinding", name, "--clusterrole=lorasweep-operator-token-review",
        f"--serviceaccount={namespace}:{OPERATOR_ACCOUNT}",
    )  # fmt: skip
    return lambda: cluster.kubectl("delete", "clusterrolebinding", name, "--ignore-not-found", check=False)


def bind_operator(cluster: Any, namespace: str) -> None:
    """What a namespaced install does: the operator ClusterRole bound in one namespace only."""
    cluster.kubectl(
        "create", "rolebinding", OPERATOR_ACCOUNT, "-n", namespace,
        f"--clusterrole={OPERATOR_ACCOUNT}", f"--serviceaccount={namespace}:{OPERATOR_ACCOUNT}",
    )  # fmt: skip


class OperatorProcess:
    """`lorasweep operator --namespace NS` with the ServiceAccount's kubeconfig; restartable, killable."""

    def __init__(
        self,
        namespace: str,
        kubeconfig: Path,
        log_dir: Path,
        policy: tuple[str, ...] = TEST_POLICY,
        options: tuple[str, ...] = (),
    ) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.policy = policy
        self.options = options  # more `lorasweep operator` flags
        self.metrics_port, self.health_port, self.progress_port = free_ports(3)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        argv = [
            str(LORASWEEP), "-v", "operator", "--namespace", self.namespace,
            "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port), *self.policy,
            "--progress-port", str(self.progress_port), "--progress-url", self.progress_url, *self.options,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for("the operator's liveness endpoint", self.healthy, timeout=60)

    @property
    def progress_url(self) -> str:
        """The progress endpoint as trial pods reach it: the test node runs them on this host."""
        return f"http://127.0.0.1:{self.progress_port}/v1/progress"

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, exactly like a node dying under it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self, limit: int | None = 6000) -> str:
        """The tail of each start's log (`limit` characters; None: all of it)."""
        return "\n".join(
            path.read_text(errors="replace")[-limit if limit else 0 :]
            for path in sorted(self.log_dir.glob("operator-*.log"))
        )

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


@contextlib.contextmanager
def running_operator(
    cluster: Any,
    namespace: str,
    serviceaccount_kubeconfig: Callable[[str, str], Path],
    log_dir: Path,
    policy: tuple[str, ...] = TEST_POLICY,
) -> Iterator[OperatorProcess]:
    bind_operator(cluster, namespace)
    operator = OperatorProcess(namespace, serviceaccount_kubeconfig(namespace, OPERATOR_ACCOUNT), log_dir, policy)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def sweep_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": "lorasweep-trainer:test",
        "command": ["python", "-c", STAND_IN],
        # The stand-in loads no model: a preset has no weights to fetch, so the sweep has no preparation Job.
        "model": {"preset": "tiny", "framesPerClip": 4},
        "dataset": {"source": "s3://bucket/clips/"},
        "training": {"epochs": 2},
        "storage": {"output": "s3://bucket/sweeps/"},
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoraSweep",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def learning_rates(*rates: float) -> dict[str, Any]:
    return {"list": [{"learningRate": rate} for rate in rates]}


def apply(cluster: Any, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = cluster.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    return result


def get_sweep(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", "lorasweep", name, "-n", namespace, "-o", "json")
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def list_jobs(cluster: Any, namespace: str, selector: str = TRIALS) -> list[dict[str, Any]]:
    result = cluster.kubectl("get", "jobs", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def list_pods(cluster: Any, namespace: str, selector: str = TRIALS) -> list[dict[str, Any]]:
    result = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def events(cluster: Any, namespace: str, name: str) -> list[str]:
    """The reasons of the Events about object `name`, oldest first."""
    result = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )  # fmt: skip
    return [item["reason"] for item in json.loads(result.stdout)["items"]]


def condition(status: dict[str, Any], kind: str) -> tuple[str, str, str] | None:
    """(status, reason, message) of the status condition `kind`, if set."""
    found = [c for c in status.get("conditions") or [] if c["type"] == kind]
    return (found[0]["status"], found[0]["reason"], found[0].get("message", "")) if found else None


def job_finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


def wait_phase(
    cluster: Any, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 180
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = get_sweep(cluster, namespace, name)
        return body if (body.get("status") or {}).get("phase") in phases else None

    result: dict[str, Any] = wait_for(f"sweep {name} to reach {phases}", reached, timeout=timeout, interval=0.5)
    return result
