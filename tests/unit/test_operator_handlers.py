"""The handlers' own logic without a cluster: passes for one sweep never overlap and bursts collapse; the
operator's metric names are the documented ones."""

from __future__ import annotations

import threading
import time

from prometheus_client import REGISTRY

from lorasweep_operator import telemetry
from lorasweep_operator.handlers import Coalescer


def test_coalescer_never_overlaps_and_collapses_a_burst() -> None:
    coalescer = Coalescer()
    running = 0
    most = 0
    passes = 0
    guard = threading.Lock()
    first_started = threading.Event()
    release = threading.Event()

    def work() -> None:
        nonlocal running, most, passes
        with guard:
            running += 1
            most = max(most, running)
            passes += 1
        first_started.set()
        release.wait(5)
        time.sleep(0.01)
        with guard:
            running -= 1

    first = threading.Thread(target=coalescer.run, args=(("ns", "a"), work))
    first.start()
    first_started.wait(5)
    burst = [threading.Thread(target=coalescer.run, args=(("ns", "a"), work)) for _ in range(20)]
    for thread in burst:
        thread.start()
    time.sleep(0.1)
    release.set()
    for thread in [first, *burst]:
        thread.join(5)
    assert most == 1
    assert passes == 2  # the running pass, then one pass for the whole burst
    assert coalescer.run(("ns", "b"), lambda: None)  # other sweeps are not held up


def test_every_exported_metric_is_documented_and_prefixed() -> None:
    assert telemetry.__doc__ is not None
    telemetry.record_sweep("ns", "s", "Running", {"Running": 1}, "val_accuracy", 0.5, 100)
    telemetry.JOBS_CREATED.labels(namespace="ns", sweep="s").inc()
    telemetry.RECONCILE_DURATION.labels(trigger="timer").observe(0.1)
    for name in telemetry.METRIC_NAMES:
        assert f"``{name}" in telemetry.__doc__, name
    families = {metric.name for metric in REGISTRY.collect() if metric.name.startswith(telemetry.PREFIX)}
    documented = {name.removesuffix("_total") for name in telemetry.METRIC_NAMES}
    assert families == documented
    telemetry.forget_sweep("ns", "s")
    sweeps = {
        s.labels["phase"]: s.value
        for m in REGISTRY.collect()
        if m.name == "lorasweep_operator_sweeps"
        for s in m.samples
    }
    assert sweeps["Running"] == 0  # a deleted sweep's namespace goes back to zero
