"""Parameter accounting of the ViT-L preset against the reference, and the LoRA choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasweep_trainer import cli
from lorasweep_trainer import model as modeling
from lorasweep_trainer.config import LoraConfig, ModelConfig

CLASSES = ["sit_down", "stand_up", "waving", "other"]
REFERENCE_TOTAL = 375_311_748
REFERENCE_TRAINABLE = {8: 249_860, 16: 495_620, 32: 987_140, 64: 1_970_180}


@pytest.mark.parametrize("rank", sorted(REFERENCE_TRAINABLE))
def test_vitl_counts_match_the_reference(rank: int) -> None:
    # The meta device builds the real module tree (every parameter with its shape) without the weights.
    base = modeling.build_base_model(ModelConfig(preset="vjepa2-vitl-256"), CLASSES, seed=0, device="meta")
    assert modeling.count_parameters(base) == REFERENCE_TOTAL
    peft_model = modeling.apply_lora(base, LoraConfig(rank=rank, alpha=2 * rank))
    assert modeling.count_parameters(peft_model, trainable_only=True) == REFERENCE_TRAINABLE[rank]
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    # Only the pooler's projections get LoRA; the encoder stays untouched; the classifier is trained in full.
    assert all(".pooler." in name or ".classifier." in name for name in trainable)
    assert not any("lora_" in name and ".vjepa2." in name for name, _ in peft_model.named_parameters())


def test_inspect_prints_the_reference_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trial = {
        "sweep": "s",
        "trial": "t",
        "model": {"preset": "vjepa2-vitl-256"},
        "dataset": {"source": "s3://b/ntu/"},
        "training": {"lora": {"rank": 16, "alpha": 32}},
        "output": "s3://b/out/",
    }
    (tmp_path / "trial.json").write_text(json.dumps(trial))
    assert cli.main(["inspect", "--trial", str(tmp_path / "trial.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["trainable_parameters"] == 495_620
    assert printed["total_parameters"] == REFERENCE_TOTAL


def test_unknown_target_module_is_a_clear_error() -> None:
    base = modeling.build_base_model(ModelConfig(preset="tiny"), CLASSES, seed=0)
    with pytest.raises(ValueError, match=r"targetModules \['qkv'\] are not modules of this model"):
        modeling.apply_lora(base, LoraConfig(target_modules=("q_proj", "qkv")))


def unknown_target_trial(tmp_path: Path) -> str:
    trial = {
        "sweep": "s",
        "trial": "t",
        "model": {"preset": "tiny"},
        "dataset": {"source": str(tmp_path / "ntu")},
        "training": {"lora": {"targetModules": ["q_proj", "qkv"]}},
        "output": str(tmp_path / "out"),
        "metricsPort": 0,
    }
    return json.dumps(trial)


def test_unknown_target_module_fails_the_trial_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Exit 2, not a retryable failure: the Job's podFailurePolicy must not retry a config that cannot work.
    monkeypatch.setenv("LORASWEEP_TRIAL", unknown_target_trial(tmp_path))
    monkeypatch.setenv("LORASWEEP_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert cli.main(["train"]) == 2
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["reason"] == "InvalidConfig"
    assert "targetModules ['qkv'] are not modules of this model" in summary["message"]


def test_inspect_names_an_unknown_target_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "trial.json").write_text(unknown_target_trial(tmp_path))
    assert cli.main(["inspect", "--trial", str(tmp_path / "trial.json")]) == 2
    assert "targetModules ['qkv'] are not modules of this model" in capsys.readouterr().err


def test_preset_weights_follow_the_seed() -> None:
    first, second, other = (modeling.build_base_model(ModelConfig(preset="tiny"), CLASSES, seed=s) for s in (1, 1, 2))
    a, b, c = (dict(m.named_parameters())["classifier.weight"] for m in (first, second, other))
    assert a.equal(b) and not a.equal(c)


def test_from_pretrained_path_replaces_the_head_for_our_classes(tmp_path: Path) -> None:
    # A checkpoint with another head (like the SSv2 one with 174 classes), loaded by path as a hub name would be.
    saved = modeling.build_base_model(ModelConfig(preset="tiny"), ["a", "b", "c", "d", "e", "f"], seed=3)
    saved.save_pretrained(tmp_path / "checkpoint")
    loaded = modeling.build_base_model(ModelConfig(source=str(tmp_path / "checkpoint")), CLASSES, seed=0)
    assert loaded.config.num_labels == 4 and loaded.config.id2label[3] == "other"
    assert loaded.classifier.out_features == 4
    encoder = "vjepa2.encoder.layer.0.attention.query.weight"
    assert dict(loaded.named_parameters())[encoder].equal(dict(saved.named_parameters())[encoder])
    meta = modeling.build_base_model(ModelConfig(source=str(tmp_path / "checkpoint")), CLASSES, seed=0, device="meta")
    assert modeling.count_parameters(meta) == modeling.count_parameters(loaded)
