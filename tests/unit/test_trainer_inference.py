"""The pure parts of using an adapter: locations, the adapter folder's checks, clip listing, the output, and the
base model's identity recorded at training time (a tiny preset, built on the CPU in a fraction of a second)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorasweep_trainer import cache, cli, inference
from lorasweep_trainer import model as modeling
from lorasweep_trainer.config import ConfigError, LoraConfig, ModelConfig, ModelWeights
from lorasweep_trainer.data import DatasetError
from lorasweep_trainer.inference import AdapterError, ClipPrediction, PredictResult
from lorasweep_trainer.model import ModelUnavailable
from lorasweep_trainer.results import ADAPTER_INFO_FILE, AdapterBase, AdapterInfo, adapter_uri_beside

CLASSES = ["sit_down", "stand_up", "other"]


@pytest.mark.parametrize("uri", ["/data/clips", "clips/x.avi", "s3://bucket/clips/", "s3://bucket/a.avi"])
def test_local_paths_and_s3_are_locations(uri: str) -> None:
    inference.check_location(uri, "--clips")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket/clips/", "has the URI scheme 'gs', which lorasweep cannot read; give a local path or an s3://"),
        ("https://example.com/a.avi", "URI scheme 'https'"),
        ("S3://bucket/clips/", "write the scheme in lower case, s3://"),
    ],
)
def test_other_schemes_say_what_is_accepted(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^--clips ") as raised:
        inference.check_location(uri, "--clips")
    assert message in str(raised.value)


def test_the_adapter_is_found_beside_metrics_json() -> None:
    assert adapter_uri_beside("s3://b/out/ns/s/trials/t1/metrics.json") == "s3://b/out/ns/s/trials/t1/adapter/"
    assert adapter_uri_beside("/runs/demo/trials/t1/metrics.json") == "/runs/demo/trials/t1/adapter/"


def info(**base: object) -> AdapterInfo:
    fields: dict[str, object] = {
        "name_or_path": "preset:tiny",
        "revision": "seed-42",
        "preset": "tiny",
        "seed": 42,
        "digest": "0" * 64,
    }
    fields.update(base)
    return AdapterInfo(
        sweep="s",
        trial="t",
        classes=CLASSES,
        frames_per_clip=4,
        base=AdapterBase.model_validate(fields),
        best_epoch=2,
        git_commit="abc",
    )


def adapter_folder(root: Path, *files: str) -> Path:
    root.mkdir()
    for name in files:
        (root / name).write_text("{}")
    return root


def test_an_adapter_folder_must_hold_peft_files_the_info_and_the_processor(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="is not a folder; give a trial's adapter folder"):
        inference.fetch_adapter(str(tmp_path / "absent"), tmp_path)
    empty = adapter_folder(tmp_path / "empty")
    with pytest.raises(AdapterError, match=r"is not a peft adapter folder \(no adapter_config.json, adapter_model"):
        inference.read_info(empty, str(empty))
    peft_only = adapter_folder(tmp_path / "peft", "adapter_config.json", "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=f"no {ADAPTER_INFO_FILE} .the class names, frames per clip and base"):
        inference.read_info(peft_only, "s3://b/t/adapter/")
    (peft_only / ADAPTER_INFO_FILE).write_text(json.dumps({"schema": "lorasweep.adapter/v1", "sweep": "s"}))
    with pytest.raises(AdapterError, match=r"is not a lorasweep.adapter/v1 document \(trial: Field required\)"):
        inference.read_info(peft_only, str(peft_only))
    (peft_only / ADAPTER_INFO_FILE).write_text(info().to_json())
    with pytest.raises(AdapterError, match="no video_preprocessor_config.json"):
        inference.read_info(peft_only, str(peft_only))
    (peft_only / inference.PROCESSOR_FILE).write_text("{}")
    assert inference.read_info(peft_only, str(peft_only)) == info()


def test_clips_are_one_file_or_the_video_files_under_a_folder(tmp_path: Path) -> None:
    (tmp_path / "clips" / "more").mkdir(parents=True)
    for name in ("b.avi", "a.MP4", "more/c.mkv", "notes.txt", "more/.hidden.json"):
        (tmp_path / "clips" / name).write_bytes(b"x")
    assert inference.list_clips(str(tmp_path / "clips")) == [
        str(tmp_path / "clips" / name) for name in ("a.MP4", "b.avi", "more/c.mkv")
    ]
    assert inference.list_clips(str(tmp_path / "clips" / "notes.txt")) == [str(tmp_path / "clips" / "notes.txt")]
    with pytest.raises(DatasetError, match="is neither a file nor a folder"):
        inference.list_clips(str(tmp_path / "absent"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match=r"holds no video files \(.avi, .mp4"):
        inference.list_clips(str(tmp_path / "docs"))


def result() -> PredictResult:
    return PredictResult(
        adapter="s3://b/trials/t/adapter/",
        trial="t",
        classes=CLASSES,
        location="s3://b/clips/",
        predictions=[
            ClipPrediction("s3://b/clips/one.avi", "stand_up", {"sit_down": 0.1, "stand_up": 0.85, "other": 0.05}),
            ClipPrediction("s3://b/clips/sub/two.avi", "other", {"sit_down": 0.2, "stand_up": 0.2, "other": 0.6}),
        ],
        skipped={"s3://b/clips/bad.avi": "the video has no frames"},
    )


def test_the_table_names_clips_relative_to_the_location_with_the_sweeps_classes() -> None:
    assert inference.format_table(result()).splitlines() == [
        "adapter s3://b/trials/t/adapter/ (trial t); 2 clips predicted, 1 skipped",
        "",
        "CLIP         PREDICTED  sit_down  stand_up  other",
        "one.avi      stand_up   0.1000    0.8500    0.0500",
        "sub/two.avi  other      0.2000    0.2000    0.6000",
        "",
        "skipped 1 clips that could not be decoded:",
        "  bad.avi: the video has no frames",
    ]


def test_the_json_keeps_whole_uris_and_probabilities() -> None:
    document = json.loads(json.dumps(inference.as_json(result())))
    assert document["classes"] == CLASSES
    assert document["predictions"][1] == {
        "clip": "s3://b/clips/sub/two.avi",
        "predicted": "other",
        "probabilities": {"sit_down": 0.2, "stand_up": 0.2, "other": 0.6},
    }
    assert document["skipped"] == [{"clip": "s3://b/clips/bad.avi", "error": "the video has no frames"}]


def test_merge_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    inference.check_out(str(tmp_path / "new"))
    inference.check_out("s3://b/merged/")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="exists and is not an empty folder; give a new or empty folder"):
        inference.check_out(str(tmp_path / "used"))


def test_a_preset_base_is_named_by_preset_and_seed_and_rebuilt_bit_for_bit() -> None:
    config = ModelConfig(preset="tiny", frames_per_clip=4)
    base = modeling.build_base_model(config, CLASSES, seed=7)
    name, revision = modeling.base_reference(config, 7, base)
    assert (name, revision) == ("preset:tiny", "seed-7")
    recorded = AdapterBase(
        name_or_path=name, revision=revision, preset="tiny", seed=7, digest=modeling.base_digest(base)
    )
    rebuilt = modeling.build_base_model(modeling.model_config_for(recorded, 4), CLASSES, recorded.seed)
    assert modeling.base_digest(rebuilt) == recorded.digest
    other_seed = modeling.build_base_model(config, CLASSES, seed=8)
    assert modeling.base_digest(other_seed) != recorded.digest
    # The classifier is saved with the adapter in full, so it is left out of the digest.
    changed = modeling.build_base_model(config, CLASSES, seed=7)
    with torch.no_grad():
        changed.classifier.weight.add_(1.0)
    assert modeling.base_digest(changed) == recorded.digest
    with torch.no_grad():
        changed.pooler.query_tokens.add_(1.0)
    assert modeling.base_digest(changed) != recorded.digest
    # The encoder counts through its own digest, which a cached trial has already taken for its shards.
    encoder = cache.encoder_digest(base.vjepa2.encoder)
    assert modeling.base_digest(base, encoder) == recorded.digest
    with torch.no_grad():
        next(base.vjepa2.encoder.parameters()).add_(1.0)
    assert modeling.base_digest(base) != recorded.digest
    every = {k for k in base.state_dict() if not k.startswith("classifier.")}
    assert {modeling.ENCODER_PREFIX + k for k in base.vjepa2.encoder.state_dict()} < every


def test_a_hub_base_keeps_its_name_and_the_adapter_config_names_it(tmp_path: Path) -> None:
    config = ModelConfig(source="facebook/vjepa2-vitl-fpc16-256-ssv2")
    assert modeling.model_identity(config) == ("facebook/vjepa2-vitl-fpc16-256-ssv2", None)
    recorded = AdapterBase(
        name_or_path="facebook/vjepa2-vitl-fpc16-256-ssv2", revision="0123abc", preset=None, seed=42, digest="d"
    )
    assert modeling.model_config_for(recorded, 8) == ModelConfig(revision="0123abc", frames_per_clip=8)  # pinned
    assert modeling.model_config_for(recorded, 8, source="/models/vjepa2") == ModelConfig(
        source="/models/vjepa2", frames_per_clip=8
    )
    pinned = ModelWeights(uri="s3://b/c/models/k/", manifest="s3://b/c/models/k.json", revision="f" * 40)
    assert modeling.model_identity(config, pinned) == ("facebook/vjepa2-vitl-fpc16-256-ssv2", "f" * 40)

    base = modeling.build_base_model(ModelConfig(preset="tiny"), CLASSES, seed=0)
    model = modeling.apply_lora(base, LoraConfig(rank=2, alpha=4))
    modeling.name_adapter_base(model, "preset:tiny", "seed-0")
    model.save_pretrained(str(tmp_path / "adapter"), save_embedding_layers=False)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["base_model_name_or_path"], saved["revision"]) == ("preset:tiny", "seed-0")


def test_predict_checks_its_locations_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["predict", "--adapter", str(tmp_path), "--clips", "gs://b/clips/"]) == 2
    assert "--clips 'gs://b/clips/' has the URI scheme 'gs'" in capsys.readouterr().err
    assert cli.main(["merge", "--adapter", "ftp://host/adapter/", "--out", str(tmp_path / "m")]) == 2
    assert "--adapter 'ftp://host/adapter/' has the URI scheme 'ftp'" in capsys.readouterr().err
    assert cli.main(["predict", "--adapter", str(tmp_path), "--clips", str(tmp_path), "--batch-size", "0"]) == 2


def test_an_adapter_on_a_saved_base_folder_loads_again_and_refuses_other_weights(tmp_path: Path) -> None:
    """The from_pretrained path (a folder here, a hub name on a cluster): the base is loaded again by the name
    recorded, or from --base, and checked by its digest before the adapter goes on it."""
    from lorasweep_trainer.inference import load_adapter
    from lorasweep_trainer.train import save_adapter

    modeling.build_base_model(ModelConfig(preset="tiny", frames_per_clip=4), CLASSES, seed=3).save_pretrained(
        str(tmp_path / "base")
    )
    config = ModelConfig(source=str(tmp_path / "base"), frames_per_clip=4)
    base = modeling.build_base_model(config, CLASSES, seed=5)
    name, revision = modeling.base_reference(config, 5, base)
    assert (name, revision) == (str(tmp_path / "base"), None)  # a folder has no hub commit
    recorded = AdapterBase(name_or_path=name, revision=revision, seed=5, digest=modeling.base_digest(base))
    model = modeling.apply_lora(base, LoraConfig(rank=2, alpha=4))
    with torch.no_grad():  # a trained adapter, not the identity peft starts from
        for parameter in modeling.trainable_parameters(model):
            parameter.add_(0.05 * torch.randn_like(parameter))
    adapter = info().model_copy(update={"base": recorded})
    save_adapter(model, modeling.build_processor(base.config), tmp_path / "adapter", adapter)

    pixels = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values_videos=pixels).logits
    loaded = load_adapter(str(tmp_path / "adapter"), tmp_path / "work", "cpu")
    assert loaded.info == adapter
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(pixel_values_videos=pixels).logits, expected)

    (tmp_path / "base").rename(tmp_path / "copy")  # moved: --base names where the same weights are now
    with pytest.raises(ModelUnavailable, match="cannot be loaded"):
        load_adapter(str(tmp_path / "adapter"), tmp_path / "work", "cpu")
    copy = load_adapter(str(tmp_path / "adapter"), tmp_path / "work", "cpu", base=str(tmp_path / "copy"))
    with torch.no_grad():
        torch.testing.assert_close(copy.model(pixel_values_videos=pixels).logits, expected)

    modeling.build_base_model(ModelConfig(preset="tiny", frames_per_clip=4), CLASSES, seed=4).save_pretrained(
        str(tmp_path / "other")
    )
    with pytest.raises(AdapterError, match="has other weights than the adapter was trained on"):
        load_adapter(str(tmp_path / "adapter"), tmp_path / "work", "cpu", base=str(tmp_path / "other"))
