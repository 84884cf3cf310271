"""The Grafana dashboards in charts/lorasweep/dashboards/: sound JSON, only metric names the code exports,
and every PromQL expression (panels and variables) parses and returns data from a real Prometheus (Debian's
package) that scraped the real operator and a real trainer run during the test.

Debian's Prometheus is built without Kubernetes service discovery, so the test discovers targets the way the
chart's PodMonitor and ServiceMonitor select them (their labels and port names, read from the rendered chart)
and hands them to Prometheus through file-based discovery.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from test_helm_install import (
    CHART,
    answer,
    create_secret,
    free_port,
    get_sweep,
    installed,
    sample_sweep,
    wait_finished,
    wait_until,
    write_clips,
)

from lorasweep_operator import telemetry as operator_telemetry
from lorasweep_operator.devcluster import binaries
from lorasweep_trainer.telemetry import Telemetry

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
METRIC = re.compile(r"\blorasweep_(?:operator|trainer)_[a-z0-9_]+")
# What a dashboard's template variables stand for when its queries are sent to Prometheus directly.
RATE_INTERVAL = "15s"


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(var["name"], var["query"]["query"]) for var in dashboard["templating"]["list"] if var["type"] == "query"]


def exported_names(families: Any) -> set[str]:
    """Series names as Prometheus stores them: counters get _total, histograms _bucket, _sum and _count."""
    names = set()
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def code_metric_names() -> set[str]:
    operator = {
        name
        for name in exported_names(prometheus_client.REGISTRY.collect())
        if name.startswith(operator_telemetry.PREFIX)
    }
    trainer = exported_names(Telemetry("namespace", "sweep", "trial").registry.collect())
    return operator | trainer


# --- the JSON and the names: no cluster ----------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_sound(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] == f"lorasweep-{path.stem}" and dashboard["title"] == f"lorasweep / {path.stem}"
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "sweep"} <= set(variables)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]


def test_trainer_view_has_sweep_and_trial_variables() -> None:
    dashboard = load(CHART / "dashboards" / "trainer.json")
    queries = dict(variable_queries(dashboard))
    assert {"namespace", "sweep", "trial"} <= set(queries)
    for title, expr in panel_targets(dashboard):
        assert 'sweep=~"$sweep"' in expr and 'trial=~"$trial"' in expr, f"{title}: {expr}"


def test_overview_covers_the_issue() -> None:
    titles = {panel["title"] for panel in load(CHART / "dashboards" / "overview.json")["panels"]}
    needed = {"Sweeps by phase", "Trials by phase", "Job creation rate", "Reconcile latency", "Errors"}
    assert needed | {"Best objective per sweep"} <= titles


def test_every_metric_name_a_dashboard_uses_exists_in_the_code() -> None:
    exported = code_metric_names()
    # The operator's own list of names agrees with what it registers.
    documented = set(operator_telemetry.METRIC_NAMES)
    registered = {name for name in exported if name.startswith(operator_telemetry.PREFIX)}
    assert {re.sub(r"_(bucket|sum|count)$", "", name) for name in registered} == documented
    for path in DASHBOARDS:
        dashboard = load(path)
        for where, expr in panel_targets(dashboard) + variable_queries(dashboard):
            used = set(METRIC.findall(expr))
            assert used, f"{path.name} {where}: no lorasweep metric in {expr}"
            assert used <= exported, f"{path.name} {where}: {sorted(used - exported)} is not exported by the code"


def substitute(expr: str, namespace: str) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    # A namespace is a DNS label ([a-z0-9-]): no regex metacharacter to escape.
    expr = expr.replace("$namespace", namespace).replace("$sweep", ".*").replace("$trial", ".*")
    assert "$" not in expr, f"a template variable the test does not know: {expr}"
    return expr


def as_promql(query: str) -> tuple[str, str]:
    """Grafana's label_values(selector, label) as the PromQL that returns those label values."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
    assert match, f"unexpected variable query {query}"
    return f"group by ({match.group(2)}) ({match.group(1)})", match.group(2)


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make testbed` installs Debian's prometheus package"
    rules = []
    for path in DASHBOARDS:
        dashboard = load(path)
        exprs = [expr for _, expr in panel_targets(dashboard)]
        exprs += [as_promql(query)[0] for _, query in variable_queries(dashboard)]
        rules += [{"record": f"dashboard:{path.stem}_{i}", "expr": substitute(e, "ns")} for i, e in enumerate(exprs)]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- against a real Prometheus --------------------------------------------------------------------------------


class Discovery:
    """Pods selected like the chart's monitors select them, written as Prometheus file_sd targets."""

    def __init__(self, cluster: Any, namespace: str, path: Path, jobs: dict[str, tuple[dict[str, str], str]]) -> None:
        self.cluster, self.namespace, self.path, self.jobs = cluster, namespace, path, jobs
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.seen: dict[str, set[str]] = {job: set() for job in jobs}

    def targets(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "json", check=False).stdout
        groups = []
        for pod in json.loads(out or '{"items": []}')["items"]:
            if pod["status"].get("phase") != "Running" or not pod["status"].get("podIP"):
                continue
            labels = pod["metadata"].get("labels", {})
            for job, (selector, port_name) in self.jobs.items():
                if not selector.items() <= labels.items():
                    continue
                for container in pod["spec"]["containers"]:
                    for port in container.get("ports", []):
                        if port.get("name") == port_name:
                            target = f"{pod['status']['podIP']}:{port['containerPort']}"
                            self.seen[job].add(pod["metadata"]["name"])
                            groups.append({"targets": [target], "labels": {"job": job, "pod": pod["metadata"]["name"]}})
        return groups

    def loop(self) -> None:
        while not self.stop.is_set():
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.targets()))
            temporary.replace(self.path)  # atomic: Prometheus never reads half a file
            self.stop.wait(0.3)

    def __enter__(self) -> Discovery:
        self.path.write_text("[]")
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@contextlib.contextmanager
def prometheus(folder: Path, targets: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make testbed` installs Debian's prometheus package"
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "800ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "lorasweep",
                # The monitors' honorLabels: the code's namespace/sweep/trial labels win over the target's.
                "honor_labels": True,
                # Trials are short and set their test accuracy last: scrape often.
                "scrape_interval": "500ms",
                "scrape_timeout": "400ms",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("Prometheus to be ready", lambda: _ready(port, process, folder), 60, interval=0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _ready(port: int, process: subprocess.Popen[bytes], folder: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"prometheus exited: {(folder / 'prometheus.log').read_text()[-3000:]}")
    return answer(port, "/-/ready") is not None


def query_range(url: str, expr: str, start: float, end: float) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:  # 400 carries Prometheus' parse error
        return dict(json.loads(error.read()))


def monitors() -> dict[str, tuple[dict[str, str], str]]:
    """The chart's PodMonitor and ServiceMonitor as (pod labels, port name): what the test's discovery selects."""
    helm = binaries.ensure().path("helm")
    command = [str(helm), "template", "lorasweep", str(CHART), "--kube-version", binaries.KUBERNETES_VERSION]
    command += ["--values", str(CHART / "ci" / "monitoring-values.yaml")]
    objects = [
        d for d in yaml.safe_load_all(subprocess.run(command, capture_output=True, text=True, check=True).stdout) if d
    ]
    (pod_monitor,) = [obj for obj in objects if obj["kind"] == "PodMonitor"]
    (service_monitor,) = [obj for obj in objects if obj["kind"] == "ServiceMonitor"]
    (service,) = [obj for obj in objects if obj["kind"] == "Service"]
    assert service["spec"]["selector"] == service_monitor["spec"]["selector"]["matchLabels"]
    (service_port,) = [
        p for p in service["spec"]["ports"] if p["name"] == service_monitor["spec"]["endpoints"][0]["port"]
    ]
    return {
        "trainer": (
            pod_monitor["spec"]["selector"]["matchLabels"],
            pod_monitor["spec"]["podMetricsEndpoints"][0]["port"],
        ),
        # The Service forwards its port to the pod's port of the same name; the operator's pods are selected
        # by the Service's selector.
        "operator": (service["spec"]["selector"], service_port["targetPort"]),
    }


@pytest.mark.e2e
def test_every_expression_returns_data_from_a_real_prometheus(
    cluster: Any, namespace: str, s3_server: Any, s3_bucket: str, mlflow_down_uri: str, tmp_path: Path
) -> None:
    # One corrupt clip, so the decode-failure counter is exercised for real (counted and skipped).
    write_clips(s3_server, s3_bucket, corrupt=1)
    create_secret(cluster, namespace, s3_server)
    start = time.time()
    targets = tmp_path / "targets.json"
    with (
        Discovery(cluster, namespace, targets, monitors()) as discovery,
        prometheus(tmp_path, targets) as url,
        installed(cluster, namespace) as release,
    ):
        good = sample_sweep(namespace, s3_bucket, s3_server.endpoint_url)
        good["spec"]["search"] = {"list": [{"learningRate": 5.0e-3}]}
        good["spec"]["maxFailedTrials"] = 1
        # rate() needs two scrapes while the trainer runs: on an idle machine the sample's two epochs
        # are over in about a second, so train long enough for a dozen scrapes whatever the load.
        good["spec"]["training"]["epochs"] = 20
        # A tracking server that is down: the trial goes on and counts its failed MLflow calls.
        good["spec"]["tracking"] = {"mlflow": {"uri": mlflow_down_uri, "experiment": "dashboards"}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(good))
        # Two sweeps that go wrong on purpose, so the error panels have something to show: one names a source
        # sweep that does not exist (the API answers 404; the operator waits), one the operator rejects.
        waiting = sample_sweep(namespace, s3_bucket, s3_server.endpoint_url)
        waiting["metadata"]["name"] = "follow-up"
        waiting["spec"]["search"] = {"fromSweep": {"name": "no-such-sweep", "top": 1}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(waiting))
        invalid = sample_sweep(namespace, s3_bucket, s3_server.endpoint_url)
        invalid["metadata"]["name"] = "overlapping-classes"
        invalid["spec"]["dataset"]["classes"] = {"sit_down": [8], "also_sit_down": [8], "other": "rest"}
        applied = cluster.kubectl("apply", "-f", "-", input=json.dumps(invalid), check=False)
        assert applied.returncode == 0, f"the API server should leave this check to the operator: {applied.stderr}"

        sweep = wait_finished(cluster, release, good["metadata"]["name"])
        assert sweep["status"]["phase"] == "Succeeded", release.diagnose()
        rejected = get_sweep(cluster, namespace, "overlapping-classes")
        assert rejected.get("status", {}).get("phase") == "Failed", rejected.get("status")
        assert discovery.seen["operator"] and discovery.seen["trainer"], discovery.seen
        # A few more scrapes of the operator after the sweep finished (its best objective, final counts).
        time.sleep(5)
        end = time.time()

        problems = []
        for path in DASHBOARDS:
            dashboard = load(path)
            checks = [(title, substitute(expr, namespace), None) for title, expr in panel_targets(dashboard)]
            for name, query in variable_queries(dashboard):
                expr, label = as_promql(query)
                checks.append((f"variable {name}", substitute(expr, namespace), label))
            for where, expr, label in checks:
                answer = query_range(url, expr, start, end)
                if answer.get("status") != "success":
                    problems.append(f"{path.name} {where}: {answer.get('error')} in {expr}")
                elif not answer["data"]["result"]:
                    problems.append(f"{path.name} {where}: no data for {expr}")
                elif label == "sweep":
                    values = {series["metric"].get("sweep") for series in answer["data"]["result"]}
                    if good["metadata"]["name"] not in values:
                        problems.append(f"{path.name} {where}: {values} lacks {good['metadata']['name']}")
        assert not problems, "\n".join(problems)
