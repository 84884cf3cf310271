"""MLflow tracking without a server: the mapping from a trial to its params, tags and metrics, the outage
bookkeeping (`Outbox`), and spec.tracking in the rendered Jobs (contract, Secret keys, the parent run's id)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lorasweep_operator import planning, preparation, rendering
from lorasweep_operator import tracking as trackings
from lorasweep_operator.spec import LoraSweepStatus, SpecError, parse_spec
from lorasweep_trainer import tracking
from lorasweep_trainer.config import (
    PREPARE_ENV,
    TRACKING_ENV,
    CacheConfig,
    DatasetConfig,
    LoraConfig,
    MlflowTracking,
    ModelConfig,
    PrepareConfig,
    TrainingConfig,
    TrialConfig,
)
from lorasweep_trainer.results import EpochMetrics, PrepareSummary, TrialMetrics

KEY = tracking.sweep_key("research", "phase1", "uid-123")
TRACKING = MlflowTracking(uri="http://mlflow.example:5000", experiment="ntu", sweep_key=KEY, parent_run_id="p" * 32)
SPEC: dict[str, Any] = {
    "image": "registry.example/lorasweep-trainer:0.1.0",
    "dataset": {"source": "s3://bucket/clips/"},
    "search": {"list": [{"learningRate": 1e-3}, {"learningRate": 5e-4}]},
    "storage": {"output": "s3://bucket/sweeps/", "credentialsSecret": "s3"},
    "tracking": {"mlflow": {"uri": "https://mlflow.example", "experiment": "ntu", "credentialsSecret": "mlflow"}},
}


def trial(**changes: Any) -> TrialConfig:
    fields: dict[str, Any] = {
        "namespace": "research",
        "sweep": "phase1",
        "trial": "a1b2c3d4e5",
        "group": "learning-rate",
        "variant": "learningRate=1e-3",
        "model": ModelConfig(preset="tiny", frames_per_clip=4),
        "dataset": DatasetConfig(
            source="s3://bucket/clips/", classes={"sit": [8], "other": "rest"}, videos_per_class=6
        ),
        "training": TrainingConfig(
            epochs=3, learning_rate=1e-3, lora=LoraConfig(rank=8, alpha=16, dropout=0.05, target_modules=("q_proj",))
        ),
        "seed": 7,
        "output": "s3://bucket/sweeps/research/phase1/trials/a1b2c3d4e5/",
        "cache": CacheConfig(uri="s3://bucket/sweeps/research/cache/", features=True),
        "tracking": TRACKING,
    }
    return TrialConfig(**{**fields, **changes})


def test_params_are_the_trials_hyperparameters_and_data_setup() -> None:
    assert tracking.trial_params(trial()) == {
        "learning_rate": "0.001",
        "lora_rank": "8",
        "lora_alpha": "16.0",
        "lora_dropout": "0.05",
        "lora_target_modules": "q_proj",
        "epochs": "3",
        "batch_size": "1",
        "gradient_accumulation_steps": "4",
        "weight_decay": "0.01",
        "scheduler": "cosine",
        "warmup_fraction": "0.1",
        "frames_per_clip": "4",
        "seed": "7",
        "videos_per_class": "6",
        "dataset_seed": "42",
        "classes": "sit,other",
        "feature_cache": "True",
    }


def test_tags_say_where_the_run_belongs_and_what_ran() -> None:
    tags = tracking.trial_tags(trial(), "0123abc")
    assert tags == {
        "lorasweep.sweep": "phase1",
        "lorasweep.namespace": "research",
        "lorasweep.trial": "a1b2c3d4e5",
        "lorasweep.group": "learning-rate",
        "lorasweep.variant": "learningRate=1e-3",
        "lorasweep.role": "trial",
        "lorasweep.sweep_key": KEY,
        "lorasweep.trial_key": f"{KEY}-a1b2c3d4e5",
        "mlflow.runName": "a1b2c3d4e5 learningRate=1e-3",
        "mlflow.source.git.commit": "0123abc",
        "lorasweep.output": "s3://bucket/sweeps/research/phase1/trials/a1b2c3d4e5/",
        "lorasweep.model": "preset:tiny",
        "lorasweep.preset": "tiny",
    }
    # A hub model has no preset tag; a trial outside any group (a list entry) no group or variant tags.
    plain = tracking.trial_tags(trial(model=ModelConfig(source="org/model"), group=None, variant=None), "x")
    assert plain["lorasweep.model"] == "org/model" and "lorasweep.preset" not in plain
    assert "lorasweep.group" not in plain and plain["mlflow.runName"] == "a1b2c3d4e5"


def test_the_parent_run_is_tagged_with_the_sweep_and_its_key() -> None:
    tags = tracking.sweep_tags(TRACKING, "research", "phase1", ModelConfig(), "abc")
    assert tags["lorasweep.role"] == "sweep" and tags["lorasweep.sweep_key"] == KEY
    assert (tags["lorasweep.sweep"], tags["lorasweep.namespace"], tags["mlflow.runName"]) == (
        "phase1",
        "research",
        "phase1",
    )
    assert tags["lorasweep.model"] == ModelConfig().source and tags["mlflow.source.git.commit"] == "abc"


def test_the_sweep_key_is_one_per_sweep_object() -> None:
    assert tracking.sweep_key("research", "phase1", "uid-123") == KEY
    assert len(KEY) == 32 and all(c in "0123456789abcdef" for c in KEY)  # safe inside a search filter's quotes
    others = {tracking.sweep_key("research", "phase1", "uid-456"), tracking.sweep_key("other", "phase1", "uid-123")}
    assert KEY not in others and len(others) == 2
    # Parts are separated, so ("a-b", "c") and ("a", "b-c") differ.
    assert tracking.sweep_key("a-b", "c") != tracking.sweep_key("a", "b-c")


def test_epoch_and_final_metrics() -> None:
    record = EpochMetrics(
        epoch=2, train_loss=0.5, train_accuracy=0.75, val_accuracy=0.5, val_loss=math.nan, val_macro_f1=0.4
    )
    # A diverged value is left out rather than logged as NaN; the epoch is the step, not a metric.
    assert tracking.epoch_metrics(record) == {
        "train_loss": 0.5,
        "train_accuracy": 0.75,
        "val_accuracy": 0.5,
        "val_macro_f1": 0.4,
    }
    metrics = TrialMetrics.model_validate(
        {
            "sweep": "phase1", "trial": "t", "params": {
                "learning_rate": 1e-3, "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.05, "epochs": 3,
                "batch_size": 1, "gradient_accumulation_steps": 4, "weight_decay": 0.01, "frames_per_clip": 4,
                "seed": 7,
            },
            "classes": ["sit", "other"], "dataset": {"videos_per_class": 6, "train": 8, "val": 2, "test": 2},
            "epochs": [record.model_dump()], "best_epoch": 2, "train_accuracy": 0.75, "val_accuracy": 0.5,
            "val_loss": 0.9, "val_macro_f1": 0.4, "test_accuracy": 0.25, "per_class": {}, "confusion_matrix": [],
            "trainable_parameters": 1000, "total_parameters": 50000, "inference_ms_per_video": 3.5,
            "train_seconds": 12.0, "git_commit": "abc", "model": "preset:tiny", "device": "cpu",
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:01:00Z",
        }
    )  # fmt: skip
    assert tracking.final_metrics(metrics) == {
        "test_accuracy": 0.25,
        "best_epoch": 2.0,
        "best_train_accuracy": 0.75,
        "best_val_accuracy": 0.5,
        "best_val_loss": 0.9,
        "best_val_macro_f1": 0.4,
        "trainable_parameters": 1000.0,
        "total_parameters": 50000.0,
        "inference_ms_per_video": 3.5,
        "train_seconds": 12.0,
    }


def test_artifacts_are_referenced_by_their_object_storage_uris() -> None:
    assert tracking.artifact_tags("s3://b/sweeps/ns/s/trials/t/") == {
        "lorasweep.artifact.metrics": "s3://b/sweeps/ns/s/trials/t/metrics.json",
        "lorasweep.artifact.adapter": "s3://b/sweeps/ns/s/trials/t/adapter/",
        "lorasweep.artifact.confusion_matrix": "s3://b/sweeps/ns/s/trials/t/confusion_matrix.png",
    }


def test_end_status_of_a_stopped_and_a_failed_trial() -> None:
    from lorasweep_trainer.progress import TrialStopped

    assert tracking.end_status(None) == "FINISHED"
    assert tracking.end_status(TrialStopped("stopped at epoch 1")) == "KILLED"
    assert tracking.end_status(RuntimeError("boom")) == "FAILED"


class Flaky:
    """A call that raises while `down`; records what ran."""

    def __init__(self, ran: list[str], name: str, state: dict[str, bool]) -> None:
        self.ran, self.name, self.state = ran, name, state

    def __call__(self) -> None:
        if self.state["down"]:
            raise ConnectionError("connection refused")
        self.ran.append(self.name)


def test_an_outage_costs_one_failed_call_and_the_rest_reach_the_server_at_the_end() -> None:
    ran: list[str] = []
    state = {"down": False}
    failures: list[str] = []
    outbox = tracking.Outbox({"trial": "t"}, on_failure=failures.append)
    outbox.submit("start_run", Flaky(ran, "start", state))
    state["down"] = True
    outbox.submit("log_epoch", Flaky(ran, "epoch1", state))
    outbox.submit("log_epoch", Flaky(ran, "epoch2", state))  # kept untried: MLflow is known to be down
    assert (ran, outbox.failures, failures, len(outbox.kept)) == (["start"], 1, ["log_epoch"], 2)
    state["down"] = False
    outbox.submit("log_final", Flaky(ran, "final", state))  # still kept: only the end retries
    outbox.flush()
    assert ran == ["start", "epoch1", "epoch2", "final"]  # in order, nothing lost
    assert (outbox.failures, outbox.dropped, outbox.kept) == (1, 0, [])


def test_calls_that_fail_again_at_the_end_are_dropped_and_counted() -> None:
    ran: list[str] = []
    state = {"down": True}
    dropped: list[str] = []
    outbox = tracking.Outbox({"trial": "t"}, on_dropped=dropped.append)
    for name in ("start_run", "log_epoch", "end_run"):
        outbox.submit(name, Flaky(ran, name, state))
    outbox.flush()
    assert ran == [] and outbox.failures == 2  # the first try, and the retry at the end
    assert outbox.dropped == 3 and dropped == ["start_run", "log_epoch", "end_run"]


# --- the operator's side ---------------------------------------------------------------------------------------


def test_the_spec_takes_an_http_server_and_an_experiment() -> None:
    spec = parse_spec(SPEC)
    assert spec.tracking is not None and spec.tracking.mlflow.credentials_secret == "mlflow"
    with pytest.raises(SpecError, match=r"tracking\.mlflow\.uri must be an http:// or https:// URL"):
        parse_spec({**SPEC, "tracking": {"mlflow": {"uri": "sqlite:///mlflow.db", "experiment": "ntu"}}})
    with pytest.raises(SpecError, match=r"spec\.tracking\.mlflow: Field required"):
        parse_spec({**SPEC, "tracking": {}})


def job_env(job: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_trial_jobs_carry_the_tracking_contract_and_only_the_secrets_mlflow_keys() -> None:
    spec = parse_spec(SPEC)
    planned = planning.plan(spec, "phase1")
    job = rendering.render_job(spec, "research", "phase1", "uid-123", planned[0], parent_run_id="r" * 32)
    env = job_env(job)
    config = TrialConfig.model_validate_json(env["LORASWEEP_TRIAL"]["value"])
    assert config.tracking == MlflowTracking(
        uri="https://mlflow.example", experiment="ntu", sweep_key=KEY, parent_run_id="r" * 32
    )
    for key in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "mlflow", "key": key, "optional": True}
    assert not [name for name in env if name.startswith("MLFLOW_") and name not in trackings.CREDENTIAL_KEYS]
    # spec.pod.env may not set them (spec.reserved_env_problem names the same keys).
    from lorasweep_operator.spec import TRACKING_ENV_NAMES

    assert TRACKING_ENV_NAMES == trackings.CREDENTIAL_KEYS
    # Packed trials: every member's contract has it.
    packed = parse_spec({**SPEC, "packing": 2})
    members = planning.plan(packed, "phase1")
    pack = rendering.render_pack_job(packed, "research", "phase1", "uid-123", members, parent_run_id="r" * 32)
    from pydantic import TypeAdapter

    configs = TypeAdapter(list[TrialConfig]).validate_json(job_env(pack)["LORASWEEP_PACK"]["value"])
    assert [member.tracking for member in configs] == [config.tracking] * 2


def test_without_tracking_or_its_secret_nothing_of_mlflow_reaches_the_pods() -> None:
    bare = parse_spec({key: value for key, value in SPEC.items() if key != "tracking"})
    trial0 = planning.plan(bare, "phase1")[0]
    env = job_env(rendering.render_job(bare, "research", "phase1", "uid-123", trial0))
    assert TrialConfig.model_validate_json(env["LORASWEEP_TRIAL"]["value"]).tracking is None
    assert not [name for name in env if name.startswith("MLFLOW_")]
    open_server = parse_spec({**SPEC, "tracking": {"mlflow": {"uri": "http://mlflow:5000", "experiment": "e"}}})
    env = job_env(rendering.render_job(open_server, "research", "phase1", "uid-123", trial0))
    assert not [name for name in env if name.startswith("MLFLOW_")]  # a server without authentication
    config = TrialConfig.model_validate_json(env["LORASWEEP_TRIAL"]["value"])
    assert config.tracking is not None and config.tracking.parent_run_id is None  # the trial finds it itself


def test_the_preparation_finds_the_parent_run_and_its_status_keeps_the_id() -> None:
    spec = parse_spec(SPEC)
    planned = planning.plan(spec, "phase1")
    contract = trackings.for_sweep(spec, "research", "phase1", "uid-123")
    prepared = preparation.plan_preparation(spec, "research", "phase1", planned, tracking=contract)
    # Where runs are logged changes nothing prepared: the same Job as without tracking.
    assert prepared.job_name == preparation.plan_preparation(spec, "research", "phase1", planned).job_name
    job = rendering.render_prepare_job(spec, "research", "phase1", "uid-123", prepared)
    env = job_env(job)
    assert PrepareConfig.model_validate_json(env[PREPARE_ENV]["value"]).tracking == contract
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow"

    summary = PrepareSummary(status="Succeeded", features=True, mlflow_parent_run_id="f" * 32)
    state = preparation.observe(prepared, None, "Succeeded", None, None, summary)
    assert state.mlflow_parent_run_id == "f" * 32
    status = preparation.apply(LoraSweepStatus(), state, "2026-01-01T00:00:00Z")
    patch = status.to_patch()
    assert patch["preparation"]["mlflowParentRunId"] == "f" * 32
    assert LoraSweepStatus.model_validate(patch).preparation == state  # read back by the next pass


def test_lorasweep_run_keys_the_parent_run_by_its_results_folder() -> None:
    spec = parse_spec(SPEC)
    first = trackings.for_local(spec, "default", "phase1", "/home/me/runs/phase1")
    again = trackings.for_local(spec, "default", "phase1", "/home/me/runs/phase1")
    elsewhere = trackings.for_local(spec, "default", "phase1", "/home/me/runs/other")
    assert first == again and first is not None and elsewhere is not None
    assert first.sweep_key != elsewhere.sweep_key and first.parent_run_id is None


def test_the_report_job_finishes_the_parent_run() -> None:
    spec = parse_spec(SPEC)
    job = rendering.render_report_job(spec, "research", "phase1", "uid-123", ["t1"], {}, parent_run_id="p" * 32)
    env = job_env(job)
    contract = MlflowTracking.model_validate_json(env[TRACKING_ENV]["value"])
    assert contract == MlflowTracking(
        uri="https://mlflow.example", experiment="ntu", sweep_key=KEY, parent_run_id="p" * 32
    )
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow"
    bare = parse_spec({key: value for key, value in SPEC.items() if key != "tracking"})
    env = job_env(rendering.render_report_job(bare, "research", "phase1", "uid-123", ["t1"], {}))
    assert TRACKING_ENV not in env and not [name for name in env if name.startswith("MLFLOW_")]
