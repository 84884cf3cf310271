"""The pure parts of fetching the model (lorasweep_trainer.weights, config.ModelConfig): what model.source means,
when a folder is a complete checkpoint, how cache entries of model files are keyed, and how the revision the
preparation resolved is pinned into every trial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lorasweep_operator import planning, preparation, rendering
from lorasweep_operator.spec import LoraSweepStatus, PodOverrides, load_sweep_file, parse_spec
from lorasweep_trainer import weights
from lorasweep_trainer.config import ModelConfig, ModelWeights, TrialConfig, model_identity, model_source_kind
from lorasweep_trainer.results import PrepareSummary

PHASE1 = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "phase1-sweep.yaml"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NOW = "2026-01-01T00:00:00Z"


# --- model.source -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("facebook/vjepa2-vitl-fpc16-256-ssv2", "hub"),
        ("gpt2", "hub"),
        ("s3://models/vjepa2-vitl/", "s3"),
        ("/mnt/models/vjepa2", "volume"),
    ],
)
def test_a_source_is_a_hub_name_an_s3_prefix_or_an_absolute_path(source: str, kind: str) -> None:
    assert model_source_kind(source) == kind
    assert ModelConfig(source=source).source_kind == kind


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "facebook/vjepa2"}, "model.name was renamed to model.source: write model.source"),
        ({"source": "checkpoints/../vjepa2"}, "is neither a hub name"),
        ({"source": "./vjepa2"}, "is neither a hub name"),
        ({"source": "s3:///prefix/"}, "names no bucket"),
        ({"source": "s3://models/vjepa2/", "revision": "main"}, "model.revision applies to hub names only"),
        ({"source": "/models/vjepa2", "revision": COMMIT}, "model.revision applies to hub names only"),
    ],
)
def test_a_source_that_means_nothing_is_refused_saying_what_to_write(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.model_validate(model)


def test_presets_fetch_nothing_and_every_other_model_is_fetched() -> None:
    assert not ModelConfig(preset="tiny").fetched
    assert ModelConfig().fetched and ModelConfig(source="s3://m/v/").fetched


def test_model_identity_names_a_preset_and_pins_the_resolved_revision() -> None:
    assert model_identity(ModelConfig(preset="tiny")).source == "preset:tiny"
    assert model_identity(ModelConfig(preset="tiny")).is_preset
    hub = ModelConfig(revision="main")
    assert model_identity(hub).revision == "main"  # not resolved yet: as written
    pinned = ModelWeights(uri="s3://b/c/models/k/", manifest="s3://b/c/models/k.json", revision=COMMIT)
    identity = model_identity(hub, pinned)
    assert (identity.source, identity.revision, identity.is_preset) == (hub.source, COMMIT, False)
    trial = TrialConfig(sweep="s", trial="t", dataset={"source": "/d"}, output="/o/", model=hub, weights=pinned)
    assert trial.model_identity == identity


# --- a complete checkpoint ----------------------------------------------------------------------------------------


def test_a_folder_is_complete_with_its_config_and_weights() -> None:
    assert weights.missing_parts(["config.json", "model.safetensors"]) is None
    assert weights.missing_parts(["model.safetensors"]) == "no config.json"
    assert "no model files there" in (weights.missing_parts([]) or "")
    assert "no weight file" in (weights.missing_parts(["config.json", "pytorch_model.bin"]) or "")
    index = {
        "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    }
    shards = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    assert weights.missing_parts(shards) is None  # the names alone: the index is read once it is local
    assert weights.missing_parts(shards, index) == (
        "missing weight file model-00002-of-00002.safetensors (of 2 shards named by model.safetensors.index.json)"
    )
    assert weights.missing_parts([*shards, "model-00002-of-00002.safetensors"], index) is None
    assert weights.missing_parts(shards, {"weight_map": {}}) == "model.safetensors.index.json names no shard"


def test_only_the_top_level_json_and_safetensors_files_are_taken() -> None:
    taken = [
        n
        for n in ["config.json", "model.safetensors", "README.md", "x.bin", "sub/config.json"]
        if weights.wanted_file(n)
    ]
    assert taken == ["config.json", "model.safetensors"]


# --- cache keys and revisions of model files ------------------------------------------------------------------------


def test_a_cache_entry_is_keyed_by_the_source_and_what_identifies_its_content() -> None:
    files = [["config.json", "etag-1", 700], ["model.safetensors", "etag-2", 1_000_000]]
    key = weights.cache_key("s3://m/tiny/", files)
    assert key == weights.cache_key("s3://m/tiny/", [list(f) for f in files])  # deterministic
    reuploaded = [files[0], ["model.safetensors", "etag-3", 1_000_000]]
    assert len({key, weights.cache_key("s3://m/tiny/", reuploaded), weights.cache_key("s3://m/other/", files)}) == 3
    assert weights.cache_key("org/model", COMMIT) != weights.cache_key("org/model", "f" * 40)
    folder, manifest = weights.entry_uri("s3://b/out/ns/cache/", key)
    assert (folder, manifest) == (f"s3://b/out/ns/cache/models/{key}/", f"s3://b/out/ns/cache/models/{key}.json")


def test_a_folders_revision_is_its_content_wherever_it_is() -> None:
    digests = {"config.json": "a" * 64, "model.safetensors": "b" * 64}
    revision = weights.content_revision(digests)
    assert revision.startswith("sha256:") and len(revision) == len("sha256:") + 64
    assert revision == weights.content_revision(dict(reversed(list(digests.items()))))
    assert revision != weights.content_revision({**digests, "model.safetensors": "c" * 64})
    assert revision != weights.content_revision({"config.json": "a" * 64})


def test_a_manifest_round_trips_and_another_schema_is_no_manifest() -> None:
    files = {"config.json": weights.FileEntry(10, "a" * 64), "model.safetensors": weights.FileEntry(90, "b" * 64)}
    manifest = weights.Manifest("k" * 64, "s3://m/tiny/", "sha256:" + "c" * 64, files, NOW)
    again = weights.Manifest.from_json(manifest.to_json())
    assert again == manifest and again is not None and again.total_bytes == 100
    other = json.loads(manifest.to_json()) | {"schema": "lorasweep.model/v0"}
    assert weights.Manifest.from_json(json.dumps(other)) is None
    assert weights.Manifest.from_json(b"not json") is None


def test_a_full_commit_is_its_own_revision_without_asking_the_hub() -> None:
    assert weights.resolve_hub_revision(ModelConfig(revision=COMMIT)) == COMMIT


# --- the revision pinned into every trial -------------------------------------------------------------------------


def reference() -> tuple[Any, list[planning.PlannedTrial]]:
    manifest = load_sweep_file(PHASE1)
    return manifest.spec, planning.plan(manifest.spec, manifest.name)


def test_a_preparation_runs_for_every_fetched_model_and_only_fetches_for_a_command_of_ones_own() -> None:
    spec, trials = reference()
    assert preparation.needed(spec) and preparation.plan_preparation(spec, "ns", "phase1", trials).config.shards
    own = spec.model_copy(update={"command": ["python", "train.py"]})
    planned = preparation.plan_preparation(own, "ns", "phase1", trials)
    assert preparation.needed(own) and not preparation.wanted(own) and not planned.config.shards
    assert planned.config.model == spec.model
    preset = own.model_copy(update={"model": ModelConfig(preset="tiny")})
    assert not preparation.needed(preset)


def test_the_resolved_revision_reaches_the_status_and_every_trial_config_and_pod() -> None:
    spec, trials = reference()
    prepared = preparation.plan_preparation(spec, "ns", "phase1", trials)
    pinned = ModelWeights(uri="s3://b/ns/cache/models/k/", manifest="s3://b/ns/cache/models/k.json", revision=COMMIT)
    stats = {"hits": 0, "built": 6, "decodes": 12, "model_files": 3, "model_bytes_fetched": 1500, "model_reused": 0}
    summary = preparation.summary_of(
        PrepareSummary(status="Succeeded", features=True, stats=stats, weights=pinned).encode()
    )
    state = preparation.observe(prepared, None, "Succeeded", None, None, summary)
    assert state.weights == pinned
    status = preparation.apply(LoraSweepStatus(phase="Running"), state, NOW)
    ready = status.condition("CacheReady")
    assert ready is not None and f"model at revision {COMMIT}: 3 files, 1500 bytes fetched" in ready.message
    assert LoraSweepStatus.model_validate(status.to_patch()).preparation == state  # through the API and back
    for trial in trials[:3]:
        job = rendering.render_job(spec, "ns", "phase1", "uid", trial, weights=state.weights)
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        config = TrialConfig.model_validate_json(env["LORASWEEP_TRIAL"])
        assert config.weights == pinned and config.model_identity.revision == COMMIT
        assert env["HF_HUB_OFFLINE"] == "1"  # the trial never needs the hub
    packed = spec.model_copy(update={"packing": 2})
    members = [t for t in planning.plan(packed, "phase1") if t.job_name == planning.plan(packed, "phase1")[0].job_name]
    pack = rendering.render_pack_job(packed, "ns", "phase1", "uid", members, weights=pinned)
    env = {e["name"]: e.get("value") for e in pack["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {TrialConfig.model_validate(c).weights for c in json.loads(env["LORASWEEP_PACK"])} == {pinned}
    # A sweep that sets HF_HUB_OFFLINE itself (spec.pod.env) gets its own value, and no second one.
    own = spec.model_copy(update={"pod": PodOverrides(env=[{"name": "HF_HUB_OFFLINE", "value": "0"}])})
    job = rendering.render_job(own, "ns", "phase1", "uid", trials[0], weights=pinned)
    names = [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.count("HF_HUB_OFFLINE") == 1
    # Without a preparation's weights (a preset), nothing is pinned and the hub is not switched off.
    plain = rendering.render_job(spec, "ns", "phase1", "uid", trials[0])
    assert "HF_HUB_OFFLINE" not in {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_preparation_of_a_model_from_storage_or_a_volume_runs_offline() -> None:
    for source, offline in (
        ("s3://m/tiny/", True),
        ("/models/tiny", True),
        ("facebook/vjepa2-vitl-fpc16-256-ssv2", False),
    ):
        spec = parse_spec(
            {
                "image": "i",
                "model": {"source": source},
                "dataset": {"source": "s3://b/clips/"},
                "search": {"list": [{"learningRate": 1e-3}]},
                "storage": {"output": "s3://b/out/"},
            }
        )
        trials = planning.plan(spec, "s")
        job = rendering.render_prepare_job(
            spec, "ns", "s", "uid", preparation.plan_preparation(spec, "ns", "s", trials)
        )
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert (env.get("HF_HUB_OFFLINE") == "1") is offline, source
