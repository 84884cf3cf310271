"""Operator benchmark on the local control plane: `python -m lorasweep_operator.bench [--sizes 11,100,1000]`.

For each sweep size it starts a fresh `lorasweep operator` process, applies a sweep and prints:

- launch: seconds from `apply` to the first `parallelism` Jobs existing;
- status: seconds from a trial Job turning Complete (as seen by a watch) to the sweep's status counting it;
- pass: mean duration of one reconcile pass (the operator's own histogram);
- status size: bytes of the sweep's status;
- rss: the operator's resident memory (MiB) after those passes.

The 11-trial sweep is the reference's (baseline plus four groups); larger ones are lists of learning rates.
Trial pods run `sleep`, so the numbers are the operator's and the control plane's, not training's.
Uses the dev cluster named by $KUBECONFIG when it is one, else starts its own and stops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasweep_operator import rendering
from lorasweep_operator.devcluster import cluster as devcluster
from lorasweep_operator.devcluster.cluster import free_ports, wait_for
from lorasweep_operator.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "deploy" / "crd" / "lorasweeps.lorasweep.dev.yaml"
REFERENCE_GROUPS = [
    {"name": "learning-rate", "values": [{"learningRate": v} for v in (5e-5, 1e-4, 5e-4, 1e-3)]},
    {
        "name": "lora-rank",
        "values": [{"lora": {"rank": r, "alpha": 2 * r}} for r in (8, 32, 64)],
    },
    {"name": "alpha-ratio", "values": [{"lora": {"alpha": 16}}, {"lora": {"alpha": 64}}]},
    {"name": "dropout", "values": [{"lora": {"dropout": 0.05}}]},
]


@dataclass
class Result:
    trials: int
    parallelism: int
    launch_seconds: float
    status_seconds: float
    pass_seconds: float
    passes: int
    status_bytes: int
    rss_mib: float


@contextlib.contextmanager
def dev_cluster() -> Iterator[Any]:
    named = os.environ.get("KUBECONFIG")
    found = devcluster.find(Path(named)) if named else None
    if found is not None:
        yield found
        return
    state = Path(tempfile.mkdtemp(prefix="lorasweep-bench-"))
    dev, _ = devcluster.up(state)
    try:
        yield dev
    finally:
        devcluster.down(state)


def search_for(size: int) -> dict[str, Any]:
    if size == 11:
        return {"groups": REFERENCE_GROUPS}
    return {"list": [{"learningRate": round(1e-5 * (i + 1), 8)} for i in range(size)]}


def sweep(name: str, namespace: str, size: int, parallelism: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "lorasweep-trainer:bench",
            "command": ["sleep", "4"],
            "dataset": {"source": "s3://bench/clips/"},
            "storage": {"output": "s3://bench/sweeps/"},
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
            "search": search_for(size),
            "parallelism": parallelism,
        },
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def run_size(dev: Any, size: int, parallelism: int, work: Path) -> Result:
    from kubernetes import client

    api = dev.api_client()
    core, batch, custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
    namespace = f"bench-{size}-{int(time.time())}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for("the default ServiceAccount", lambda: core.list_namespaced_service_account(namespace).items, 60, 0.2)
    (metrics_port,) = free_ports(1)
    log = (work / f"operator-{size}.log").open("wb")
    argv = [
        str(Path(sys.executable).with_name("lorasweep")), "operator", "--namespace", namespace,
        "--metrics-port", str(metrics_port), "--health-port", "0",
    ]  # fmt: skip
    operator = subprocess.Popen(argv, env={**os.environ, "KUBECONFIG": str(dev.kubeconfig)}, stdout=log, stderr=log)
    try:
        wait_for("the operator's metrics", lambda: _answers(metrics_port), 60, 0.1)
        time.sleep(1.0)  # kopf's watch streams start after its start-up handlers
        selector = f"{rendering.sweep_selector('bench')},{rendering.TRIAL_LABEL}"  # trial Jobs, not the report Job

        started = time.monotonic()
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, sweep("bench", namespace, size, parallelism)
        )
        wait_for(
            "the first Jobs",
            lambda: len(batch.list_namespaced_job(namespace, label_selector=selector).items) >= parallelism,
            timeout=300,
            interval=0.01,
        )
        launch = time.monotonic() - started

        def completed() -> float | None:
            for job in batch.list_namespaced_job(namespace, label_selector=selector).items:
                if any(
                    c.type == "Complete" and c.status == "True"
                    for c in (job.status.conditions if job.status else None) or []
                ):
                    return time.monotonic()
            return None

        def counted() -> bool:
            body: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bench")  # type: ignore[assignment]
            return bool(((body.get("status") or {}).get("counts") or {}).get("succeeded"))

        seen = wait_for("a finished trial", completed, 120, 0.01)
        wait_for("the status to count it", counted, 120, 0.01)
        status_latency = time.monotonic() - seen
        time.sleep(1.0)
        totals = scrape(metrics_port)
        body: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bench")  # type: ignore[assignment]
        return Result(
            trials=size,
            parallelism=parallelism,
            launch_seconds=launch,
            status_seconds=status_latency,
            pass_seconds=totals["lorasweep_operator_reconcile_duration_seconds_sum"]
            / max(totals["lorasweep_operator_reconcile_duration_seconds_count"], 1),
            passes=int(totals["lorasweep_operator_reconcile_duration_seconds_count"]),
            status_bytes=len(json.dumps(body.get("status") or {}, separators=(",", ":"))),
            rss_mib=rss_mib(operator.pid),
        )
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        log.close()
        with contextlib.suppress(Exception):
            core.delete_namespace(namespace)


def _answers(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorasweep_operator.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="11,100,1000", help="comma-separated sweep sizes")
    parser.add_argument("--parallelism", type=int, default=10, help="parallelism of each sweep (4 for the 11)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    with dev_cluster() as dev, tempfile.TemporaryDirectory(prefix="lorasweep-bench-") as work:
        dev.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        dev.kubectl("wait", "--for", "condition=Established", "--timeout=60s", "crd/lorasweeps.lorasweep.dev")
        results = [run_size(dev, size, 4 if size == 11 else args.parallelism, Path(work)) for size in sizes]
    print(f"{'trials':>7} {'parallel':>8} {'launch s':>9} {'status s':>9} {'pass ms':>8} {'passes':>6} "
          f"{'status KiB':>10} {'rss MiB':>8}")  # fmt: skip
    for r in results:
        print(
            f"{r.trials:>7} {r.parallelism:>8} {r.launch_seconds:>9.3f} {r.status_seconds:>9.3f} "
            f"{1000 * r.pass_seconds:>8.1f} {r.passes:>6} {r.status_bytes / 1024:>10.1f} {r.rss_mib:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
