"""Cache keys (`cache.ShardSpec.key`) cover everything that changes a shard's content, and the feature-cache
rule (`config.feature_cache_blocker`) knows the encoder's module names of every V-JEPA2 size."""

from __future__ import annotations

import pytest

from lorasweep_trainer import cache
from lorasweep_trainer import model as modeling
from lorasweep_trainer.config import ENCODER_MODULE_NAMES, LoraConfig, ModelConfig, feature_cache_blocker
from lorasweep_trainer.data import Sample
from lorasweep_trainer.decode import FrameRequest, train_seed

FRAMES = {"frames_per_clip": "8", "processor": "p" * 64, "sampler": cache.SAMPLER_DIGEST}


def spec(kind: cache.Kind = "features", **changes: object) -> cache.ShardSpec:
    item = cache.Item(
        Sample(str(changes.pop("uri", "s3://b/c.avi")), 0),
        str(changes.pop("etag", "e1")),
        int(str(changes.pop("size", 100))),
        FrameRequest(changes.pop("request", None)),  # type: ignore[arg-type]
    )
    context = {**FRAMES, "encoder": "digest-a", "precision": "fp32", **changes}
    return cache.part_specs(kind, cache.EVAL_PART, [item], context)[0]


def test_the_key_is_stable_and_pinned() -> None:
    assert spec().key == spec().key
    assert len(spec().key) == 64 and spec().name.startswith("features/eval-000-")


@pytest.mark.parametrize(
    "changes",
    [
        {"encoder": "digest-b"},  # another model, revision or preset seed: other weights
        {"precision": "bf16"},
        {"frames_per_clip": "16"},
        {"processor": "q" * 64},  # another crop or resize
        {"sampler": "0" * 16},
        {"etag": "e2"},  # the clip's bytes changed
        {"size": 101},
        {"uri": "s3://b/d.avi"},
        {"request": train_seed(42, 1, "s3://b/c.avi")},  # a training draw, not the evaluation frames
    ],
)
def test_every_input_of_a_shard_changes_its_key(changes: dict[str, object]) -> None:
    assert spec(**changes).key != spec().key


def test_frames_and_features_of_one_part_have_different_keys() -> None:
    assert spec("frames").key != spec("features").key


def test_parts_are_cut_into_chunks() -> None:
    items = [cache.Item(Sample(f"u{i}", 0), "e", 1, FrameRequest()) for i in range(cache.CHUNK_CLIPS + 1)]
    specs = cache.part_specs("frames", cache.EVAL_PART, items, FRAMES)
    assert [len(s.items) for s in specs] == [cache.CHUNK_CLIPS, 1] and specs[0].key != specs[1].key


@pytest.mark.parametrize("preset", ["tiny", "vjepa2-vitl-256"])
def test_the_encoder_module_names_are_those_of_the_real_model(preset: str) -> None:
    base = modeling.build_base_model(ModelConfig(preset=preset), ["a", "b"], 0, device="meta")
    names = {name for name in modeling.encoder_module_names(base) if not name.isdigit()}
    assert names == ENCODER_MODULE_NAMES


def test_lora_inside_the_encoder_blocks_the_feature_cache() -> None:
    assert feature_cache_blocker(LoraConfig()) is None  # the reference: the pooler's q/k/v/out_proj
    for inside in (("query",), ("q_proj", "value"), ("fc1",), ("proj",)):
        reason = feature_cache_blocker(LoraConfig(target_modules=inside))
        assert reason is not None and "inside the encoder" in reason


def test_a_random_encoder_blocks_the_feature_cache() -> None:
    base = modeling.build_base_model(ModelConfig(preset="tiny"), ["a", "b"], 0, device="meta")
    assert modeling.feature_cache_blocker(base, LoraConfig()) is None
    base.config.drop_path_rate = 0.1
    assert "random while training" in (modeling.feature_cache_blocker(base, LoraConfig()) or "")
