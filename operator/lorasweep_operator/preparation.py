"""The sweep's preparation step, planned and observed. Pure; the handler does the API I/O.

Before its trials, a sweep runs one preparation Job (`lorasweep-trainer prepare`): it fetches the model once
from ``model.source`` into the cache (or verifies it in place on a volume) and resolves its revision, which every
trial's configuration then pins (`status.preparation.weights`); it decodes every selected clip once and, where the trials allow it, runs the frozen encoder once per (clip, frame sample), into the
content-keyed cache ``<output>/<namespace>/cache/`` (lorasweep_trainer.cache). Trials then read their inputs
from there. The cache is shared by every sweep of the namespace, so a second sweep over the same data and model
(a fromSweep follow-up with other hyperparameters) finds every shard already made and its preparation ends in
seconds.

Which trials train on features is decided here, per trial, by the one rule `feature_cache_blocker` (LoRA targets
inside the encoder forbid it); the trainer checks it again against the model it really built.

`status.preparation` is the memory: once it says Succeeded for the current preparation Job's name, deleting
that Job (ttlSecondsAfterFinished) does not run it again, as `status.outcomes` does for trials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lorasweep_operator.planning import PlannedTrial, job_name, short_hash
from lorasweep_operator.spec import DEFAULT_COMMAND, Condition, LoraSweepSpec, LoraSweepStatus, PreparationStatus
from lorasweep_trainer.config import CacheConfig, MlflowTracking, PrepareConfig, cache_root, feature_cache_blocker
from lorasweep_trainer.results import PrepareSummary

CACHE_READY = "CacheReady"
COMPONENT = "prepare"
CONTAINER = "prepare"
COMMAND = ("lorasweep-trainer", "prepare")
MESSAGE_LIMIT = 512


@dataclass(frozen=True)
class Preparation:
    """What the sweep's preparation makes, its Job's name, and how each trial reads the result."""

    config: PrepareConfig
    job_name: str
    trial_caches: Mapping[str, CacheConfig]


def wanted(spec: LoraSweepSpec) -> bool:
    """The clips are prepared (decoded, encoded) when the trials run the trainer itself; a command of the user's
    own may not read the cache, so its trials stream their clips as before."""
    return tuple(spec.command) == DEFAULT_COMMAND


def fetches_model(spec: LoraSweepSpec) -> bool:
    """The model is fetched once for the trials whatever their command: every model but a preset's random weights."""
    return spec.model.fetched


def needed(spec: LoraSweepSpec) -> bool:
    """A preparation Job runs before the trials: for the clips (`wanted`), or for the model alone (`fetches_model`,
    a command of the user's own: the Job runs ``lorasweep-trainer prepare`` in spec.image with ``shards: false``)."""
    return wanted(spec) or fetches_model(spec)


def feature_cache_reason(spec: LoraSweepSpec, trial: PlannedTrial) -> tuple[bool, str]:
    """(train this trial on cached encoder features?, why or why not)."""
    if spec.feature_cache == "off":
        return False, "featureCache is off"
    blocker = feature_cache_blocker(trial.training.lora)
    if blocker is not None:
        return False, blocker
    return True, "LoRA leaves the frozen encoder untouched: its features are computed once by the preparation"


def trial_cache(
    spec: LoraSweepSpec, namespace: str, trial: PlannedTrial, cache_uri: str | None = None
) -> CacheConfig | None:
    """How ``trial`` reads the preparation's cache (default: the namespace's, under spec.storage.output); None
    when the sweep has no preparation (`wanted`)."""
    if not wanted(spec):
        return None
    return _cache(cache_uri or cache_root(spec.storage.output, namespace), spec, trial)


def _cache(uri: str, spec: LoraSweepSpec, trial: PlannedTrial) -> CacheConfig:
    features, reason = feature_cache_reason(spec, trial)
    return CacheConfig(uri=uri, features=features, reason=reason)


def plan_preparation(
    spec: LoraSweepSpec,
    namespace: str,
    sweep: str,
    trials: Sequence[PlannedTrial],
    cache_uri: str | None = None,
    tracking: MlflowTracking | None = None,
) -> Preparation:
    """``tracking``: where the preparation finds or creates the sweep's MLflow parent run (spec.tracking)."""
    uri = cache_uri or cache_root(spec.storage.output, namespace)
    caches = {trial.id: _cache(uri, spec, trial) for trial in trials}
    # Every LoRA config the spec can make (search.optimize proposes its trials later: their targets are known now).
    blocked = [feature_cache_blocker(lora) is not None for _, lora in spec.lora_configs()]
    blocked += [not cache.features for cache in caches.values()]
    seeds = sorted({*spec.search.seeds, *(trial.seed for trial in trials)})
    epochs = max([spec.training.epochs, *(trial.training.epochs for trial in trials)])
    config = PrepareConfig(
        namespace=namespace,
        sweep=sweep,
        model=spec.model,
        dataset=spec.dataset,
        seeds=tuple(seeds),
        epochs=epochs,
        cache=CacheConfig(uri=uri, features=spec.feature_cache != "off" and not all(blocked)),
        frames=spec.feature_cache == "off" or any(blocked),
        require_features=spec.feature_cache == "on",
        shards=wanted(spec),
        tracking=tracking,
    )
    # The name changes with what is prepared (an edit of spec.training.epochs prepares the new epochs); where the
    # runs are logged changes nothing that is prepared.
    prepared = config.model_dump(mode="json", by_alias=True, exclude={"tracking"})
    digest = short_hash(json.dumps(prepared, sort_keys=True))
    return Preparation(config=config, job_name=job_name(sweep, f"{COMPONENT}-{digest}"), trial_caches=caches)


def summary_of(message: str | None) -> PrepareSummary | None:
    """The preparation's termination message; anything but its JSON summary becomes a Failed summary with a fixed
    text, never its contents (they may hold what the status must not: see status.UNSTRUCTURED_MESSAGE)."""
    from lorasweep_operator.status import UNSTRUCTURED_MESSAGE

    if not message:
        return None
    try:
        return PrepareSummary.model_validate_json(message)
    except ValidationError:
        return PrepareSummary(status="Failed", reason="NoSummary", message=UNSTRUCTURED_MESSAGE)


def observe(
    preparation: Preparation,
    previous: PreparationStatus | None,
    job_phase: str | None,
    job_reason: str | None,
    job_message: str | None,
    summary: PrepareSummary | None,
) -> PreparationStatus:
    """The preparation's state after this pass; ``job_phase`` None: its Job does not exist (yet, or any more)."""
    if previous is not None and previous.job == preparation.job_name and previous.phase in ("Succeeded", "Failed"):
        return previous  # final: a deleted Job is not run again
    base = PreparationStatus(
        job=preparation.job_name, phase="Pending", cache_uri=preparation.config.cache.uri, features=False
    )
    if job_phase is None or job_phase in ("Pending", "Running"):
        return base.model_copy(update={"phase": job_phase or "Pending"})
    if job_phase == "Succeeded":
        return base.model_copy(
            update={
                "phase": "Succeeded",
                "features": summary.features if summary else False,
                "reason": (summary.reason or None) if summary else None,
                "stats": summary.stats if summary else {},
                "seconds": summary.seconds if summary else None,
                "weights": summary.weights if summary else None,
                "mlflow_parent_run_id": summary.mlflow_parent_run_id if summary else None,
            }
        )
    reason = summary.reason if summary is not None and summary.reason else (job_reason or "Failed")
    message = summary.message if summary is not None and summary.message else (job_message or "")
    return base.model_copy(update={"phase": "Failed", "reason": reason, "message": message[:MESSAGE_LIMIT]})


def apply(status: LoraSweepStatus, preparation: PreparationStatus, now: str) -> LoraSweepStatus:
    """The sweep's status with its preparation: Preparing until the cache is ready, Failed when it failed."""
    from lorasweep_operator.status import set_condition

    stats = preparation.stats
    if preparation.phase == "Succeeded":
        shards = "hits" in stats or "built" in stats  # a model-only preparation (a command of one's own) has none
        detail = f"cache {preparation.cache_uri}"
        if shards:
            detail += (
                f": {stats.get('hits', 0)} shards reused, {stats.get('built', 0)} built, "
                f"{stats.get('decodes', 0)} clips decoded, {stats.get('encoder_forwards', 0)} encoder forwards"
                + ("" if preparation.features else "; decoded frames only (no encoder features)")
            )
        if preparation.weights is not None:
            detail += (
                f"; model at revision {preparation.weights.revision}: {stats.get('model_files', 0)} files, "
                f"{stats.get('model_bytes_fetched', 0)} bytes fetched"
                + (" (reused from the cache)" if stats.get("model_reused") else "")
            )
        condition = Condition(type=CACHE_READY, status="True", reason="Prepared", message=detail)
        return status.model_copy(
            update={"preparation": preparation, "conditions": set_condition(status.conditions, condition, now)}
        )
    if preparation.phase == "Failed":
        message = f"preparation Job {preparation.job} failed: {preparation.reason}: {preparation.message}".strip()
        condition = Condition(type=CACHE_READY, status="False", reason="PreparationFailed", message=message)
        failed = Condition(type="Failed", status="True", reason="PreparationFailed", message=message)
        conditions = set_condition(set_condition(status.conditions, condition, now), failed, now)
        return status.model_copy(
            update={
                "phase": "Failed",
                "message": message,
                "preparation": preparation,
                "conditions": conditions,
                "completion_time": status.completion_time or now,
            }
        )
    message = (
        f"preparing the sweep's shared work in Job {preparation.job}: the model fetched once, the clips decoded "
        "(and encoded) once"
    )
    condition = Condition(type=CACHE_READY, status="False", reason="Preparing", message=message)
    update: dict[str, Any] = {
        "preparation": preparation,
        "conditions": set_condition(status.conditions, condition, now),
    }
    if status.phase in ("Pending", "Running"):
        update.update({"phase": "Preparing", "message": message})
    return status.model_copy(update=update)
