"""Trial configuration: what an invalid one says (the trainer exits 2 with this message)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lorasweep_trainer.cli import validation_message
from lorasweep_trainer.config import TrialConfig

VALID = {"sweep": "s", "trial": "t", "dataset": {"source": "s3://b/ntu/"}, "output": "s3://b/out/"}


def message_for(**changes: object) -> str:
    document = json.loads(json.dumps(VALID))
    for path, value in changes.items():
        node = document
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    with pytest.raises(ValidationError) as caught:
        TrialConfig.model_validate_json(json.dumps(document))
    return validation_message(caught.value)


def test_valid_defaults_are_the_reference_baseline() -> None:
    cfg = TrialConfig.model_validate(VALID)
    assert cfg.training.learning_rate == 2e-4 and cfg.training.lora.rank == 16 and cfg.training.lora.alpha == 32
    assert cfg.dataset.class_names == ["sit_down", "stand_up", "waving", "other"]
    assert cfg.training.scheduler == "cosine" and cfg.training.warmup_fraction == 0.1


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"training__lora__rank": 0}, "training.lora.rank: Input should be greater than or equal to 1 (got 0)"),
        ({"training__learningRate": -1}, "training.learningRate: Input should be greater than 0"),
        ({"training__scheduler": "linear"}, "training.scheduler: Input should be 'cosine' or 'constant'"),
        ({"model__framesPerClip": 7}, "model.framesPerClip: Value error, framesPerClip must be even"),
        ({"model__preset": "huge"}, "model.preset: Input should be 'tiny' or 'vjepa2-vitl-256'"),
        ({"dataset__classes": {"a": [8]}}, "dataset.classes: Value error, classes needs at least two entries"),
        ({"dataset__classes": {"a": [8], "b": [8]}}, "action 8 is in both 'a' and 'b'"),
        ({"dataset__split": {"train": 0.8, "val": 0.15, "test": 0.15}}, "split fractions must sum to 1"),
        ({"training__learningrate": 0.1}, "training.learningrate: Extra inputs are not permitted"),
        ({"device": "tpu"}, "device: Input should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_messages_name_the_field_and_allowed_values(changes: dict[str, object], expected: str) -> None:
    assert expected in message_for(**changes)


def test_missing_fields_are_named() -> None:
    with pytest.raises(ValidationError) as caught:
        TrialConfig.model_validate({"sweep": "s"})
    message = validation_message(caught.value)
    assert (
        "trial: Field required" in message
        and "dataset: Field required" in message
        and "output: Field required" in message
    )


def run_train(
    monkeypatch: pytest.MonkeyPatch, tmp_path, trial_env: str | None, *argv: str
) -> tuple[int, dict[str, object]]:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("LORASWEEP_TERMINATION_LOG", str(termination))
    if trial_env is None:
        monkeypatch.delenv("LORASWEEP_TRIAL", raising=False)
    else:
        monkeypatch.setenv("LORASWEEP_TRIAL", trial_env)
    from lorasweep_trainer import cli

    code = cli.main(["train", *argv])
    return code, json.loads(termination.read_text())


def test_train_without_a_config_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    code, summary = run_train(monkeypatch, tmp_path, None)
    assert code == 2
    assert summary["status"] == "Failed" and summary["reason"] == "InvalidConfig"
    assert "set LORASWEEP_TRIAL or pass --trial FILE" in str(summary["message"])


def test_train_with_broken_json_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    code, summary = run_train(monkeypatch, tmp_path, '{"sweep": "s", "trial": "t",')
    assert code == 2 and "Invalid JSON" in str(summary["message"])


def test_train_reads_the_trial_file_before_the_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    document = dict(VALID, trial="from-file", training={"epochs": 0})
    (tmp_path / "trial.json").write_text(json.dumps(document))
    code, summary = run_train(monkeypatch, tmp_path, json.dumps(VALID), "--trial", str(tmp_path / "trial.json"))
    assert code == 2 and summary["trial"] == "from-file"
    assert "training.epochs: Input should be greater than or equal to 1 (got 0)" in str(summary["message"])


def test_train_with_an_unreadable_trial_file_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    code, summary = run_train(monkeypatch, tmp_path, None, "--trial", str(tmp_path / "missing.json"))
    assert code == 2 and summary["reason"] == "InvalidConfig"
    assert f"cannot read --trial {tmp_path / 'missing.json'}: No such file or directory" in str(summary["message"])
