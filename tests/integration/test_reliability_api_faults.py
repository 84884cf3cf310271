"""API faults through a fault proxy in front of the real kube-apiserver: the operator (its token, deploy/rbac)
talks to the proxy, which answers some status writes and Job creations with 409, 429 (Retry-After) and bursts of
503 before passing the rest through, or drops the open watches without closing them. The sweeps still finish,
nothing is lost or run twice, and the retries stay few (no hot loop)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    OPERATOR_ACCOUNT,
    TEST_POLICY,
    OperatorProcess,
    apply,
    bind_operator,
    learning_rates,
    list_jobs,
    list_pods,
    sweep_manifest,
    wait_phase,
)
from test_reliability_controller import behaviour_command

from fault_proxy import Fault, FaultProxy

pytestmark = [pytest.mark.usefixtures("crd"), pytest.mark.reliability]


def _via(proxy: FaultProxy, kubeconfig: Path, path: Path) -> Path:
    config = yaml.safe_load(kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"] = {"server": proxy.url}  # plain HTTP to the proxy on loopback; TLS from it on
    path.write_text(yaml.safe_dump(config))
    return path


def _status_error(code: int, **headers: str) -> Fault:
    body = b'{"kind":"Status","apiVersion":"v1","status":"Failure","message":"injected","code":%d}' % code
    return Fault("PATCH", "status", status=code, body=body, path="/status",
                 headers={"Content-Type": "application/json", **headers})  # fmt: skip


def test_409_429_and_5xx_bursts_from_the_api_are_retried_and_nothing_is_lost(
    cluster: Any, namespace: str, serviceaccount_kubeconfig: Callable[[str, str], Path], tmp_path: Path
) -> None:
    bind_operator(cluster, namespace)
    token_config = serviceaccount_kubeconfig(namespace, OPERATOR_ACCOUNT)
    with FaultProxy(cluster.server, ca_file=str(cluster.pki.ca_cert)) as proxy:
        operator = OperatorProcess(namespace, _via(proxy, token_config, tmp_path / "kubeconfig"), tmp_path)
        operator.start()
        try:
            proxy.add(
                _status_error(409),
                _status_error(429, **{"Retry-After": "1"}),
                *[_status_error(503) for _ in range(3)],
                *[Fault("POST", "status", status=500, path="/jobs", body=b"{}") for _ in range(2)],
            )
            manifest = sweep_manifest(
                "flaky", namespace, command=behaviour_command(), parallelism=3, search=learning_rates(1e-4, 2e-4, 3e-4)
            )
            assert apply(cluster, manifest).returncode == 0
            status = wait_phase(cluster, namespace, "flaky", ("Succeeded",), timeout=120)["status"]
        finally:
            operator.stop()
        assert proxy.faults == [], operator.log()  # every fault was met
        writes = proxy.count("PATCH", path="/flaky/status")
        assert writes <= 30, writes  # retries, not a hot loop
    assert status["counts"]["succeeded"] == 3
    assert len(list_jobs(cluster, namespace)) == 3 and len(list_pods(cluster, namespace)) == 3
    logs = "".join(path.read_text(errors="replace") for path in tmp_path.glob("operator-*.log"))
    # Retried within the call (Kube), but for the one 503 that came fourth in a row: that pass failed and the
    # next one (on the sweep handler's retry or a Job event) wrote the status.
    assert logs.count("api retry") >= 5, logs[-3000:]


INACTIVITY_TIMEOUT = 5  # seconds; kopf's own default (70) is longer than this test waits for the second sweep


def test_a_silently_dropped_watch_is_reopened_within_the_inactivity_timeout(
    cluster: Any, namespace: str, serviceaccount_kubeconfig: Callable[[str, str], Path], tmp_path: Path
) -> None:
    bind_operator(cluster, namespace)
    token_config = serviceaccount_kubeconfig(namespace, OPERATOR_ACCOUNT)
    sweeps, jobs = f"/namespaces/{namespace}/lorasweeps", f"/namespaces/{namespace}/jobs"
    with FaultProxy(cluster.server, ca_file=str(cluster.pki.ca_cert)) as proxy:
        options = (f"--watch-inactivity-timeout={INACTIVITY_TIMEOUT}",)
        kubeconfig = _via(proxy, token_config, tmp_path / "kubeconfig")
        operator = OperatorProcess(namespace, kubeconfig, tmp_path, TEST_POLICY, options)
        operator.start()
        try:
            command = behaviour_command()
            before = sweep_manifest("before", namespace, command=command, search=learning_rates(1e-4))
            assert apply(cluster, before).returncode == 0
            wait_phase(cluster, namespace, "before", ("Succeeded",), timeout=120)
            # Both watches (sweeps, Jobs) go silent: no event, no bookmark, no end of stream, no error.
            assert proxy.drop_watches(sweeps) >= 1 and proxy.drop_watches(jobs) >= 1
            opened = proxy.count("GET", query="watch=true", path=sweeps)
            dropped_at = time.monotonic()
            # Only the sweeps watch can tell the operator about this one (kopf's timer knows only known sweeps).
            after = sweep_manifest("after", namespace, command=command, search=learning_rates(1e-4, 2e-4))
            assert apply(cluster, after).returncode == 0
            # Well under kopf's default 70 s: only the configured timeout gets the watch back in time.
            status = wait_phase(cluster, namespace, "after", ("Succeeded",), timeout=50)["status"]
            elapsed = time.monotonic() - dropped_at
            passes = operator.metric("lorasweep_operator_reconciles_total")
        finally:
            operator.stop()
    assert status["counts"]["succeeded"] == 2
    assert len(list_jobs(cluster, namespace, "lorasweep.dev/sweep=after,lorasweep.dev/trial")) == 2
    reopened = proxy.count("GET", query="watch=true", path=sweeps) - opened
    # Reopened from its last resourceVersion, at most once per quiet timeout: no hot loop.
    assert 1 <= reopened <= elapsed / INACTIVITY_TIMEOUT + 2, (reopened, elapsed)
    assert passes <= 40, passes
    assert "is inactive, reconnecting" in operator.log(limit=None)
