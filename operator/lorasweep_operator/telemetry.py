"""The operator's Prometheus metrics, served on ``/metrics`` by `lorasweep operator --metrics-port`.

Every name the operator exports (dashboards use only these; `METRIC_NAMES` lists them for checks):

- ``lorasweep_operator_sweeps{namespace, phase}``: gauge, sweeps by phase (Pending, Running, Suspended,
  Succeeded, Failed).
- ``lorasweep_operator_trials{namespace, sweep, phase}``: gauge, a sweep's trials by phase (Pending, Running,
  Succeeded, Failed).
- ``lorasweep_operator_best_objective{namespace, sweep, metric}``: gauge, the best trial's objective value.
- ``lorasweep_operator_jobs_created_total{namespace, sweep}``: counter, trial Jobs created.
- ``lorasweep_operator_reconcile_duration_seconds{trigger}``: histogram, one reconcile pass (trigger: create,
  update, resume, job, timer).
- ``lorasweep_operator_reconciles_total{trigger, result}``: counter, passes by result (ok, invalid, waiting,
  error).
- ``lorasweep_operator_api_errors_total{verb, resource, code}``: counter, failed Kubernetes API calls (code is
  the HTTP status, or ``connection``).
- ``lorasweep_operator_api_request_duration_seconds{verb, resource}``: histogram, Kubernetes API calls.
- ``lorasweep_operator_status_bytes{namespace, sweep}``: gauge, size of the sweep's status as written (the API
  server rejects objects over ~1.5 MB).
- ``lorasweep_operator_build_info{version, python}``: gauge, always 1: which release runs (and, by its absence,
  that none does: the chart's LoraSweepOperatorDown alert).
"""

from __future__ import annotations

import contextlib
import platform
import threading
from collections.abc import Mapping
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from lorasweep_operator.spec import SweepPhase, TrialPhase
from lorasweep_trainer.config import ObjectiveMetric

PREFIX = "lorasweep_operator_"
SWEEP_PHASES: tuple[str, ...] = get_args(SweepPhase)
TRIAL_PHASES: tuple[str, ...] = get_args(TrialPhase)

SWEEPS = Gauge(f"{PREFIX}sweeps", "LoraSweeps by phase.", ["namespace", "phase"])
TRIALS = Gauge(f"{PREFIX}trials", "A sweep's trials by phase.", ["namespace", "sweep", "phase"])
BEST_OBJECTIVE = Gauge(f"{PREFIX}best_objective", "The best trial's objective.", ["namespace", "sweep", "metric"])
JOBS_CREATED = Counter(f"{PREFIX}jobs_created", "Trial Jobs created.", ["namespace", "sweep"])
RECONCILE_DURATION = Histogram(
    f"{PREFIX}reconcile_duration_seconds",
    "Duration of one reconcile pass.",
    ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILES = Counter(f"{PREFIX}reconciles", "Reconcile passes by result.", ["trigger", "result"])
API_ERRORS = Counter(f"{PREFIX}api_errors", "Failed Kubernetes API calls.", ["verb", "resource", "code"])
API_DURATION = Histogram(
    f"{PREFIX}api_request_duration_seconds",
    "Duration of Kubernetes API calls.",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STATUS_BYTES = Gauge(f"{PREFIX}status_bytes", "Size of the sweep's status as written.", ["namespace", "sweep"])
BUILD_INFO = Gauge(f"{PREFIX}build_info", "The operator's release; always 1.", ["version", "python"])

METRIC_NAMES = (
    f"{PREFIX}sweeps",
    f"{PREFIX}trials",
    f"{PREFIX}best_objective",
    f"{PREFIX}jobs_created_total",
    f"{PREFIX}reconcile_duration_seconds",
    f"{PREFIX}reconciles_total",
    f"{PREFIX}api_errors_total",
    f"{PREFIX}api_request_duration_seconds",
    f"{PREFIX}status_bytes",
    f"{PREFIX}build_info",
)

_phases: dict[tuple[str, str], str] = {}
_namespaces: set[str] = set()
_lock = threading.Lock()


def record_sweep(
    namespace: str,
    sweep: str,
    phase: str,
    trials: Mapping[str, int],
    metric: str,
    best: float | None,
    status_bytes: int,
) -> None:
    """Publish one sweep's state after a reconcile pass."""
    with _lock:
        _phases[(namespace, sweep)] = phase
        _publish_phases()
    for trial_phase in TRIAL_PHASES:
        TRIALS.labels(namespace=namespace, sweep=sweep, phase=trial_phase).set(trials.get(trial_phase, 0))
    if best is not None:
        BEST_OBJECTIVE.labels(namespace=namespace, sweep=sweep, metric=metric).set(best)
    STATUS_BYTES.labels(namespace=namespace, sweep=sweep).set(status_bytes)


def forget_sweep(namespace: str, sweep: str) -> None:
    """Drop a deleted sweep's series."""
    with _lock:
        _phases.pop((namespace, sweep), None)
        _publish_phases()
    for trial_phase in TRIAL_PHASES:
        _remove(TRIALS, namespace, sweep, trial_phase)
    for metric in get_args(ObjectiveMetric):
        _remove(BEST_OBJECTIVE, namespace, sweep, metric)
    _remove(STATUS_BYTES, namespace, sweep)
    _remove(JOBS_CREATED, namespace, sweep)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def _publish_phases() -> None:
    # Namespaces whose last sweep was deleted stay in `_namespaces`, so their gauges go back to 0.
    _namespaces.update(namespace for namespace, _ in _phases)
    for namespace in _namespaces:
        for phase in SWEEP_PHASES:
            count = sum(1 for (ns, _), p in _phases.items() if ns == namespace and p == phase)
            SWEEPS.labels(namespace=namespace, phase=phase).set(count)


def build_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorasweep")
    except PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(version=build_version(), python=platform.python_version()).set(1)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a pod serves its metrics on all interfaces
    start_http_server(port, addr=address)
