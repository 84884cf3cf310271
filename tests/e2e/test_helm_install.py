"""`helm install` on the local control plane brings the operator up, and the tiny CPU sample sweep completes
through it.

The operator runs as the chart's pod: the test node starts its container command as a local process with
a kubeconfig bound to the chart's ServiceAccount (the node's stand-in for in-cluster credentials), so the
operator has the chart's RBAC and nothing else. The chart is installed in namespaced mode, watching the
test's namespace only, so it never touches another test's sweeps. The trainer pods are the real trainer
(`lorasweep-trainer train`, a tiny V-JEPA2-shaped model on CPU) reading synthetic clips from the S3-protocol
server. The helpers here are shared with tests/e2e/test_dashboards.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasweep_operator.devcluster.cluster import free_ports, wait_for
from lorasweep_operator.spec import GROUP, PLURAL
from lorasweep_trainer.results import METRICS_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lorasweep"
TINY_SAMPLE = ROOT / "deploy" / "samples" / "tiny-cpu-sweep.yaml"
BIN = Path(sys.executable).parent
RELEASE = "lorasweep"
SECRET = "lorasweep-s3"

pytestmark = pytest.mark.e2e


def free_port() -> int:
    return free_ports(1)[0]


def wait_until(what: str, probe: Any, timeout: float, interval: float = 1.0, diagnose: Any = None) -> Any:
    """`wait_for`, and on timeout what `diagnose()` says about the cluster's state."""
    try:
        return wait_for(what, probe, timeout, interval)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{diagnose() if diagnose else ''}") from None


def answer(port: int, path: str) -> str | None:
    """The body of a 200 answer from 127.0.0.1:port/path (where the test node's pods listen), else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read().decode() if response.status == 200 else None
    except OSError:
        return None


class Release:
    """A chart release in namespaced mode in one namespace, with the operator's ports on free host ports."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.helm = cluster.binaries.path("helm")
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

    def run_helm(self, *args: str) -> str:
        result = subprocess.run([str(self.helm), *args], capture_output=True, text=True, env=self.env, check=False)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}\n{self.diagnose()}"
        return result.stdout

    def install(self, *extra: str) -> str:
        return self.run_helm(
            "install", RELEASE, str(CHART), "--namespace", self.namespace, "--wait", "--timeout", "180s",
            "--set", f"operator.watchNamespaces={{{self.namespace}}}",
            "--set", f"metrics.port={self.metrics_port}", "--set", f"probes.port={self.health_port}",
            # The tiny sample runs the locally built trainer image, not the published one the policy allows.
            "--set", "policy.allowedImages={lorasweep-trainer}", *extra,
        )  # fmt: skip

    def uninstall(self) -> None:
        self.run_helm("uninstall", RELEASE, "--namespace", self.namespace, "--wait", "--timeout", "120s")

    def operator_pod(self) -> dict[str, Any]:
        out = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-l", "app.kubernetes.io/component=operator", "-o", "json"
        ).stdout
        (pod,) = json.loads(out)["items"]
        return dict(pod)

    def diagnose(self) -> str:
        parts = []
        for args in (
            ("get", "all,lsw", "-n", self.namespace, "-o", "wide"),
            ("logs", "-n", self.namespace, "-l", "app.kubernetes.io/component=operator", "--tail=80"),
            ("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp"),
        ):
            result = self.cluster.kubectl(*args, check=False)
            parts.append(f"$ kubectl {' '.join(args)}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)


@contextlib.contextmanager
def installed(cluster: Any, namespace: str, *extra: str) -> Iterator[Release]:
    release = Release(cluster, namespace)
    release.install(*extra)
    try:
        yield release
    finally:
        with contextlib.suppress(AssertionError):
            release.uninstall()


def write_clips(s3_server: Any, bucket: str, corrupt: int = 0) -> str:
    """Synthetic NTU-like clips for the sample's four classes (six per action), in the S3-protocol server."""
    source = f"s3://{bucket}/clips/"
    command = [str(BIN / "lorasweep-trainer"), "synth", source, "--actions", "8,9,23,1", "--clips-per-action", "6"]
    command += ["--corrupt", str(corrupt)]
    subprocess.run(command, check=True, capture_output=True, env={**s3_server.env, "PATH": str(BIN)})
    return source


def create_secret(cluster: Any, namespace: str, s3_server: Any) -> None:
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    literals = [f"--from-literal={key}={s3_server.env[key]}" for key in keys]
    cluster.kubectl("create", "secret", "generic", SECRET, "-n", namespace, *literals)


def sample_sweep(namespace: str, bucket: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    """deploy/samples/tiny-cpu-sweep.yaml pointed at the test's bucket and S3 endpoint."""
    manifest: dict[str, Any] = yaml.safe_load(TINY_SAMPLE.read_text())
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["dataset"]["source"] = f"s3://{bucket}/clips/"
    manifest["spec"]["storage"] = {
        "output": f"s3://{bucket}/sweeps/",
        "endpoint": endpoint,
        "credentialsSecret": SECRET,
    }
    # Trainers on the test node share the host's network, so two at once would contend for the metrics port.
    manifest["spec"]["parallelism"] = 1
    manifest["spec"].update(spec)
    return manifest


def get_sweep(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", f"{PLURAL}.{GROUP}", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def wait_finished(cluster: Any, release: Release, name: str, timeout: float = 900) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        sweep = get_sweep(cluster, release.namespace, name)
        phase = (sweep.get("status") or {}).get("phase")
        return sweep if phase in {"Succeeded", "Failed"} else None

    return dict(wait_until(f"sweep {name} to finish", finished, timeout, interval=2, diagnose=release.diagnose))


def test_helm_install_runs_the_tiny_sample_sweep(cluster: Any, namespace: str, s3_server: Any, s3_bucket: str) -> None:
    write_clips(s3_server, s3_bucket)
    create_secret(cluster, namespace, s3_server)
    with installed(cluster, namespace) as release:
        # The operator is the chart's pod, running under the chart's ServiceAccount, and its endpoints answer.
        pod = release.operator_pod()
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["serviceAccountName"] == RELEASE  # the chart's ServiceAccount ("<release>" here)
        health = wait_until("kopf's liveness endpoint", lambda: answer(release.health_port, "/healthz"), 60)
        assert health is not None
        metrics = wait_until("the operator's metrics", lambda: answer(release.metrics_port, "/metrics"), 60)
        assert "lorasweep_operator_" in metrics

        manifest = sample_sweep(namespace, s3_bucket, s3_server.endpoint_url)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        sweep = wait_finished(cluster, release, manifest["metadata"]["name"])
        status = sweep["status"]
        assert status["phase"] == "Succeeded", release.diagnose()
        assert status["counts"]["succeeded"] == status["counts"]["total"] == 2
        assert status["best"]["metric"] == "val_accuracy"
        assert 0.0 <= status["best"]["objective"] <= 1.0

        # Every trial's results are in object storage, where the status says they are.
        s3 = s3_server.client()
        for trial in status["trials"]:
            assert trial["phase"] == "Succeeded"
            bucket, key = trial["metricsUri"].removeprefix("s3://").split("/", 1)
            metrics = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            assert metrics["schema"] == METRICS_SCHEMA
            assert metrics["trial"] == trial["id"] and metrics["sweep"] == manifest["metadata"]["name"]

        # The report Job writes report.md where the status then says it is.
        name = manifest["metadata"]["name"]
        report_uri = wait_until(
            "the sweep's report",
            lambda: get_sweep(cluster, namespace, name)["status"].get("reportUri"),
            300,
            diagnose=release.diagnose,
        )
        bucket, key = report_uri.removeprefix("s3://").split("/", 1)
        assert "# " in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        # The Jobs (the preparation, two trials, then the report) were made by the operator with the chart's
        # identity and are owned by the sweep.
        jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
        components = sorted(job["metadata"]["labels"]["app.kubernetes.io/component"] for job in jobs)
        assert components == ["prepare", "report", "trial", "trial"]
        for job in jobs:
            (owner,) = job["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"]) == ("LoraSweep", manifest["metadata"]["name"])
        operator_log = cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout
        assert "operator starting" in operator_log

    # Uninstalling the chart removes the operator but keeps the CRD (Helm never deletes crds/), so sweeps,
    # their status and their finished Jobs survive.
    remaining = cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout.split()
    assert remaining == []
    sweep = get_sweep(cluster, namespace, manifest["metadata"]["name"])
    assert sweep["status"]["phase"] == "Succeeded" and sweep["status"]["counts"]["succeeded"] == 2
