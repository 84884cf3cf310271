"""The model from where the cluster has it (lorasweep_trainer.weights), on the S3-protocol server (moto over HTTP):
a tiny V-JEPA2 ``save_pretrained`` folder in a bucket is fetched once by the preparation into the cache and loaded
by a trial with ``HF_HUB_OFFLINE=1`` (requests counted through a proxy in front of the server); a partial model
fails with ModelUnavailable; a corrupt cached file is detected (by the trial) and replaced (by the next
preparation); a volume folder is verified in place; a hub name is pinned to the commit its revision names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fault_proxy import FaultProxy
from lorasweep_trainer import bench, cli, storage, weights
from lorasweep_trainer.config import EXIT_INVALID_CONFIG, EXIT_SUCCEEDED, ModelConfig, ModelWeights
from lorasweep_trainer.results import PrepareSummary, TrialMetrics
from lorasweep_trainer.synth import SynthSpec, write_dataset
from tiny_model import save_tiny_model, upload

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CLASSES = {"left": [1], "up": [2], "other": "rest"}
COMMIT = "4f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    save_tiny_model(folder)
    return folder


@pytest.fixture
def s3_env(monkeypatched_s3_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv(weights.MODEL_DIR_ENV, str(tmp_path / "models"))
    storage.reset_client()
    yield monkeypatched_s3_env
    storage.reset_client()


def run(command: str, env: dict[str, str], document: dict[str, Any], termination: Path) -> tuple[int, str]:
    """``lorasweep-trainer train|prepare`` in a child process with the hub switched off."""
    variable = "LORASWEEP_TRIAL" if command == "train" else "LORASWEEP_PREPARE"
    result = subprocess.run(
        [str(BIN / "lorasweep-trainer"), command],
        env={**os.environ, **env, variable: json.dumps(document), "LORASWEEP_TERMINATION_LOG": str(termination),
             "HF_HUB_OFFLINE": "1", "HF_HOME": str(termination.parent / "hf")},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    return result.returncode, result.stderr


def test_a_folder_in_s3_is_fetched_once_into_the_cache_and_a_trial_loads_it_offline(
    s3_server: Any, s3_bucket: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = s3_server.client()
    upload(client, checkpoint, s3_bucket, "models/tiny/")
    env = {**s3_server.env}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        storage.reset_client()
        write_dataset(SynthSpec(actions=(1, 2, 3), clips_per_action=4, frames=12, seed=5), f"s3://{s3_bucket}/clips/")
    storage.reset_client()
    model = {"source": f"s3://{s3_bucket}/models/tiny/", "framesPerClip": 4}
    dataset = {"source": f"s3://{s3_bucket}/clips/", "classes": CLASSES, "videosPerClass": 4, "seed": 7}
    cache_uri = f"s3://{s3_bucket}/cache/"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        env["AWS_ENDPOINT_URL_S3"] = proxy.url
        prepare = {"sweep": "s", "model": model, "dataset": dataset, "seeds": [42], "epochs": 1,
                   "cache": {"uri": cache_uri, "features": True}, "ioThreads": 2}  # fmt: skip
        code, stderr = run("prepare", {**env, weights.MODEL_DIR_ENV: str(tmp_path / "prep")}, prepare, tmp_path / "p")
        assert code == EXIT_SUCCEEDED, stderr[-3000:]
        summary = PrepareSummary.model_validate_json((tmp_path / "p").read_text())
        assert summary.weights is not None and summary.weights.revision.startswith("sha256:")
        sizes = {path.name: path.stat().st_size for path in checkpoint.iterdir()}
        assert summary.stats["model_files"] == len(sizes) == 3
        assert summary.stats["model_bytes_fetched"] == sum(sizes.values()) and summary.stats["model_reused"] == 0
        source_gets = proxy.count("GET", path=f"/{s3_bucket}/models/tiny/")
        assert source_gets == 3  # each file once
        entry = summary.weights.uri.removeprefix(f"s3://{s3_bucket}")
        assert proxy.count("GET", path=entry) == 0  # the preparation wrote the entry; it read the source

        trial = {"sweep": "s", "trial": "t-0", "model": model, "dataset": dataset, "seed": 42, "metricsPort": 0,
                 "training": {"epochs": 1, "batchSize": 2, "gradientAccumulationSteps": 1, "learningRate": 0.01},
                 "output": f"s3://{s3_bucket}/out/t-0/", "ioThreads": 2,
                 "cache": {"uri": cache_uri, "features": True},
                 "weights": summary.weights.model_dump(by_alias=True)}  # fmt: skip
        code, stderr = run("train", {**env, weights.MODEL_DIR_ENV: str(tmp_path / "trial")}, trial, tmp_path / "t")
        assert code == EXIT_SUCCEEDED, stderr[-3000:]
        assert proxy.count("GET", path=f"/{s3_bucket}/models/tiny/") == source_gets  # not one more from the source
        assert proxy.count("GET", path=entry) == 3  # the trial's files came from the cache
    metrics = TrialMetrics.model_validate_json(
        client.get_object(Bucket=s3_bucket, Key="out/t-0/metrics.json")["Body"].read()
    )
    assert metrics.model == model["source"] and metrics.model_revision == summary.weights.revision
    assert metrics.cache is not None and metrics.cache["decodes"] == 0  # the features of the fetched encoder matched
    assert metrics.model_load is not None and metrics.model_load.bytes_fetched == sum(sizes.values())
    assert metrics.model_load.path == str(tmp_path / "trial" / Path(summary.weights.uri.rstrip("/")).name)
    print(f"\nmodel_load {metrics.model_load.model_dump()}")  # the figures for the record (pytest -s)
    info = json.loads(client.get_object(Bucket=s3_bucket, Key="out/t-0/adapter/lorasweep_adapter.json")["Body"].read())
    assert (info["base"]["name_or_path"], info["base"]["revision"]) == (model["source"], summary.weights.revision)

    # predict rebuilds that base from its s3:// source (fetched to local disk, its digest checked) and reproduces
    # the trial's test predictions.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env.items():
            patch.setenv(key, value)
        patch.setenv(weights.MODEL_DIR_ENV, str(tmp_path / "predict"))
        storage.reset_client()
        adapter, clips = f"s3://{s3_bucket}/out/t-0/adapter/", f"s3://{s3_bucket}/clips/"
        capsys.readouterr()  # only predict's output below
        code = cli.main(["predict", "--adapter", adapter, "--clips", clips, "--json", "--device", "cpu"])
        printed = json.loads(capsys.readouterr().out)
    storage.reset_client()
    assert code == EXIT_SUCCEEDED
    by_clip = {row["clip"].rsplit("/", 1)[-1]: row["predicted"] for row in printed["predictions"]}
    assert metrics.test_predictions
    assert all(by_clip[Path(clip).name] == c for clip, c in metrics.test_predictions.items())


def test_a_model_without_its_weights_fails_with_model_unavailable(
    s3_env: Any, s3_bucket: str, checkpoint: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(checkpoint, partial)
    (partial / "model.safetensors").unlink()
    upload(s3_env.client(), partial, s3_bucket, "models/partial/")
    model = {"source": f"s3://{s3_bucket}/models/partial/", "framesPerClip": 4}
    prepare = {"sweep": "s", "model": model, "dataset": {"source": f"s3://{s3_bucket}/clips/"}, "shards": False,
               "cache": {"uri": f"s3://{s3_bucket}/cache/"}}  # fmt: skip
    code, stderr = run("prepare", s3_env.env, prepare, tmp_path / "termination")
    assert code == EXIT_INVALID_CONFIG, stderr[-3000:]
    failed = PrepareSummary.model_validate_json((tmp_path / "termination").read_text())
    assert (failed.status, failed.reason) == ("Failed", "ModelUnavailable")
    assert "no weight file (model.safetensors" in failed.message and "save_pretrained checkpoint" in failed.message
    # A trial started without a preparation reads the source itself, and says the same.
    with pytest.raises(weights.ModelUnavailable, match="no weight file"):
        weights.locate(ModelConfig.model_validate(model), None)
    missing = ModelConfig(source=f"s3://{s3_bucket}/models/absent/")
    with pytest.raises(weights.ModelUnavailable, match="no model files there"):
        weights.prepare(missing, f"s3://{s3_bucket}/cache/")
    (partial / "config.json").unlink()
    with pytest.raises(weights.ModelUnavailable, match="no config.json"):
        weights.locate(ModelConfig(source=str(partial)), None)


def test_a_corrupt_cached_file_is_detected_by_the_trial_and_replaced_by_the_next_preparation(
    s3_env: Any, s3_bucket: str, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = s3_env.client()
    upload(client, checkpoint, s3_bucket, "models/tiny/")
    model = ModelConfig(source=f"s3://{s3_bucket}/models/tiny/")
    cache_uri = f"s3://{s3_bucket}/cache/"
    pinned, _ = weights.prepare(model, cache_uri)
    again, located = weights.prepare(model, cache_uri)  # a second sweep of the same model: reused, verified
    assert again == pinned and located.stats.reused and located.stats.bytes_fetched == 0

    key = f"{pinned.uri.removeprefix(f's3://{s3_bucket}/')}model.safetensors"
    original = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    flipped = bytes([original[-1] ^ 0xFF])
    client.put_object(Bucket=s3_bucket, Key=key, Body=original[:-1] + flipped)  # same size, one byte changed
    monkeypatch.setenv(weights.MODEL_DIR_ENV, str(tmp_path / "fresh-pod"))
    with pytest.raises(weights.ModelUnavailable, match="model.safetensors in .* failed its checksum"):
        weights.locate(model, pinned)
    assert not (tmp_path / "fresh-pod" / Path(pinned.uri.rstrip("/")).name / "model.safetensors").exists()

    monkeypatch.setenv(weights.MODEL_DIR_ENV, str(tmp_path / "next-preparation"))
    repaired, located = weights.prepare(model, cache_uri)
    assert repaired == pinned and not located.stats.reused and located.stats.rejected == 1
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == original
    assert weights.locate(model, pinned).revision == pinned.revision


def test_a_volume_folder_is_verified_in_place_and_read_directly(
    s3_env: Any, s3_bucket: str, checkpoint: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume" / "vjepa2"
    shutil.copytree(checkpoint, volume)
    model = ModelConfig(source=str(volume))
    pinned, located = weights.prepare(model, f"s3://{s3_bucket}/cache/")
    assert pinned.uri == str(volume) and located.path == str(volume) and located.stats.bytes_fetched == 0
    assert pinned.manifest.startswith(f"s3://{s3_bucket}/cache/models/") and pinned.revision.startswith("sha256:")
    found = weights.locate(model, pinned)
    assert found.path == str(volume) and found.revision == pinned.revision and found.stats.bytes_fetched == 0
    # The same bytes elsewhere are the same revision.
    copy = tmp_path / "other-volume"
    shutil.copytree(checkpoint, copy)
    assert weights.prepare(ModelConfig(source=str(copy)), f"s3://{s3_bucket}/cache/")[0].revision == pinned.revision
    with (volume / "model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(weights.ModelUnavailable, match="the folder changed during the sweep"):
        weights.locate(model, pinned)
    (volume / "config.json").unlink()
    with pytest.raises(weights.ModelUnavailable, match="no config.json"):
        weights.prepare(model, f"s3://{s3_bucket}/cache/")


def test_a_hub_revision_is_resolved_to_its_commit_and_the_trials_load_that_commit_from_the_cache(
    s3_env: Any, s3_bucket: str, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # The pod's Hugging Face cache, filled beforehand (HF_HUB_OFFLINE=1): refs/main names the commit.
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--lorasweep--tiny-vjepa2"
    shutil.copytree(checkpoint, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    cache_uri = f"s3://{s3_bucket}/cache/"
    model = ModelConfig(source="lorasweep/tiny-vjepa2", revision="main")
    assert weights.resolve_hub_revision(model) == COMMIT
    pinned, located = weights.prepare(model, cache_uri)
    assert pinned.revision == COMMIT and located.stats.files == 3
    assert pinned.uri == weights.entry_uri(cache_uri, weights.cache_key(model.source, COMMIT))[0]
    assert weights.prepare(ModelConfig(source="lorasweep/tiny-vjepa2"), cache_uri)[0] == pinned  # main by default
    shutil.rmtree(hub)  # the trials need no hub cache: they load the commit from the sweep's cache
    found = weights.locate(model, pinned)
    assert found.revision == COMMIT and sorted(os.listdir(found.path)) == sorted(os.listdir(checkpoint))
    with pytest.raises(weights.ModelUnavailable, match="revision 'v2' could not be resolved"):
        weights.prepare(ModelConfig(source="lorasweep/tiny-vjepa2", revision="v2"), cache_uri)
    # The pinned revision is checked: a trial told another commit than the cache holds fails.
    other = ModelWeights(uri=pinned.uri, manifest=pinned.manifest, revision="f" * 40)
    with pytest.raises(weights.ModelUnavailable, match="not f{40} that the sweep pinned"):
        weights.locate(model, other)


def test_the_weights_benchmark_times_each_step_a_sweep_takes(
    s3_env: Any, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.bench_weights("tiny", s3_bucket)
    printed = capsys.readouterr().out
    steps = ("preparation: copy into the cache", "trial: download from the cache", "trial: files already on its disk",
             "from_pretrained of the local copy", "encoder digest", "base digest given the encoder's")  # fmt: skip
    fetched = {}
    for step in steps:
        (line,) = [line for line in printed.splitlines() if step in line]
        assert re.search(r"\s\d+\.\d\d s\b", line), line  # seconds, printed for the record
        if found := re.search(r"([\d.]+) MB fetched", line):
            fetched[step] = float(found.group(1))
    (total,) = re.findall(r"files, ([\d.]+) MB, from", printed)
    # The trial's download is timed on its own disk, not over the files the preparation left there.
    assert fetched == {steps[0]: float(total), steps[1]: float(total), steps[2]: 0.0}
    assert f"from s3://{s3_bucket}/models/tiny/" in printed
