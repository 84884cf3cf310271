"""The sweep's shared work done once (issue: decode once, feature cache): the preparation step and trials
reading its cache, on synthetic NTU clips in the S3-protocol server (moto over HTTP), the tiny V-JEPA2 on CPU.

Trials run in this process (`train.run_trial`), which keeps the many runs here cheap; the cache, the dataset
and the decoder worker processes are the real ones.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorasweep_trainer import cache, storage
from lorasweep_trainer.config import PACK_ENV, TERMINATION_LOG_ENV, CacheConfig, PrepareConfig, TrialConfig
from lorasweep_trainer.prepare import prepare
from lorasweep_trainer.results import PackSummary, TrialMetrics
from lorasweep_trainer.synth import SynthSpec, write_dataset
from lorasweep_trainer.train import run_trial

pytestmark = pytest.mark.integration

CLASSES = {"left": [1], "up": [2], "down": [3], "other": "rest"}
EPOCHS = 2
# Float tolerance between the cached and the streamed paths: the encoder runs batched in the preparation and
# per training batch in a streamed trial, so sums may be reassociated; observed differences are below 1e-6.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def bucket(s3_server: Any) -> Iterator[str]:
    name = "cache-suite"
    s3_server.client().create_bucket(Bucket=name)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env.items():
            patch.setenv(key, value)
        storage.reset_client()
        write_dataset(SynthSpec(actions=(1, 2, 3, 4), clips_per_action=10, frames=16, seed=3), f"s3://{name}/clips/")
        yield name
    storage.reset_client()


def trial(bucket: str, name: str, cache_uri: str | None = None, features: bool = False, **changes: Any) -> TrialConfig:
    training: dict[str, Any] = {"epochs": EPOCHS, "batchSize": 4, "gradientAccumulationSteps": 1, "learningRate": 0.01}
    if "lora" in changes:
        training["lora"] = changes.pop("lora")
    document: dict[str, Any] = {
        "namespace": "ns",
        "sweep": "cached",
        "trial": name,
        "model": {"preset": "tiny", "framesPerClip": changes.pop("frames_per_clip", 8)},
        "dataset": {"source": f"s3://{bucket}/clips/", "classes": CLASSES, "videosPerClass": 8, "seed": 7},
        "training": training,
        "seed": 42,
        "output": f"s3://{bucket}/out/{name}/",
        "metricsPort": 0,
        "ioThreads": 2,
        **changes,
    }
    if cache_uri is not None:
        document["cache"] = {"uri": cache_uri, "features": features}
    return TrialConfig.model_validate(document)


def preparation(bucket: str, cache_uri: str, **changes: Any) -> PrepareConfig:
    base = trial(bucket, "prepare")
    return PrepareConfig(
        sweep="cached",
        model=base.model,
        dataset=base.dataset,
        seeds=(42,),
        epochs=EPOCHS,
        cache=CacheConfig(uri=cache_uri, features=True),
        frames=True,
        io_threads=2,
        **changes,
    )


def run(cfg: TrialConfig, tmp_path: Path) -> TrialMetrics:
    work = tmp_path / cfg.trial
    work.mkdir()
    return run_trial(cfg, work)


def same_results(a: TrialMetrics, b: TrialMetrics) -> None:
    assert len(a.epochs) == len(b.epochs)
    for x, y in zip(a.epochs, b.epochs, strict=True):
        assert math.isclose(x.train_loss, y.train_loss, rel_tol=TOLERANCE), (a.epochs, b.epochs)
        assert x.train_accuracy == y.train_accuracy and x.val_accuracy == y.val_accuracy
        assert x.val_loss is not None and y.val_loss is not None
        assert math.isclose(x.val_loss, y.val_loss, rel_tol=TOLERANCE)
    assert a.test_predictions == b.test_predictions and a.test_accuracy == b.test_accuracy


@pytest.fixture(scope="module")
def prepared(bucket: str) -> tuple[str, cache.CacheStats]:
    cache_uri = f"s3://{bucket}/ns/cache/"
    summary = prepare(preparation(bucket, cache_uri))
    return cache_uri, cache.CacheStats(**summary.stats)


@pytest.fixture(scope="module")
def streamed(bucket: str, tmp_path_factory: pytest.TempPathFactory) -> TrialMetrics:
    return run(trial(bucket, "streamed"), tmp_path_factory.mktemp("streamed"))


def test_preparation_decodes_each_clip_once_and_encodes_each_sample_once(prepared: tuple[str, Any]) -> None:
    _, stats = prepared
    train, evaluation = 22, 10  # 4 classes x 8 clips at 70/15/15
    assert stats.decodes == train + evaluation
    assert stats.encoder_forwards == train * EPOCHS + evaluation
    # eval + one training draw per epoch, as features and as frames
    assert (stats.built, stats.hits, stats.rejected) == (2 * (1 + EPOCHS), 0, 0)


def test_cached_frames_and_features_give_the_streamed_results(
    bucket: str, prepared: tuple[str, Any], streamed: TrialMetrics, tmp_path: Path
) -> None:
    cache_uri, _ = prepared
    frames = run(trial(bucket, "frames", cache_uri), tmp_path)
    features = run(trial(bucket, "features", cache_uri, features=True), tmp_path)
    assert streamed.feature_cache is not None and not streamed.feature_cache.used
    assert frames.feature_cache is not None and not frames.feature_cache.used
    assert features.feature_cache is not None and features.feature_cache.used, features.feature_cache
    for cached in (frames, features):
        assert cached.cache is not None and cached.cache["decodes"] == 0 and cached.cache["encoder_forwards"] == 0
        assert cached.cache["hits"] == 1 + EPOCHS and cached.cache["built"] == 0
        same_results(streamed, cached)


def test_a_lora_target_inside_the_encoder_never_uses_features(
    bucket: str, prepared: tuple[str, Any], tmp_path: Path
) -> None:
    cache_uri, _ = prepared
    lora = {"targetModules": ["query", "q_proj"]}
    metrics = run(trial(bucket, "encoder-lora", cache_uri, features=True, lora=lora), tmp_path)
    assert metrics.feature_cache is not None and not metrics.feature_cache.used
    assert "query" in metrics.feature_cache.reason
    # It trained the whole model on the cached frames instead (the frames shards were all hits).
    assert metrics.cache is not None and metrics.cache["hits"] == 1 + EPOCHS and metrics.cache["encoder_forwards"] == 0


def test_a_changed_frame_count_or_seed_reads_no_stale_entry(
    bucket: str, prepared: tuple[str, Any], tmp_path: Path
) -> None:
    cache_uri, _ = prepared
    for name, changes in {"four-frames": {"frames_per_clip": 4}, "other-seed": {"seed": 7}}.items():
        cached = run(trial(bucket, f"{name}-cached", cache_uri, features=True, **changes), tmp_path)
        assert cached.cache is not None and cached.cache["hits"] == 0, (name, cached.cache)
        assert cached.cache["built"] == 1 + EPOCHS  # built by the trial itself, from the source clips
        same_results(run(trial(bucket, f"{name}-streamed", **changes), tmp_path), cached)


def test_a_corrupt_shard_fails_its_checksum_and_is_rebuilt(
    bucket: str, s3_server: Any, prepared: tuple[str, Any], streamed: TrialMetrics, tmp_path: Path
) -> None:
    cache_uri, _ = prepared
    client = s3_server.client()
    # The preparation's shard: the oldest one (other tests add shards for other frame counts and seeds).
    listed = client.list_objects_v2(Bucket=bucket, Prefix="ns/cache/features/train-seed42-epoch1-")["Contents"]
    shards = [item["Key"] for item in sorted(listed, key=lambda item: item["LastModified"])]
    shards = [key for key in shards if key.endswith(".safetensors")][:1]
    original = client.get_object(Bucket=bucket, Key=shards[0])["Body"].read()
    client.put_object(Bucket=bucket, Key=shards[0], Body=original[: len(original) // 2])  # truncated
    metrics = run(trial(bucket, "after-corruption", cache_uri, features=True), tmp_path)
    assert metrics.cache is not None and (metrics.cache["rejected"], metrics.cache["built"]) == (1, 1)
    same_results(streamed, metrics)
    rebuilt = client.get_object(Bucket=bucket, Key=shards[0])["Body"].read()
    assert rebuilt == original  # the same bytes again: the trial rewrote the shard it rebuilt


def test_a_second_preparation_reuses_every_shard(bucket: str, prepared: tuple[str, Any]) -> None:
    cache_uri, first = prepared
    again = cache.CacheStats(**prepare(preparation(bucket, cache_uri)).stats)
    assert (again.hits, again.built, again.decodes, again.encoder_forwards) == (first.built, 0, 0, 0)


def test_packed_trials_give_the_results_they_give_alone(
    bucket: str, s3_server: Any, prepared: tuple[str, Any], tmp_path: Path
) -> None:
    """Two trials packed in one `lorasweep-trainer train` process (a forked child each) give what each gives in
    a process of its own: the same epochs, predictions and test accuracy, each in its own metrics.json."""
    cache_uri, _ = prepared
    configs = [
        trial(bucket, f"packed-{i}", cache_uri, features=True, lora={"dropout": dropout})
        for i, dropout in enumerate((0.0, 0.2))
    ]
    alone = [run(cfg.model_copy(update={"trial": f"alone-{cfg.trial}"}), tmp_path) for cfg in configs]
    termination = tmp_path / "pack-termination.json"
    env = {
        **os.environ,
        **s3_server.env,
        PACK_ENV: "[" + ",".join(cfg.model_dump_json(by_alias=True) for cfg in configs) + "]",
        TERMINATION_LOG_ENV: str(termination),
    }
    done = subprocess.run(
        [sys.executable, "-m", "lorasweep_trainer.cli", "train"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = PackSummary.model_validate_json(termination.read_text())
    assert [s.trial for s in summary.pack] == [cfg.trial for cfg in configs]
    for cfg, single in zip(configs, alone, strict=True):
        packed = TrialMetrics.model_validate_json(storage.read_bytes(f"{cfg.output}metrics.json"))
        assert packed.trial == cfg.trial
        same_results(single, packed)
