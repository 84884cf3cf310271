"""Scores, the learning-rate schedule, corrupt-clip accounting and the termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasweep_trainer import storage
from lorasweep_trainer.data import DatasetError, Sample
from lorasweep_trainer.evaluate import accuracy, confusion_matrix, macro_f1, per_class
from lorasweep_trainer.results import TerminationSummary
from lorasweep_trainer.train import CorruptClips, EventLog, lr_lambda
from lorasweep_trainer.video import LoadedClip


def test_confusion_and_per_class_scores() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 2, 2]
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    report = per_class(matrix, ["a", "b", "c"])
    assert report["a"].precision == 1.0 and report["a"].recall == pytest.approx(2 / 3) and report["a"].support == 3
    assert report["b"].precision == 0.5 and report["b"].recall == 0.5 and report["b"].f1 == 0.5
    assert report["c"].precision == 0.5 and report["c"].recall == 1.0
    assert accuracy(labels, predicted) == pytest.approx(4 / 6)
    assert macro_f1(report) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_class_never_predicted_scores_zero_not_nan() -> None:
    report = per_class(confusion_matrix([0, 1], [0, 0], 2), ["a", "b"])
    assert report["b"].precision == 0.0 and report["b"].f1 == 0.0


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    factor = lr_lambda(total_steps=100, warmup_fraction=0.1, schedule="cosine")
    warmup = [factor(step) for step in range(10)]
    assert warmup == sorted(warmup) and 0 < warmup[0] < warmup[-1] < 1
    assert factor(10) == 1.0
    assert factor(55) == pytest.approx(0.5)
    assert factor(99) < 0.01
    constant = lr_lambda(total_steps=100, warmup_fraction=0.0, schedule="constant")
    assert {constant(step) for step in range(100)} == {1.0}


def test_corrupt_clips_past_the_fraction_stop_the_trial(tmp_path: Path) -> None:
    events = EventLog(tmp_path / "train.jsonl")
    corrupt = CorruptClips(selected=20, max_fraction=0.1, events=events)
    for uri in ("a", "b", "a"):
        corrupt.add(LoadedClip(Sample(uri, 0), None, "bad"))
    assert corrupt.uris == ["a", "b"]
    with pytest.raises(DatasetError, match=r"3 of 20 selected clips are corrupt.*maxCorruptFraction=0.1"):
        corrupt.add(LoadedClip(Sample("c", 0), None, "bad"))
    events.close()
    logged = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [line["uri"] for line in logged if line["event"] == "corrupt_clip"] == ["a", "b", "c"]


def test_termination_message_stays_under_the_kubelet_limit() -> None:
    summary = TerminationSummary(trial="t", status="Failed", reason="Error", message="x" * 10_000)
    text = summary.encode()
    assert len(text.encode()) < 4096
    assert TerminationSummary.decode(text).reason == "Error"


def test_local_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "metrics.json"
    storage.write_bytes(str(target), b"complete")
    assert target.read_bytes() == b"complete"
    with pytest.raises(TypeError):
        storage.write_bytes(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"complete"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
