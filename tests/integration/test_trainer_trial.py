"""A whole trial as the Job runs it: ``lorasweep-trainer train`` in a child process, synthetic NTU clips in a
real S3-protocol server (moto, HTTP on loopback), a tiny V-JEPA2 on CPU. One trial feeds most tests here.

Set LORASWEEP_TEST_SEED to run the trial with another seed; the accuracy margin is meant to hold for any.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lorasweep_trainer import storage
from lorasweep_trainer.results import TerminationSummary, TrialMetrics
from lorasweep_trainer.synth import SynthSpec, clip_name, write_dataset

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("LORASWEEP_TEST_SEED", "42"))
# synth.MOTIONS[action % 8]: 1 moves left, 2 up, 3 down; the rest class holds 4 (down-right) and 6 (still).
CLASSES = {"left": [1], "up": [2], "down": [3], "other": "rest"}
VIDEOS_PER_CLASS = 24
GIT_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def trial_document(source: str, output: str, **overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "namespace": "team-a",
        "sweep": "synthetic",
        "trial": "lr-0",
        "group": "learning-rate",
        "variant": "learningRate=1e-2",
        "model": {"preset": "tiny", "framesPerClip": 8},
        "dataset": {"source": source, "classes": CLASSES, "videosPerClass": VIDEOS_PER_CLASS, "seed": 7},
        "training": {"epochs": 8, "batchSize": 4, "gradientAccumulationSteps": 1, "learningRate": 0.01},
        "seed": SEED,
        "output": output,
        "metricsPort": 0,
        "prefetch": 4,
        "ioThreads": 2,
    }
    document.update(overrides)
    return document


class PushgatewayStandIn(http.server.ThreadingHTTPServer):
    """Receives what prometheus_client's push_to_gateway sends (a Pushgateway binary is not available here)."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                outer.pushes.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@dataclass
class TrialRun:
    bucket: str
    output: str
    returncode: int
    stderr: str
    termination: str
    scraped: str
    pushes: list[tuple[str, str]]
    corrupt_uri: str


def run_trainer(env: dict[str, str], termination: Path, metrics_port: int = 0) -> tuple[int, str, str]:
    """Run ``lorasweep-trainer train``; while it runs, scrape its metrics endpoint when a port is given."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lorasweep_trainer.cli", "train"],
        env={**os.environ, **env, "LORASWEEP_TERMINATION_LOG": str(termination)},
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr or []), daemon=True)
    reader.start()
    scraped = ""
    while process.poll() is None:
        if metrics_port:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
                    text = response.read().decode()
                if "lorasweep_trainer_optimizer_steps_total{" in text:
                    scraped = text
            except OSError:
                pass
        time.sleep(0.2)
    reader.join(timeout=10)
    return process.returncode, "".join(stderr_lines), scraped


@pytest.fixture(scope="module")
def trial(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrialRun]:
    bucket = "trainer-trial"
    s3_server.client().create_bucket(Bucket=bucket)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env.items():
            patch.setenv(key, value)
        storage.reset_client()
        yield run_trial(s3_server, bucket, tmp_path_factory)
    storage.reset_client()


def run_trial(s3_server, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> TrialRun:
    spec = SynthSpec(actions=(1, 2, 3, 4, 6), clips_per_action=VIDEOS_PER_CLASS, frames=8, corrupt=1, seed=SEED)
    clips = write_dataset(spec, f"s3://{bucket}/nturgbd_rgb/")
    # The synth corrupts the last clip of the first action: a clip of class "left", so it is surely selected.
    corrupt_uri = next(uri for uri in clips if uri.endswith(clip_name(1, VIDEOS_PER_CLASS - 1).filename()))
    output = f"s3://{bucket}/sweeps/team-a/synthetic/trials/lr-0/"
    port = free_port()
    gateway = PushgatewayStandIn()
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    document = trial_document(f"s3://{bucket}/nturgbd_rgb/", output, metricsPort=port)
    env = {
        **s3_server.env,
        "LORASWEEP_TRIAL": json.dumps(document),
        "LORASWEEP_GIT_COMMIT": GIT_COMMIT,
        "PUSHGATEWAY_URL": f"http://127.0.0.1:{gateway.server_address[1]}",
    }
    termination = tmp_path_factory.mktemp("trial") / "termination-log"
    returncode, stderr, scraped = run_trainer(env, termination, metrics_port=port)
    gateway.shutdown()
    return TrialRun(
        bucket=bucket,
        output=output,
        returncode=returncode,
        stderr=stderr,
        termination=termination.read_text() if termination.exists() else "",
        scraped=scraped,
        pushes=gateway.pushes,
        corrupt_uri=corrupt_uri,
    )


def test_trial_succeeds_with_a_parseable_termination_message(trial: TrialRun) -> None:
    assert trial.returncode == 0, trial.stderr[-4000:]
    assert len(trial.termination.encode()) < 4096
    summary = TerminationSummary.decode(trial.termination)
    assert summary.status == "Succeeded" and summary.trial == "lr-0"
    assert summary.metrics_uri == f"{trial.output}metrics.json"
    assert set(summary.metrics) >= {"val_accuracy", "test_accuracy", "trainable_parameters", "inference_ms_per_video"}


def test_metrics_json_is_complete_and_learns(trial: TrialRun) -> None:
    assert trial.returncode == 0, trial.stderr[-4000:]
    metrics = TrialMetrics.model_validate_json(storage.read_bytes(f"{trial.output}metrics.json"))
    assert metrics.classes == list(CLASSES)
    assert (metrics.sweep, metrics.trial, metrics.group, metrics.variant) == (
        "synthetic",
        "lr-0",
        "learning-rate",
        "learningRate=1e-2",
    )
    assert metrics.params.seed == SEED and metrics.params.learning_rate == 0.01 and metrics.params.frames_per_clip == 8
    # 4 classes x 24 clips at 70/15/15 with cumulative rounding.
    assert (metrics.dataset.train, metrics.dataset.val, metrics.dataset.test) == (67, 14, 15)
    assert {part: len(keys) for part, keys in metrics.split.items()} == {"train": 67, "val": 14, "test": 15}
    assert [e.epoch for e in metrics.epochs] == list(range(1, 9))
    best = max(metrics.epochs, key=lambda e: (e.val_accuracy, -e.epoch))
    assert metrics.best_epoch == best.epoch and metrics.val_accuracy == best.val_accuracy
    # Chance is 0.25; the synthetic motions are easy enough that every seed tried clears 0.8.
    assert metrics.test_accuracy >= 0.6, metrics.epochs
    assert sum(map(sum, metrics.confusion_matrix)) == len(metrics.test_predictions)
    assert sum(item.support for item in metrics.per_class.values()) == len(metrics.test_predictions)
    assert 0 < metrics.trainable_parameters < metrics.total_parameters
    assert metrics.inference_ms_per_video > 0 and metrics.train_seconds > 0
    assert metrics.git_commit == GIT_COMMIT and metrics.device.startswith("cpu") and metrics.model == "preset:tiny"
    assert metrics.started_at <= metrics.finished_at


def test_corrupt_clip_is_skipped_counted_and_listed(trial: TrialRun) -> None:
    assert trial.returncode == 0, trial.stderr[-4000:]
    metrics = TrialMetrics.model_validate_json(storage.read_bytes(f"{trial.output}metrics.json"))
    assert metrics.corrupt_clips == [trial.corrupt_uri]
    assert any(trial.corrupt_uri in keys for keys in metrics.split.values())
    assert trial.corrupt_uri not in metrics.test_predictions
    assert f"clip undecodable, skipped uri={trial.corrupt_uri}" in trial.stderr
    events = [json.loads(line) for line in storage.read_bytes(f"{trial.output}train.jsonl").decode().splitlines()]
    assert [e["uri"] for e in events if e["event"] == "corrupt_clip"] == [trial.corrupt_uri]
    assert {e["event"] for e in events} >= {"dataset", "step", "epoch", "test"}
    pushed = "\n".join(body for _path, body in trial.pushes)
    assert "lorasweep_trainer_decode_failures_total{" in pushed
    failures = [line for line in pushed.splitlines() if line.startswith("lorasweep_trainer_decode_failures_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in failures) == 1.0


def test_every_artifact_is_in_object_storage(trial: TrialRun) -> None:
    assert trial.returncode == 0, trial.stderr[-4000:]
    names = {item.uri.removeprefix(trial.output) for item in storage.list_objects(trial.output)}
    assert names >= {
        "metrics.json",
        "confusion_matrix.png",
        "confusion_matrix.json",
        "train.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/lorasweep_adapter.json",
        "adapter/video_preprocessor_config.json",
    }
    assert storage.read_bytes(f"{trial.output}confusion_matrix.png").startswith(b"\x89PNG")
    matrix = json.loads(storage.read_bytes(f"{trial.output}confusion_matrix.json"))
    metrics = json.loads(storage.read_bytes(f"{trial.output}metrics.json"))
    assert matrix["matrix"] == metrics["confusion_matrix"] and matrix["classes"] == metrics["classes"]
    assert metrics["schema"] == "lorasweep.metrics/v1"


def test_prometheus_endpoint_and_push_carry_the_documented_metrics(trial: TrialRun) -> None:
    assert trial.returncode == 0, trial.stderr[-4000:]
    labels = 'namespace="team-a",sweep="synthetic",trial="lr-0"'
    assert f"lorasweep_trainer_optimizer_steps_total{{{labels}}}" in trial.scraped
    assert len(trial.pushes) == 1
    path, pushed = trial.pushes[0]
    assert path == "/metrics/job/lorasweep-trainer/namespace/team-a/sweep/synthetic/trial/lr-0"
    # 67 train clips minus at most one corrupt one, batch 4, 8 epochs: 17 optimizer steps per epoch.
    assert f"lorasweep_trainer_optimizer_steps_total{{{labels}}} 136.0" in pushed
    documented = Path(__file__).parents[2] / "trainer" / "lorasweep_trainer" / "telemetry.py"
    for line in pushed.splitlines():
        if line.startswith("lorasweep_trainer_"):
            family = line.split("{", 1)[0].removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            family = family.removesuffix("_created")
            assert family.removesuffix("_total") in documented.read_text(), family


def test_reloaded_adapter_reproduces_test_predictions(trial: TrialRun, tmp_path: Path) -> None:
    assert trial.returncode == 0, trial.stderr[-4000:]
    from peft import PeftModel

    from lorasweep_trainer import model as modeling
    from lorasweep_trainer.config import TrialConfig
    from lorasweep_trainer.data import Sample
    from lorasweep_trainer.evaluate import predict
    from lorasweep_trainer.telemetry import Telemetry
    from lorasweep_trainer.video import ClipLoader, batches

    adapter = tmp_path / "adapter"
    for item in storage.list_objects(f"{trial.output}adapter/"):
        target = adapter / item.uri.removeprefix(f"{trial.output}adapter/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(item.uri))
    metrics = TrialMetrics.model_validate_json(storage.read_bytes(f"{trial.output}metrics.json"))
    cfg = TrialConfig.model_validate(trial_document("unused", "unused"))
    base = modeling.build_base_model(cfg.model, metrics.classes, cfg.seed)
    reloaded = PeftModel.from_pretrained(base, str(adapter))
    loader = ClipLoader(modeling.build_processor(base.config), 8, Telemetry("n", "s", "t"), prefetch=2, io_threads=2)
    samples = [Sample(uri, 0) for uri in metrics.test_predictions]
    try:
        clips = batches(loader.iterate(samples, "test"), 4, lambda clip: None)
        predictions = predict(reloaded, lambda pixels: reloaded(pixel_values_videos=pixels).logits, clips, torch_cpu())
    finally:
        loader.close()
    assert {
        uri: metrics.classes[p] for uri, p in zip(predictions.uris, predictions.predicted, strict=True)
    } == metrics.test_predictions


def torch_cpu():  # noqa: ANN201 - keeps torch out of this module's import time
    import torch

    return torch.device("cpu")


def test_invalid_config_exits_2_naming_the_field(s3_server, tmp_path: Path) -> None:
    document = trial_document("s3://nowhere/ntu/", "s3://nowhere/out/")
    document["training"] = {"lora": {"rank": 0}}
    termination = tmp_path / "termination-log"
    returncode, stderr, _ = run_trainer({**s3_server.env, "LORASWEEP_TRIAL": json.dumps(document)}, termination)
    assert returncode == 2, stderr
    summary = TerminationSummary.decode(termination.read_text())
    assert summary.status == "Failed" and summary.reason == "InvalidConfig" and summary.trial == "lr-0"
    assert "training.lora.rank: Input should be greater than or equal to 1 (got 0)" in (summary.message or "")


def test_dataset_missing_a_class_exits_3(monkeypatched_s3_env, s3_server, s3_bucket: str, tmp_path: Path) -> None:
    storage.reset_client()
    write_dataset(SynthSpec(actions=(1, 2, 4), clips_per_action=4, frames=4), f"s3://{s3_bucket}/ntu/")
    document = trial_document(f"s3://{s3_bucket}/ntu/", f"s3://{s3_bucket}/out/")
    termination = tmp_path / "termination-log"
    returncode, stderr, _ = run_trainer({**s3_server.env, "LORASWEEP_TRIAL": json.dumps(document)}, termination)
    assert returncode == 3, stderr[-4000:]
    summary = TerminationSummary.decode(termination.read_text())
    assert summary.status == "Failed" and summary.reason == "DatasetUnusable"
    assert "no clips for class(es) ['down']" in (summary.message or "")
    assert not list(storage.list_objects(f"s3://{s3_bucket}/out/"))


def test_too_many_corrupt_clips_exit_3_and_keep_the_event_log(
    monkeypatched_s3_env, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.reset_client()
    write_dataset(SynthSpec(actions=(1, 2, 3, 4), clips_per_action=6, frames=8, corrupt=6), f"s3://{s3_bucket}/ntu/")
    document = trial_document(f"s3://{s3_bucket}/ntu/", f"s3://{s3_bucket}/out/")
    document["dataset"] = dict(document["dataset"], videosPerClass=6, classes={"a": [1], "b": [2], "c": [3], "d": [4]})
    monkeypatch.setenv("LORASWEEP_TRIAL", json.dumps(document))
    monkeypatch.setenv("LORASWEEP_TERMINATION_LOG", str(tmp_path / "termination-log"))
    from lorasweep_trainer import cli

    assert cli.main(["train"]) == 3
    summary = TerminationSummary.decode((tmp_path / "termination-log").read_text())
    assert summary.reason == "DatasetUnusable" and "more than dataset.maxCorruptFraction=0.1" in (summary.message or "")
    names = [item.name for item in storage.list_objects(f"s3://{s3_bucket}/out/")]
    assert names == ["train.jsonl"]  # the log survives; no metrics.json, so nobody reads the trial as complete
    events = [
        json.loads(line) for line in storage.read_bytes(f"s3://{s3_bucket}/out/train.jsonl").decode().splitlines()
    ]
    assert sum(event["event"] == "corrupt_clip" for event in events) == 3  # 3 of 24 is past 10%


def test_missing_dataset_bucket_exits_3(
    monkeypatched_s3_env, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.reset_client()
    document = trial_document(f"s3://{s3_bucket}-missing/ntu/", f"s3://{s3_bucket}/out/")
    monkeypatch.setenv("LORASWEEP_TRIAL", json.dumps(document))
    monkeypatch.setenv("LORASWEEP_TERMINATION_LOG", str(tmp_path / "termination-log"))
    from lorasweep_trainer import cli

    assert cli.main(["train"]) == 3  # a retry cannot make the bucket appear
    summary = TerminationSummary.decode((tmp_path / "termination-log").read_text())
    assert summary.reason == "DatasetUnusable" and f"bucket '{s3_bucket}-missing'" in (summary.message or "")
