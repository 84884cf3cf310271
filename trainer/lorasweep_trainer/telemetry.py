"""The trainer's Prometheus metrics, served on ``TrialConfig.metrics_port`` (0 disables the endpoint) and
pushed once at the end to ``$PUSHGATEWAY_URL`` when set (job ``lorasweep-trainer``, grouping key
namespace/sweep/trial), so a trial shorter than a scrape interval is not missed.

Every metric has the labels ``namespace``, ``sweep`` and ``trial``; some add ``split`` (train, val or test).

Counters
- ``lorasweep_trainer_clips_read_total{split}``: clips fetched and decoded successfully.
- ``lorasweep_trainer_s3_read_bytes_total``: bytes read from S3 (object GETs; local sources are not counted).
- ``lorasweep_trainer_s3_read_seconds_total``: wall seconds spent in S3 GETs, summed over I/O threads.
- ``lorasweep_trainer_decode_seconds_total``: wall seconds spent decoding and preprocessing clips, summed over threads.
- ``lorasweep_trainer_decode_failures_total{split}``: clips that could not be decoded (counted once, then skipped).
- ``lorasweep_trainer_data_wait_seconds_total``: seconds the training loop waited for the next clip.
- ``lorasweep_trainer_optimizer_steps_total``: optimizer steps taken.
- ``lorasweep_trainer_mlflow_failures_total{operation}``: MLflow calls that failed (spec.tracking.mlflow; each
  attempt counts; the trial goes on).
- ``lorasweep_trainer_mlflow_dropped_total{operation}``: MLflow calls given up after their retry at the end of the
  trial: what the run in MLflow lacks.

Gauges
- ``lorasweep_trainer_train_loss``: mean training loss of the last finished epoch.
- ``lorasweep_trainer_train_accuracy``: training accuracy of the last finished epoch (fraction in [0, 1]).
- ``lorasweep_trainer_val_accuracy``: validation accuracy of the last finished epoch (fraction in [0, 1]).
- ``lorasweep_trainer_test_accuracy``: test accuracy of the best epoch's adapter (set once, at the end).
- ``lorasweep_trainer_learning_rate``: the learning rate of the last optimizer step.
- ``lorasweep_trainer_epoch``: the epoch in progress (1-based; 0 before training starts).

Histograms
- ``lorasweep_trainer_step_seconds``: compute time of one optimizer step (all its micro-batches' forward and
  backward plus the optimizer update; waiting for data is excluded, see data_wait_seconds_total).
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

log = logging.getLogger(__name__)

PREFIX = "lorasweep_trainer_"
LABELS = ("namespace", "sweep", "trial")
PUSHGATEWAY_ENV = "PUSHGATEWAY_URL"
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Telemetry:
    """The metrics of one trial, in a registry of their own (so tests can run several trials in one process)."""

    def __init__(self, namespace: str, sweep: str, trial: str) -> None:
        self.registry = CollectorRegistry()
        self.grouping = {"namespace": namespace, "sweep": sweep, "trial": trial}
        values = (namespace, sweep, trial)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, LABELS + extra, registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, LABELS, registry=self.registry)

        self._clips_read = counter("clips_read", "Clips fetched and decoded", ("split",))
        self._decode_failures = counter("decode_failures", "Clips that could not be decoded", ("split",))
        self.s3_read_bytes = counter("s3_read_bytes", "Bytes read from S3").labels(*values)
        self.s3_read_seconds = counter("s3_read_seconds", "Seconds spent in S3 GETs").labels(*values)
        self.decode_seconds = counter("decode_seconds", "Seconds spent decoding clips").labels(*values)
        self.data_wait_seconds = counter("data_wait_seconds", "Seconds the loop waited for data").labels(*values)
        self.optimizer_steps = counter("optimizer_steps", "Optimizer steps taken").labels(*values)
        self._mlflow_failures = counter("mlflow_failures", "MLflow calls that failed", ("operation",))
        self._mlflow_dropped = counter("mlflow_dropped", "MLflow calls given up after their retry", ("operation",))
        self.train_loss = gauge("train_loss", "Mean training loss of the last epoch").labels(*values)
        self.train_accuracy = gauge("train_accuracy", "Training accuracy of the last epoch").labels(*values)
        self.val_accuracy = gauge("val_accuracy", "Validation accuracy of the last epoch").labels(*values)
        self.test_accuracy = gauge("test_accuracy", "Test accuracy of the best epoch").labels(*values)
        self.learning_rate = gauge("learning_rate", "Learning rate of the last optimizer step").labels(*values)
        self.epoch = gauge("epoch", "Epoch in progress (1-based)").labels(*values)
        self.step_seconds = Histogram(
            PREFIX + "step_seconds",
            "Compute time of one optimizer step",
            LABELS,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        ).labels(*values)
        self._values = values

    def clips_read(self, split: str) -> Counter:
        return self._clips_read.labels(*self._values, split)

    def decode_failures(self, split: str) -> Counter:
        return self._decode_failures.labels(*self._values, split)

    def mlflow_failure(self, operation: str) -> None:
        self._mlflow_failures.labels(*self._values, operation).inc()

    def mlflow_dropped(self, operation: str) -> None:
        self._mlflow_dropped.labels(*self._values, operation).inc()

    def serve(self, port: int) -> None:
        if port == 0:
            return
        try:
            start_http_server(port, registry=self.registry)
        except OSError as error:
            # Pods on the dev node share the host's ports; losing live metrics must not lose the trial.
            log.warning("metrics endpoint not started port=%d error=%s", port, error)
            return
        log.info("metrics endpoint started port=%d", port)

    def push(self) -> None:
        url = os.environ.get(PUSHGATEWAY_ENV)
        if not url:
            return
        try:
            push_to_gateway(url, job="lorasweep-trainer", registry=self.registry, grouping_key=self.grouping)
            log.info("metrics pushed pushgateway=%s", url)
        except OSError as error:
            # Results are already stored; a missing Pushgateway must not fail the trial.
            log.warning("metrics push failed pushgateway=%s error=%s", url, error)
