"""The trainer's MLflow tracking against a real `mlflow server` (sqlite backend) on loopback: a trial's child run
with its params, per-epoch histories, final metrics and artifact URIs; a retried trial continuing its run;
trials without a preparation converging on one parent run; and a server that is down costing the trial nothing
but counted failures (metrics.json and the Prometheus counter). The tiny V-JEPA2 on CPU, synthetic clips in a
local folder, trials in this process (`train.train`)."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from fixtures_mlflow import MlflowServer
from lorasweep_operator.devcluster.cluster import free_ports
from lorasweep_trainer import tracking
from lorasweep_trainer.config import MlflowTracking, ModelConfig, TrialConfig
from lorasweep_trainer.synth import SynthSpec, write_dataset
from lorasweep_trainer.train import train

pytestmark = pytest.mark.integration

EPOCHS = 2


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    write_dataset(SynthSpec(actions=(8, 9, 23), clips_per_action=4, frames=8, seed=1), str(folder))
    return folder


def contract(uri: str, experiment: str, parent_run_id: str | None = None) -> MlflowTracking:
    return MlflowTracking(
        uri=uri, experiment=experiment, sweep_key=tracking.sweep_key("ns", experiment, uuid.uuid4().hex),
        parent_run_id=parent_run_id,
    )  # fmt: skip


def trial_config(clips: Path, out: Path, trial: str, tracking_: MlflowTracking, **changes: Any) -> TrialConfig:
    document: dict[str, Any] = {
        "namespace": "ns",
        "sweep": tracking_.experiment,
        "trial": trial,
        "group": "learning-rate",
        "variant": "learningRate=0.01",
        "model": {"preset": "tiny", "framesPerClip": 4},
        "dataset": {"source": str(clips), "classes": {"sit": [8], "stand": [9], "other": "rest"}, "videosPerClass": 4},
        "training": {"epochs": EPOCHS, "batchSize": 2, "gradientAccumulationSteps": 1, "learningRate": 0.01},
        "output": str(out / trial) + "/",
        "metricsPort": 0,
        "ioThreads": 2,
        "device": "cpu",
        "tracking": tracking_.model_dump(by_alias=True),
        **changes,
    }
    return TrialConfig.model_validate(document)


def runs_with(server: MlflowServer, experiment: str, tag: str, value: str, role: str | None = None) -> list[Any]:
    """The runs of `experiment` tagged ``tag = value`` (and ``lorasweep.role = role``)."""
    client = server.client()
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    query = f"tags.`{tag}` = '{value}'" + (f" and tags.`{tracking.ROLE_TAG}` = '{role}'" if role else "")
    runs: list[Any] = client.search_runs([found.experiment_id], filter_string=query)
    return runs


def test_a_trial_logs_its_run_under_the_parent_and_a_retry_continues_it(
    mlflow_server: MlflowServer, clips: Path, tmp_path: Path
) -> None:
    experiment = f"trainer-{uuid.uuid4().hex[:8]}"
    client = tracking.client(mlflow_server.uri)
    exp_id = tracking.experiment_id(client, experiment)
    contract_ = contract(mlflow_server.uri, experiment)
    _, parent = tracking.parent_run(client, contract_, "ns", experiment, ModelConfig(preset="tiny"), "c0")
    cfg = trial_config(clips, tmp_path, "t1", contract_.model_copy(update={"parent_run_id": parent}))

    metrics, metrics_uri = train(cfg)
    assert metrics.tracking is not None
    assert (metrics.tracking.failures, metrics.tracking.dropped) == (0, 0)
    assert (metrics.tracking.experiment_id, metrics.tracking.parent_run_id) == (exp_id, parent)
    run = mlflow_server.client().get_run(metrics.tracking.run_id)
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags["mlflow.parentRunId"] == parent and tags["lorasweep.trial"] == "t1"
    assert (tags["lorasweep.group"], tags["lorasweep.variant"]) == ("learning-rate", "learningRate=0.01")
    assert tags["mlflow.source.git.commit"] == metrics.git_commit and tags["lorasweep.preset"] == "tiny"
    assert tags["lorasweep.artifact.metrics"] == metrics_uri and Path(metrics_uri).is_file()
    assert Path(tags["lorasweep.artifact.adapter"], "adapter_config.json").is_file()
    assert Path(tags["lorasweep.artifact.confusion_matrix"]).is_file()
    assert params == tracking.trial_params(cfg)
    assert float(params["learning_rate"]) == metrics.params.learning_rate
    history = mlflow_server.client().get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(e.epoch, e.val_accuracy) for e in metrics.epochs]
    loss = mlflow_server.client().get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in loss] == [(e.epoch, e.train_loss) for e in metrics.epochs]
    assert run.data.metrics["test_accuracy"] == metrics.test_accuracy
    assert run.data.metrics["best_epoch"] == metrics.best_epoch
    assert run.data.metrics["best_val_accuracy"] == metrics.val_accuracy
    assert not mlflow_server.client().list_artifacts(run.info.run_id)  # references, nothing uploaded

    # The Job's next pod after a failure runs the same trial again: the same run, not a second one.
    again, _ = train(cfg)
    assert again.tracking is not None and again.tracking.run_id == run.info.run_id
    (only,) = runs_with(mlflow_server, experiment, tracking.TRIAL_KEY_TAG, tracking.trial_key(contract_, "t1"))
    assert only.info.status == "FINISHED"


def test_trials_without_a_preparation_converge_on_one_parent_run(mlflow_server: MlflowServer) -> None:
    """Parallel trials that each find or create the parent run (no preparation gave them its id) end with one."""
    experiment = f"race-{uuid.uuid4().hex[:8]}"
    contract_ = contract(mlflow_server.uri, experiment)
    found: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def trial() -> None:
        try:
            client = tracking.client(mlflow_server.uri)
            start.wait()
            found.append(tracking.parent_run(client, contract_, "ns", experiment, ModelConfig(), "c0")[1])
        except BaseException as error:  # reported below with the rest
            errors.append(error)

    threads = [threading.Thread(target=trial) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(found) == 4 and len(set(found)) == 1, found
    (parent,) = runs_with(mlflow_server, experiment, tracking.SWEEP_KEY_TAG, contract_.sweep_key)
    assert parent.info.run_id == found[0] and parent.data.tags["lorasweep.role"] == "sweep"


def test_a_run_found_while_young_is_not_taken_before_its_creator_has_settled(mlflow_server: MlflowServer) -> None:
    """The race CI once lost: a caller found the first run stored, whose creator then deleted it for an older-stamped
    run that landed later. A finder waits until the run it found is past `YOUNG_RUN_SECONDS`, then looks again."""
    client = tracking.client(mlflow_server.uri)
    experiment = tracking.experiment_id(client, f"young-{uuid.uuid4().hex[:8]}")
    keys = {tracking.SWEEP_KEY_TAG: uuid.uuid4().hex}
    stamp = tracking.now_ms()
    stored_first = client.create_run(experiment, start_time=stamp, tags=keys).info.run_id
    found: list[tuple[str, bool]] = []
    finder = threading.Thread(target=lambda: found.append(tracking.find_or_create(client, experiment, keys, keys)))
    finder.start()
    time.sleep(1)
    # What the two creators do meanwhile: the older-stamped create lands, the younger run's creator deletes its own.
    stamped_first = client.create_run(experiment, start_time=stamp - 1000, tags=keys).info.run_id
    client.delete_run(stored_first)
    finder.join(timeout=3 * tracking.YOUNG_RUN_SECONDS)
    assert found == [(stamped_first, False)]


def scrape(port: int, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("trial") == "down"
    )


def test_a_tracking_server_that_is_down_costs_the_trial_nothing_but_counted_failures(
    mlflow_down_uri: str, clips: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)
    cfg = trial_config(clips, tmp_path, "down", contract(mlflow_down_uri, "down"), metricsPort=port)
    with caplog.at_level("WARNING", logger="lorasweep_trainer.tracking"):
        metrics, metrics_uri = train(cfg)
    assert Path(metrics_uri).is_file() and len(metrics.epochs) == EPOCHS
    use = metrics.tracking
    assert use is not None and use.run_id is None
    # One failure while training (start_run; the epochs were kept untried), one when all were retried at the end;
    # then start_run, both epochs, the final metrics and the end of the run were dropped.
    assert (use.failures, use.dropped) == (2, 5)
    assert scrape(port, "lorasweep_trainer_mlflow_failures_total") == use.failures
    assert scrape(port, "lorasweep_trainer_mlflow_dropped_total") == use.dropped
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mlflow call failed")]
    assert len(failed) == 2 and all("trial=down operation=start_run" in line for line in failed), failed


def test_lorasweep_run_logs_one_parent_and_a_child_per_trial_and_a_resumed_run_keeps_them(
    mlflow_server: MlflowServer, clips: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    import yaml

    from lorasweep_operator.spec import load_sweep_file
    from lorasweep_operator.tracking import for_local

    experiment = f"local-{uuid.uuid4().hex[:8]}"
    manifest = {
        "apiVersion": "lorasweep.dev/v1alpha1",
        "kind": "LoraSweep",
        "metadata": {"name": "local"},
        "spec": {
            "image": "lorasweep-trainer:cpu",
            "model": {"preset": "tiny", "framesPerClip": 4},
            "dataset": {"source": f"{clips}/", "classes": {"sit": [8], "stand": [9], "other": "rest"},
                        "videosPerClass": 4},
            "training": {"epochs": EPOCHS, "batchSize": 2, "gradientAccumulationSteps": 1},
            "search": {"list": [{"learningRate": 1.0e-2}, {"learningRate": 3.0e-3}]},
            "parallelism": 2,
            "storage": {"output": "s3://unused/"},
            "tracking": {"mlflow": {"uri": mlflow_server.uri, "experiment": experiment}},
        },
    }  # fmt: skip
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("lorasweep")), "run", str(sweep_file), "--out", str(out)]
    command += ["--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr

    key = for_local(load_sweep_file(sweep_file).spec, "default", "local", str(out.resolve()))
    assert key is not None
    (parent,) = runs_with(mlflow_server, experiment, tracking.SWEEP_KEY_TAG, key.sweep_key, tracking.SWEEP_ROLE)
    children = runs_with(mlflow_server, experiment, tracking.PARENT_TAG, parent.info.run_id)
    trials = sorted(path.parent.name for path in out.glob("trials/*/metrics.json"))
    assert sorted(run.data.tags["lorasweep.trial"] for run in children) == trials and len(trials) == 2
    assert {run.info.status for run in children} == {"FINISHED"}
    # The runner finished the parent with the sweep's best, as the report Job does on a cluster.
    assert parent.info.status == "FINISHED" and parent.data.tags["lorasweep.best_trial"] in trials
    assert parent.data.tags["lorasweep.report"] == str(out.resolve() / "report" / "report.md")

    # A trial's results lost: the next run prepares again and reruns it, under the same parent and in the same run.
    (out / "trials" / trials[0] / "metrics.json").unlink()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    (again,) = runs_with(mlflow_server, experiment, tracking.SWEEP_KEY_TAG, key.sweep_key, tracking.SWEEP_ROLE)
    assert again.info.run_id == parent.info.run_id
    rerun = runs_with(mlflow_server, experiment, tracking.PARENT_TAG, parent.info.run_id)
    assert sorted(run.info.run_id for run in rerun) == sorted(run.info.run_id for run in children)


@pytest.mark.reliability
@pytest.mark.timeout(300)  # a hang guard: with the client's own defaults (120 s, 7 retries) this would take hours
def test_a_server_that_never_answers_is_given_up_on_after_short_timeouts(clips: Path, tmp_path: Path) -> None:
    """A tracking server that accepts connections and never answers (a hung proxy): the trial's calls time out
    after the trainer's short client timeouts, once while training and once at the end, and are counted."""
    import socket

    from lorasweep_trainer.results import EpochMetrics

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody ever reads a request
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = trial_config(clips, tmp_path, "silent", contract(uri, "silent"))
        run = tracking.TrialRun(cfg, "c0")
        run.start()
        for epoch in (1, 2):
            run.log_epoch(EpochMetrics(epoch=epoch, train_loss=1.0, train_accuracy=0.5, val_accuracy=0.5))
        run.fail(RuntimeError("the trial failed"))
    use = run.summary()
    assert use is not None and use.run_id is None
    assert (use.failures, use.dropped) == (2, 4)  # start_run, both epochs and the end of the run were dropped
