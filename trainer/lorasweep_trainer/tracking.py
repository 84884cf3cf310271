"""MLflow experiment tracking (spec.tracking.mlflow): one parent run per sweep, one child run per trial.

Who makes which run:
- The sweep's parent run is found by its tag ``lorasweep.sweep_key`` (a hash of the sweep object: namespace, name
  and uid on a cluster; namespace, name and results folder for `lorasweep run`) or created. The preparation step
  does it before any trial starts and reports the run's id in its termination summary; the operator hands the id
  to every trial, so parallel trials and retries never race to create it. Trials without a preparation (a
  command of the user's own) find or create it themselves: after creating, a trial searches again and keeps the
  oldest run with the key, deleting its own when another was first, and a trial that finds a run so young that
  its creator may still delete it waits and looks again (`find_or_create`). (A window remains: a create stored
  more than a request timeout after it was stamped; the preparation's id closes it for default sweeps.)
- A trial's child run is found by ``lorasweep.trial_key`` (the sweep key and the trial id) or created, tagged
  ``mlflow.parentRunId``; a retried trial (a new pod of the same Job) continues the same run.
- The child holds the trial's parameters, each epoch's metrics at step = epoch, the final metrics, tags (sweep,
  namespace, trial, group, variant, git commit, model, revision, preset) and the URIs of its artifacts in object
  storage (metrics.json, the adapter, the confusion matrix): nothing is uploaded to MLflow.

An MLflow outage never fails a trial (`Outbox`): every call has a short timeout; a call that fails is counted
(``lorasweep_trainer_mlflow_failures_total`` and metrics.json's ``tracking.failures``), logged with its context
and kept; after the first failure later calls are kept without being tried, so an unreachable server costs one
timeout during training; at the end of the trial the kept calls are tried once more, in order, and what still
fails is dropped (``lorasweep_trainer_mlflow_dropped_total``, ``tracking.dropped``).

The mapping from a trial to its params, tags and metrics is pure (unit-tested); only `Outbox` and the run
functions touch the MLflow client, imported when tracking is on (the trainer image has ``mlflow-skinny``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lorasweep_trainer.config import MlflowTracking, ModelConfig, ModelWeights, TrialConfig, model_identity
from lorasweep_trainer.results import TrackingUse

if TYPE_CHECKING:
    from lorasweep_trainer.results import EpochMetrics, TrialMetrics

log = logging.getLogger(__name__)

SWEEP_KEY_TAG = "lorasweep.sweep_key"
TRIAL_KEY_TAG = "lorasweep.trial_key"
ROLE_TAG = "lorasweep.role"
SWEEP_ROLE = "sweep"
TRIAL_ROLE = "trial"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
ARTIFACT_TAGS = {"metrics": "metrics.json", "adapter": "adapter/", "confusion_matrix": "confusion_matrix.png"}

# The MLflow client's own knobs (read on every request), set unless the pod's env sets them: a 5 s timeout and one
# quick retry instead of its defaults (120 s, 7 retries with exponential backoff: minutes per call when the server
# is down). Its usage telemetry is off: trial pods talk to the tracking server and object storage only.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
CREATE_SETTLE_SECONDS = float(CLIENT_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"])
# Until a run is this old a create stamped before it may still be in flight (one request timeout), and its creator
# still settling: a caller that finds it waits that long before it takes it.
YOUNG_RUN_SECONDS = 2 * CREATE_SETTLE_SECONDS
# MLflow's limits per log_batch call.
BATCH_PARAMS = 100
BATCH_TAGS = 100
TAG_VALUE_LIMIT = 5000


def sweep_key(*parts: str) -> str:
    """The parent run's tag value: a hash of what identifies one sweep object (hex, safe in a filter string)."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def trial_key(tracking: MlflowTracking, trial: str) -> str:
    return f"{tracking.sweep_key}-{trial}"


# --- the mapping (pure) -------------------------------------------------------------------------------------------


def trial_params(cfg: TrialConfig) -> dict[str, str]:
    """The trial's hyperparameters and data setup, as MLflow params (strings; metrics.json's names)."""
    training, lora = cfg.training, cfg.training.lora
    values: dict[str, object] = {
        "learning_rate": training.learning_rate,
        "lora_rank": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_target_modules": ",".join(lora.target_modules),
        "epochs": training.epochs,
        "batch_size": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "weight_decay": training.weight_decay,
        "scheduler": training.scheduler,
        "warmup_fraction": training.warmup_fraction,
        "frames_per_clip": cfg.model.frames_per_clip,
        "seed": cfg.seed,
        "videos_per_class": cfg.dataset.videos_per_class,
        "dataset_seed": cfg.dataset.seed,
        "classes": ",".join(cfg.dataset.class_names),
        "feature_cache": cfg.cache.features if cfg.cache is not None else False,
    }
    return {name: str(value) for name, value in values.items()}


def model_tags(model: ModelConfig, weights: ModelWeights | None = None) -> dict[str, str]:
    """The model (`config.model_identity`: a source, or preset:<name>), its preset and its revision where it has
    them: pinned by the preparation for a trial, as written for the sweep's parent run."""
    identity = model_identity(model, weights)
    tags = {"lorasweep.model": identity.source}
    if model.preset is not None:
        tags["lorasweep.preset"] = model.preset
    if identity.revision:
        tags["lorasweep.model_revision"] = identity.revision
    return tags


def trial_tags(cfg: TrialConfig, git_commit: str) -> dict[str, str]:
    """Where the run belongs (sweep, namespace, trial, group, variant), what ran (commit, model) and its keys."""
    assert cfg.tracking is not None
    tags = {
        "lorasweep.sweep": cfg.sweep,
        "lorasweep.namespace": cfg.namespace,
        "lorasweep.trial": cfg.trial,
        ROLE_TAG: TRIAL_ROLE,
        SWEEP_KEY_TAG: cfg.tracking.sweep_key,
        TRIAL_KEY_TAG: trial_key(cfg.tracking, cfg.trial),
        RUN_NAME_TAG: run_name(cfg),
        GIT_COMMIT_TAG: git_commit,
        "lorasweep.output": cfg.output,
        **model_tags(cfg.model, cfg.weights),
    }
    if cfg.group:
        tags["lorasweep.group"] = cfg.group
    if cfg.variant:
        tags["lorasweep.variant"] = cfg.variant
    return {name: value[:TAG_VALUE_LIMIT] for name, value in tags.items()}


def run_name(cfg: TrialConfig) -> str:
    """``<trial id> <variant>``: the id finds it in the sweep's status, the variant says what it changes."""
    return f"{cfg.trial} {cfg.variant}" if cfg.variant and cfg.variant != cfg.trial else cfg.trial


def sweep_tags(
    tracking: MlflowTracking, namespace: str, sweep: str, model: ModelConfig, git_commit: str
) -> dict[str, str]:
    return {
        "lorasweep.sweep": sweep,
        "lorasweep.namespace": namespace,
        ROLE_TAG: SWEEP_ROLE,
        SWEEP_KEY_TAG: tracking.sweep_key,
        RUN_NAME_TAG: sweep,
        GIT_COMMIT_TAG: git_commit,
        **model_tags(model),
    }


def artifact_tags(output: str) -> dict[str, str]:
    """``lorasweep.artifact.<name>``: the URIs of the trial's artifacts in object storage (not uploaded to MLflow)."""
    root = output.rstrip("/")
    return {f"lorasweep.artifact.{name}": f"{root}/{path}" for name, path in ARTIFACT_TAGS.items()}


def _finite(values: Mapping[str, float | int | None]) -> dict[str, float]:
    # MLflow stores NaN, but a diverged loss is better missing than plotted as NaN next to real values.
    return {name: float(value) for name, value in values.items() if value is not None and math.isfinite(value)}


def epoch_metrics(record: EpochMetrics) -> dict[str, float]:
    """One epoch's metrics (logged at step = epoch): train_loss, train_accuracy, val_accuracy, val_loss, val_macro_f1."""
    return _finite({name: value for name, value in record.model_dump().items() if name != "epoch"})


def final_metrics(metrics: TrialMetrics) -> dict[str, float]:
    """The trial's result: the test accuracy, the best epoch's numbers (``best_`` apart from the per-epoch
    histories of the same names), sizes and timings."""
    return _finite(
        {
            "test_accuracy": metrics.test_accuracy,
            "best_epoch": metrics.best_epoch,
            "best_train_accuracy": metrics.train_accuracy,
            "best_val_accuracy": metrics.val_accuracy,
            "best_val_loss": metrics.val_loss,
            "best_val_macro_f1": metrics.val_macro_f1,
            "trainable_parameters": metrics.trainable_parameters,
            "total_parameters": metrics.total_parameters,
            "inference_ms_per_video": metrics.inference_ms_per_video,
            "train_seconds": metrics.train_seconds,
        }
    )


def end_status(error: BaseException | None) -> str:
    """FINISHED, KILLED (stopped early by the sweep) or FAILED."""
    from lorasweep_trainer.progress import TrialStopped

    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, TrialStopped) else "FAILED"


# --- calls that may fail ------------------------------------------------------------------------------------------


@dataclass
class Outbox:
    """MLflow calls, each tried once; after the first failure the rest are kept untried, and `flush` tries every
    kept call once more, in order. ``context``: key=value pairs for the log lines."""

    context: Mapping[str, str]
    on_failure: Callable[[str], None] = lambda operation: None
    on_dropped: Callable[[str], None] = lambda operation: None
    failures: int = 0
    dropped: int = 0
    kept: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    down: bool = False

    def submit(self, operation: str, call: Callable[[], None]) -> bool:
        """Run `call` now unless MLflow is already known to be down; True when it ran."""
        if self.down:
            self.kept.append((operation, call))
            return False
        try:
            call()
        except Exception as error:  # any failure of tracking must leave the trial alone
            self._failed(operation, error, "kept for the end")
            self.kept.append((operation, call))
            self.down = True
            return False
        return True

    def flush(self) -> None:
        """The kept calls, once more; on the first that fails, it and the rest are dropped."""
        kept, self.kept, self.down = self.kept, [], False
        for index, (operation, call) in enumerate(kept):
            try:
                call()
            except Exception as error:
                self._failed(operation, error, "dropped")
                for dropped, _ in kept[index:]:
                    self.dropped += 1
                    self.on_dropped(dropped)
                self.down = True
                return
        if kept:
            log.info("mlflow calls retried %s calls=%d", self._where(), len(kept))

    def _failed(self, operation: str, error: Exception, then: str) -> None:
        self.failures += 1
        self.on_failure(operation)
        log.warning(
            "mlflow call failed %s operation=%s then=%s error=%s",
            self._where(),
            operation,
            then.replace(" ", "_"),
            f"{type(error).__name__}: {str(error)[:300]}",
        )

    def _where(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.context.items())


def client(uri: str) -> Any:
    """An MLflow client of `uri`, with the short timeouts of `CLIENT_ENV` (unless the environment sets others)."""
    for name, value in CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow: Any, name: str) -> str:
    """The experiment's id; created when missing (by whichever process asks first)."""
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        try:
            return str(mlflow.create_experiment(name))
        except Exception:
            found = mlflow.get_experiment_by_name(name)  # another process created it meanwhile
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore it or name another experiment")
    return str(found.experiment_id)


def find_or_create(mlflow: Any, experiment: str, keys: Mapping[str, str], tags: Mapping[str, str]) -> tuple[str, bool]:
    """(the run tagged with every one of `keys`, created?): the oldest such run; when none exists one is created
    (with `tags`, which hold the keys), and if a concurrent caller created one too, the oldest is kept and the other
    deleted, so all converge on one run; a caller that finds a run younger than `YOUNG_RUN_SECONDS` waits for
    its creator to settle. Key values are hex and ids (`sweep_key`): safe inside the quotes."""
    found = oldest_run(mlflow, experiment, keys)
    if found is not None:
        # A young run may yet be deleted by its creator for an older one that lands late: wait, then look again.
        age = time.time() - (found.info.start_time or 0) / 1000
        if age < YOUNG_RUN_SECONDS:
            time.sleep(min(YOUNG_RUN_SECONDS - age, YOUNG_RUN_SECONDS))  # bounded: the stamp is another clock's
            found = oldest_run(mlflow, experiment, keys) or found
        return str(found.info.run_id), False
    created = mlflow.create_run(experiment, tags=dict(tags), run_name=tags.get(RUN_NAME_TAG))
    mine = str(created.info.run_id)
    # The client stamps start_time before its request reaches the server, so a concurrent run stamped earlier may
    # be stored after this one: search once every such request has landed or timed out, so that all callers see
    # the same oldest run.
    time.sleep(CREATE_SETTLE_SECONDS)
    kept = oldest_run(mlflow, experiment, keys)
    if kept is not None and kept.info.run_id != mine:
        mlflow.delete_run(mine)
        return str(kept.info.run_id), False
    return mine, True


def oldest_run(mlflow: Any, experiment: str, keys: Mapping[str, str]) -> Any | None:
    """The oldest active run tagged with every one of `keys`, or None."""
    query = " and ".join(f"tags.`{name}` = '{value}'" for name, value in keys.items())
    runs = mlflow.search_runs([experiment], filter_string=query, max_results=50)
    return min(runs, key=lambda run: (run.info.start_time or 0, run.info.run_id), default=None)


def log_batch(
    mlflow: Any,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    step: int = 0,
    timestamp_ms: int | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    stamp = timestamp_ms if timestamp_ms is not None else now_ms()
    entries = [Metric(name, value, stamp, step) for name, value in (metrics or {}).items()]
    param_list = [Param(name, value) for name, value in (params or {}).items()]
    tag_list = [RunTag(name, value) for name, value in (tags or {}).items()]
    for chunk in range(0, max(len(param_list), len(tag_list), 1), BATCH_PARAMS):
        mlflow.log_batch(
            run_id,
            metrics=entries if chunk == 0 else [],
            params=param_list[chunk : chunk + BATCH_PARAMS],
            tags=tag_list[chunk : chunk + BATCH_TAGS],
        )


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the sweep's parent run ---------------------------------------------------------------------------------------


def parent_run(
    mlflow: Any, tracking: MlflowTracking, namespace: str, sweep: str, model: ModelConfig, git_commit: str
) -> tuple[str, str]:
    """(experiment id, parent run id) of the sweep: found by its key, else created."""
    experiment = experiment_id(mlflow, tracking.experiment)
    tags = sweep_tags(tracking, namespace, sweep, model, git_commit)
    keys = {SWEEP_KEY_TAG: tracking.sweep_key, ROLE_TAG: SWEEP_ROLE}  # the trials' runs carry the sweep key too
    run_id, created = find_or_create(mlflow, experiment, keys, tags)
    log.info("mlflow parent run %s namespace=%s sweep=%s run=%s", "created" if created else "found", namespace, sweep,
             run_id)  # fmt: skip
    return experiment, run_id


@dataclass
class ParentLookup:
    """The preparation's part: the sweep's parent run, tried at its start and, when that failed, once more at its
    end; its id goes into the preparation's termination summary."""

    tracking: MlflowTracking
    namespace: str
    sweep: str
    model: ModelConfig
    git_commit: str
    run_id: str | None = None
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox({"namespace": self.namespace, "sweep": self.sweep, "experiment": self.tracking.experiment})

    def start(self) -> None:
        self.outbox.submit("parent_run", self._find)

    def finish(self) -> str | None:
        self.outbox.flush()
        return self.run_id

    def _find(self) -> None:
        mlflow = client(self.tracking.uri)
        _, self.run_id = parent_run(mlflow, self.tracking, self.namespace, self.sweep, self.model, self.git_commit)


def finish_sweep(tracking: MlflowTracking, summary: Mapping[str, str], metrics: Mapping[str, float]) -> str | None:
    """The report's part: the sweep's parent run (by its id, else found by its key; never created here) gets the
    report's `summary` tags (the best configuration, the report's URI) and `metrics`, and ends FINISHED. Tried
    twice, never raises; returns the run's id, or None when it was not reached or there is none."""
    found: list[str] = []

    def finish() -> None:
        mlflow = client(tracking.uri)
        run_id = tracking.parent_run_id
        if run_id is None:
            experiment = mlflow.get_experiment_by_name(tracking.experiment)
            keys = {SWEEP_KEY_TAG: tracking.sweep_key, ROLE_TAG: SWEEP_ROLE}
            run = oldest_run(mlflow, experiment.experiment_id, keys) if experiment is not None else None
            if run is None:
                log.info("mlflow parent run not found sweep_key=%s", tracking.sweep_key)
                return
            run_id = str(run.info.run_id)
        log_batch(mlflow, run_id, _finite(metrics), tags=summary)
        mlflow.set_terminated(run_id, status="FINISHED")
        found.append(run_id)

    outbox = Outbox({"experiment": tracking.experiment, "sweep_key": tracking.sweep_key})
    outbox.submit("finish_sweep", finish)
    outbox.flush()
    return found[0] if found else None


# --- a trial's child run ------------------------------------------------------------------------------------------


class TrialRun:
    """One trial's child run. Every method returns at once when the trial has no tracking, and never raises."""

    def __init__(self, cfg: TrialConfig, git_commit: str) -> None:
        self.cfg = cfg
        self.tracking = cfg.tracking
        self.git_commit = git_commit
        self.mlflow: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.parent_run_id = cfg.tracking.parent_run_id if cfg.tracking is not None else None
        context = {"namespace": cfg.namespace, "sweep": cfg.sweep, "trial": cfg.trial}
        self.outbox = Outbox(context)
        self.ended = False

    @property
    def enabled(self) -> bool:
        return self.tracking is not None

    def count_with(self, failures: Callable[[str], None], dropped: Callable[[str], None]) -> None:
        """Where failures and dropped calls are counted too (the trial's Prometheus counters)."""
        self.outbox.on_failure, self.outbox.on_dropped = failures, dropped

    def start(self) -> None:
        if self.enabled:
            self.outbox.submit("start_run", self._start)

    def log_epoch(self, record: EpochMetrics) -> None:
        if not self.enabled:
            return
        values, stamp = epoch_metrics(record), now_ms()
        self.outbox.submit(
            "log_epoch", lambda: log_batch(self._client(), self._run(), values, step=record.epoch, timestamp_ms=stamp)
        )

    def finish(self, metrics: TrialMetrics) -> None:
        """Final metrics and artifact URIs, the run FINISHED, then the kept calls retried once."""
        if not self.enabled:
            return
        values, stamp, tags = final_metrics(metrics), now_ms(), artifact_tags(self.cfg.output)
        self.outbox.submit(
            "log_final", lambda: log_batch(self._client(), self._run(), values, step=0, timestamp_ms=stamp, tags=tags)
        )
        self._end("FINISHED")

    def fail(self, error: BaseException) -> None:
        """The trial failed or was stopped early (also after `finish`, when publishing failed): its run ends FAILED
        or KILLED, after the kept calls are tried once more."""
        if self.enabled:
            self._end(end_status(error))

    def summary(self) -> TrackingUse | None:
        """metrics.json's ``tracking``: where the run is and what did not reach it."""
        if self.tracking is None:
            return None
        return TrackingUse(
            uri=self.tracking.uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id,
            run_id=self.run_id,
            failures=self.outbox.failures,
            dropped=self.outbox.dropped,
        )

    def _end(self, status: str) -> None:
        self.ended = True
        if self.run_id is None and not self.outbox.kept:
            return  # the trial failed before it started its run: nothing to end
        self.outbox.submit("end_run", lambda: self._client().set_terminated(self._run(), status=status))
        self.outbox.flush()

    def _client(self) -> Any:
        if self.mlflow is None:
            assert self.tracking is not None
            self.mlflow = client(self.tracking.uri)
        return self.mlflow

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the trial's MLflow run was not started (an earlier call failed)")
        return self.run_id

    def _start(self) -> None:
        assert self.tracking is not None
        cfg, mlflow = self.cfg, self._client()
        if self.experiment_id is None:
            self.experiment_id = experiment_id(mlflow, self.tracking.experiment)
        if self.parent_run_id is None:  # no preparation found it: the trials find or create it themselves
            self.experiment_id, self.parent_run_id = parent_run(
                mlflow, self.tracking, cfg.namespace, cfg.sweep, cfg.model, self.git_commit
            )
        tags = {**trial_tags(cfg, self.git_commit), PARENT_TAG: self.parent_run_id}
        run_id, created = find_or_create(mlflow, self.experiment_id, {TRIAL_KEY_TAG: tags[TRIAL_KEY_TAG]}, tags)
        if not created:
            mlflow.update_run(run_id, status="RUNNING")  # a retried trial continues its run
        log_batch(mlflow, run_id, params=trial_params(cfg), tags=tags)
        self.run_id = run_id
        log.info("mlflow run started trial=%s run=%s parent=%s created=%s", cfg.trial, run_id, self.parent_run_id,
                 created)  # fmt: skip
