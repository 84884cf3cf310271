"""The sweep's preparation planned and observed (`preparation`), and its Job rendered; no cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lorasweep_operator import planning, preparation, rendering
from lorasweep_operator.spec import LoraSweepStatus, SpecError, load_sweep_file, parse_spec
from lorasweep_trainer.config import PERMANENT_EXIT_CODES
from lorasweep_trainer.results import PrepareSummary

PHASE1 = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "phase1-sweep.yaml"
NOW = "2026-01-01T00:00:00Z"


def reference() -> tuple[Any, list[planning.PlannedTrial]]:
    manifest = load_sweep_file(PHASE1)
    return manifest.spec, planning.plan(manifest.spec, manifest.name)


def test_the_reference_sweep_prepares_features_for_its_seed_and_epochs() -> None:
    spec, trials = reference()
    prepared = preparation.plan_preparation(spec, "research", "phase1", trials)
    config = prepared.config
    assert len(trials) == 11 and config.seeds == (42,) and config.epochs == 5
    assert config.cache.features and not config.frames and not config.require_features
    assert config.cache.uri == f"{spec.storage.output.rstrip('/')}/research/cache/"
    assert all(cache.features for cache in prepared.trial_caches.values())
    assert prepared.job_name.startswith("phase1-") and "-prepare-" in prepared.job_name and len(prepared.job_name) <= 63
    # Deterministic: the same sweep gives the same Job, so a restarted operator finds it.
    assert preparation.plan_preparation(spec, "research", "phase1", trials).job_name == prepared.job_name


def test_trials_with_lora_in_the_encoder_get_decoded_frames_and_say_why() -> None:
    spec = parse_spec(
        {
            "image": "i",
            "dataset": {"source": "s3://b/clips/"},
            "search": {"list": [{"learningRate": 1e-3}, {"lora": {"targetModules": ["query", "value"]}}]},
            "storage": {"output": "s3://b/out/"},
        }
    )
    trials = planning.plan(spec, "mixed")
    prepared = preparation.plan_preparation(spec, "ns", "mixed", trials)
    assert prepared.config.cache.features and prepared.config.frames
    pooler, encoder = (prepared.trial_caches[t.id] for t in trials)
    assert pooler.features and not encoder.features and "inside the encoder" in encoder.reason


def test_feature_cache_on_with_lora_in_the_encoder_is_an_invalid_sweep() -> None:
    body = {
        "image": "i",
        "dataset": {"source": "s3://b/clips/"},
        "search": {"groups": [{"name": "targets", "values": [{"lora": {"targetModules": ["query"]}}]}]},
        "storage": {"output": "s3://b/out/"},
        "featureCache": "on",
    }
    with pytest.raises(SpecError, match=r"featureCache: on, but search.groups\[targets\].values\[0\].*query"):
        parse_spec(body)
    assert parse_spec({**body, "featureCache": "auto"}).feature_cache == "auto"


def test_feature_cache_off_and_a_command_of_ones_own() -> None:
    spec, trials = reference()
    off = spec.model_copy(update={"feature_cache": "off"})
    prepared = preparation.plan_preparation(off, "ns", "s", trials)
    assert not prepared.config.cache.features and prepared.config.frames
    own = spec.model_copy(update={"command": ["python", "train.py"]})
    assert not preparation.wanted(own) and preparation.trial_cache(own, "ns", trials[0]) is None


def prepared_status(phase: str | None, summary: PrepareSummary | None = None, previous: Any = None) -> Any:
    spec, trials = reference()
    prepared = preparation.plan_preparation(spec, "ns", "phase1", trials)
    return prepared, preparation.observe(prepared, previous, phase, "BackoffLimitExceeded", "job failed", summary)


def test_observed_states_and_the_sweep_phase_they_give() -> None:
    _, pending = prepared_status(None)
    status = preparation.apply(LoraSweepStatus(), pending, NOW)
    assert status.phase == "Preparing" and status.condition("CacheReady").reason == "Preparing"  # type: ignore[union-attr]

    summary = PrepareSummary(status="Succeeded", features=True, stats={"hits": 0, "built": 6, "decodes": 12})
    prepared, done = prepared_status("Succeeded", summary)
    status = preparation.apply(LoraSweepStatus(phase="Running"), done, NOW)
    ready = status.condition("CacheReady")
    assert status.phase == "Running" and ready is not None and ready.status == "True"
    assert "6 built" in ready.message and "12 clips decoded" in ready.message
    # Final: the Job deleted afterwards (TTL) changes nothing, so it is not created again.
    assert preparation.observe(prepared, done, None, None, None, None) == done

    failure = preparation.summary_of('{"status": "Failed", "reason": "DatasetUnusable", "message": "no NTU clips"}')
    _, failed = prepared_status("Failed", failure)
    status = preparation.apply(LoraSweepStatus(), failed, NOW)
    assert status.phase == "Failed" and status.completion_time == NOW
    assert "DatasetUnusable: no NTU clips" in (status.message or "")
    crash = preparation.summary_of("Traceback (most recent call last): ...")
    assert crash is not None and crash.reason == "NoSummary" and "Traceback" not in crash.message


def test_the_preparation_job_is_a_restricted_trainer_job_that_is_no_trial() -> None:
    spec, trials = reference()
    prepared = preparation.plan_preparation(spec, "research", "phase1", trials)
    job = rendering.render_prepare_job(spec, "research", "phase1", "uid-1", prepared)
    assert job["metadata"]["name"] == prepared.job_name
    assert rendering.component(job) == preparation.COMPONENT and rendering.TRIAL_LABEL not in job["metadata"]["labels"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["lorasweep-trainer", "prepare"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["LORASWEEP_PREPARE"] == prepared.config.model_dump_json(by_alias=True)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the encoder runs on the trials' GPU type
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == list(PERMANENT_EXIT_CODES)
    client.ApiClient()._ApiClient__deserialize(job, "V1Job")  # a valid Job as the API client models it
