"""The report's Training dynamics and Data sections, stopped trials, one-trial sweeps, and bad metrics.json
files (issue 11, defect 9): partial files are reported with what is missing, impossible values are rejected
with a warning that names the file and field, and nothing crashes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lorasweep_operator.report import build_sweep_report, publish_sweep_report, render
from lorasweep_operator.report.builder import build_report
from lorasweep_operator.report.markdown import render_markdown
from lorasweep_operator.report.storage import load_metrics
from lorasweep_trainer.results import EpochMetrics, TrialMetrics

REFERENCE = Path(__file__).parent / "data" / "reference-sweep"
CLASSES = {"sit_down": [8], "stand_up": [9], "waving": [23], "other": "rest"}


@pytest.fixture(scope="module")
def trials() -> list[TrialMetrics]:
    loaded, problems = load_metrics(str(REFERENCE))
    assert problems == {}
    return loaded


def by_id(trials: list[TrialMetrics], trial: str) -> TrialMetrics:
    return next(t for t in trials if t.trial == trial)


def document(trial: str = "ref-baseline") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REFERENCE / "trials" / trial / "metrics.json").read_text())
    return data


def write(folder: Path, name: str, data: dict[str, Any] | str) -> Path:
    path = folder / "trials" / name / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# --- Training dynamics ------------------------------------------------------------------------------


def test_training_dynamics_reads_every_epoch_and_says_where_to_train_longer(trials: list[TrialMetrics]) -> None:
    report = build_report(trials)
    assert report.dynamics is not None
    rows = {row.label: row for row in report.dynamics.rows}
    assert len(rows) == 11 and [r.configuration for r in report.dynamics.rows] == [c.key for c in report.ranked]
    best = rows["Rank=64, Alpha=128"]
    assert [round(100 * e.val_accuracy, 2) for e in best.epochs] == [63.33, 70.0, 76.67, 83.33, 76.67]
    assert (best.best_epoch, best.trend) == (4, "peaked near the end")
    assert rows["LR=1e-3"].trend == "still rising"
    assert rows["LR=1e-3"].note == (
        "validation accuracy was still rising at the last epoch (73.33% → 80.00%): more epochs would likely help"
    )
    assert rows["Alpha=64"].trend == "peaked early" and rows["Alpha=64"].best_epoch == 3
    assert "(overfitting)" in rows["Alpha=64"].note
    assert report.dynamics.findings[0] == (
        "7 of 11 configurations were still improving on validation at the last epoch (5): train longer "
        "(more epochs) before reading the ranking as final."
    )
    assert report.dynamics.plotted == [c.key for c in report.ranked[:5]]

    files = render(report)
    assert files["training-curves.png"][:8] == b"\x89PNG\r\n\x1a\n"
    text = files["report.md"].decode()
    assert "## Training dynamics" in text
    assert "![validation and train accuracy per epoch of the top configurations](training-curves.png)" in text
    assert "| LR=1e-3 | 5/5 | 53 → 60 → 67 → 73 → 80 | 56 → 61 → 66 → 71 → 76 | 1.250 → 0.650 | still rising |" in text


def test_the_best_still_rising_is_told_to_train_longer(trials: list[TrialMetrics]) -> None:
    report = build_report([by_id(trials, "ref-lr-1e-3"), by_id(trials, "ref-baseline")])
    assert report.best.label == "LR=1e-3"
    assert (
        "The best configuration's validation accuracy was still rising at its last epoch (73.33% → 80.00%): "
        "train it longer (more epochs)."
    ) in report.recommendations


def test_a_nan_loss_and_a_missing_history_are_said(trials: list[TrialMetrics]) -> None:
    base = by_id(trials, "ref-baseline")
    diverged = base.model_copy(
        update={
            "trial": "nan",
            "group": "learning-rate",
            "params": base.params.model_copy(update={"learning_rate": 0.5}),
            "epochs": [EpochMetrics(epoch=1, train_loss=math.nan, train_accuracy=0.25, val_accuracy=0.25)],
        }
    )
    silent = base.model_copy(
        update={
            "trial": "quiet",
            "group": "dropout",
            "params": base.params.model_copy(update={"lora_dropout": 0.3}),
            "epochs": [],
        }
    )
    report = build_report([base, diverged, silent])
    assert report.dynamics is not None
    assert "Training loss was NaN in LR=5e-1: the learning rate is likely too high." in report.dynamics.findings
    assert "No per-epoch history was recorded for Dropout=0.30." in report.dynamics.findings
    assert "| LR=5e-1 | 1/5 | 25 | 25 | NaN | peaked near the end |" in render_markdown(report)


# --- Data -------------------------------------------------------------------------------------------


def test_data_section_counts_clips_per_split_and_class_and_lists_corrupt_clips(trials: list[TrialMetrics]) -> None:
    base = by_id(trials, "ref-baseline")
    broken = [base.split["train"][0], base.split["test"][1]]
    report = build_report([base.model_copy(update={"corrupt_clips": broken})], class_actions=CLASSES)
    data = report.data
    assert data is not None and data.balance_by == "class"
    splits = {s.name: s for s in data.splits}
    assert {name: (s.clips, s.corrupt) for name, s in splits.items()} == {
        "train": (140, 1),
        "val": (30, 0),
        "test": (30, 1),
    }
    for split in data.splits:
        assert sum(split.by_class.values()) == split.clips
        assert set(split.by_class) == set(CLASSES)
    assert splits["train"].by_class == {"other": 35, "sit_down": 35, "stand_up": 35, "waving": 35}
    assert data.corrupt_clips == sorted(broken)
    assert data.findings[0] == (
        "2 corrupt clips of 200 selected were skipped (listed below); the accuracies count the clips that decoded."
    )
    text = render_markdown(report)
    assert "## Data" in text and "| train | 140 | 1 | 35 | 35 | 35 | 35 |" in text
    assert f"- `{broken[0]}`" in text


def test_data_without_a_class_map_or_split_says_what_it_counts(trials: list[TrialMetrics]) -> None:
    base = by_id(trials, "ref-baseline")
    assert build_report([base]).data.balance_by == "action"  # type: ignore[union-attr]
    bare = build_report([base.model_copy(update={"split": {}})]).data
    assert bare is not None and bare.balance_by == "test only"
    assert [s.by_class for s in bare.splits][:2] == [{}, {}]
    assert "train and val balance not recorded" in render_markdown(
        build_report([base.model_copy(update={"split": {}})])
    )


# --- One trial, no baseline, stopped trials --------------------------------------------------------


def test_a_one_trial_sweep_reads_correctly(trials: list[TrialMetrics]) -> None:
    only = by_id(trials, "ref-lr-1e-3").model_copy(update={"group": None, "variant": None})
    report = build_report([only])
    listed = build_report([only.model_copy(update={"group": "list", "variant": "learningRate=0.001"})])
    assert not any("largest effect" in line for line in listed.summary)  # a one-row group compares nothing
    assert "The configuration's validation accuracy was still rising at its last epoch" in listed.recommendations[1]
    text = render_markdown(report, list(render(report)))
    assert report.baseline is None
    assert report.summary[0].startswith("The sweep ran 1 trial (1 configuration × 1 seed) of ")
    assert report.summary[1].startswith("**The one configuration, ref-lr-1e-3,** reached 80.00%")
    for wrong in (
        "1 trials",
        "1 configurations",
        "1 seeds",
        "baseline",
        "Baseline",
        "Best configuration, chosen",
        "Top 1 configurations",
        "best of 1",
    ):
        assert wrong not in text, wrong
    assert "**Trials:** 1 (1 configuration × 1 seed: 42)" in text
    assert "### The configuration" in text and "## The configuration in detail" in text
    assert report.recommendations[0].startswith(
        "Use **ref-lr-1e-3** (LR=1e-3, Rank=16, Alpha=32, Dropout=0.10): the only configuration run;"
    )
    assert "The configuration ran with one seed (42): repeat it over three or more seeds" in text


def test_one_failure_reads_in_the_singular(trials: list[TrialMetrics]) -> None:
    report = build_report(trials[:2], failed={"gone": "exit code 3"})
    assert "1 trial failed and is not in the tables." in report.summary
    assert any(r.startswith("Investigate the failed trial (gone)") for r in report.recommendations)


def test_stopped_trials_are_listed_apart_from_failed_ones(trials: list[TrialMetrics]) -> None:
    early = by_id(trials, "ref-lr-5e-5").model_copy(
        update={"status": "Stopped", "reason": "ASHA rung 1", "epochs": by_id(trials, "ref-lr-5e-5").epochs[:2]}
    )
    rest = [t for t in trials if t.trial != "ref-lr-5e-5"]
    report = build_report([*rest, early], failed={"gone": "exit code 3"}, stopped={"ref-lr-1e-4": "ASHA rung 2"})
    m = report.methodology
    assert set(m.stopped_trials) == {"ref-lr-5e-5", "ref-lr-1e-4"}
    assert m.stopped_trials["ref-lr-5e-5"].startswith("stopped early after 2 epochs of 5")
    assert m.stopped_trials["ref-lr-5e-5"].endswith(": ASHA rung 1")
    assert m.failed_trials == {"gone": "exit code 3"}
    ranked = {t for c in report.ranked for t in c.trials}
    assert not ranked & {"ref-lr-5e-5", "ref-lr-1e-4"} and len(ranked) == 9
    text = render_markdown(report)
    assert "**Stopped early (not ranked):** ref-lr-1e-4 (ASHA rung 2); ref-lr-5e-5 (stopped early after 2" in text
    assert "**Failed trials:** gone (exit code 3)" in text
    assert "2 trials stopped early (early stopping) and are listed apart, not ranked." in report.summary


# --- Bad metrics.json (issue 11, defect 9) ---------------------------------------------------------


@pytest.mark.reliability
def test_null_optional_fields_are_read_and_what_is_missing_is_said(tmp_path: Path) -> None:
    data = document()
    data.update(
        {
            "split": None,
            "corrupt_clips": None,
            "test_predictions": None,
            "val_loss": None,
            "epochs": None,
            "group": None,
        }
    )
    path = write(tmp_path, "partial", data)
    write(tmp_path, "whole", document("ref-lr-1e-3"))
    report = build_sweep_report(str(tmp_path / "trials"))
    assert sorted(t for c in report.ranked for t in c.trials) == ["ref-baseline", "ref-lr-1e-3"]
    assert report.methodology.failed_trials == {}
    assert (
        f"{path}: epochs, split, corrupt_clips, test_predictions are null; trial ref-baseline is reported without them"
        in report.warnings
    )
    render(report)


@pytest.mark.reliability
def test_no_usable_file_says_what_was_found_and_why(tmp_path: Path) -> None:
    bad = document()
    bad["params"] = None
    first = write(tmp_path, "a", bad)
    second = write(tmp_path, "b", "{not json")
    with pytest.raises(ValueError) as error:
        build_sweep_report(str(tmp_path / "trials"))
    message = str(error.value)
    assert "no metrics.json was found" not in message
    assert f"2 metrics.json found under {tmp_path / 'trials'}, none usable: " in message
    assert f"{first}: not a valid lorasweep.metrics/v1 document (1 errors; first: params:" in message
    assert f"{second}: not JSON" in message
    with pytest.raises(ValueError, match=r"1 metrics.json found under .*, but none belongs to the trials asked for"):
        build_sweep_report(str(tmp_path / "trials"), trials=["other"]) if False else _only_other(tmp_path)


def _only_other(tmp_path: Path) -> None:
    folder = tmp_path / "one"
    write(folder, "x", document())
    build_sweep_report(str(folder / "trials"), trials=["someone-else"])


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("val_accuracy", 70.0, "val_accuracy is 70.0, not a fraction in [0, 1]"),
        ("test_accuracy", "NaN", "test_accuracy is nan, not a fraction in [0, 1]"),
        ("train_accuracy", -0.1, "train_accuracy is -0.1, not a fraction in [0, 1]"),
        (
            "epochs",
            [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": "Infinity"}],
            "epochs[0].val_accuracy is inf, not a fraction in [0, 1]",
        ),
        (
            "per_class",
            {"sit_down": {"precision": 1.5, "recall": 0.5, "f1": 0.6, "support": 8}},
            "per_class.sit_down.precision is 1.5, not a fraction in [0, 1]",
        ),
    ],
)
def test_impossible_accuracies_are_rejected_naming_file_and_field(
    tmp_path: Path, field: str, value: object, said: str
) -> None:
    data = document()
    data[field] = value
    text = json.dumps(data).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")  # as Python's json writes them
    path = write(tmp_path, "bad", text)
    write(tmp_path, "good", document("ref-lr-1e-3"))
    report = build_sweep_report(str(tmp_path / "trials"))
    assert [t for c in report.ranked for t in c.trials] == ["ref-lr-1e-3"]
    assert f"{path}: {said}; trial ref-baseline left out of the report" in report.warnings
    assert report.methodology.failed_trials[str(path)].startswith(f"unreadable metrics: impossible values: {said}")
    assert "7000" not in render_markdown(report)


@pytest.mark.reliability
def test_impossible_values_passed_directly_are_left_out(trials: list[TrialMetrics]) -> None:
    base = by_id(trials, "ref-baseline")
    report = build_report([base.model_copy(update={"trial": "x", "val_accuracy": 70.0}), by_id(trials, "ref-lr-1e-3")])
    assert "trial x: val_accuracy is 70.0, not a fraction in [0, 1]; left out of the report" in report.warnings
    with pytest.raises(ValueError, match="val_accuracy is 70.0"):
        build_report([base.model_copy(update={"val_accuracy": 70.0})])


@pytest.mark.reliability
@pytest.mark.parametrize("matrix", [[], [[]], [[1, 2], [3]]])
def test_an_empty_or_ragged_confusion_matrix_never_crashes(tmp_path: Path, matrix: list[list[int]]) -> None:
    data = document()
    data["confusion_matrix"] = matrix
    write(tmp_path, "m", data)
    uri = publish_sweep_report(str(tmp_path / "trials"), str(tmp_path / "report"))
    text = Path(uri).read_text()
    assert not (tmp_path / "report" / "confusion-matrix.png").exists()
    if not any(matrix):
        assert "trial ref-baseline: no confusion matrix recorded" in text
        assert "no confusion matrix was recorded (see Data checks)" in text
    else:
        assert "trial ref-baseline: the confusion matrix is not 4x4" in text


@pytest.mark.reliability
def test_per_class_figures_that_contradict_the_confusion_matrix_are_flagged(trials: list[TrialMetrics]) -> None:
    base = by_id(trials, "ref-baseline")
    assert build_report([base]).warnings == []
    per_class = dict(base.per_class)
    per_class["waving"] = per_class["waving"].model_copy(update={"recall": 0.95, "support": 9})
    report = build_report([base.model_copy(update={"per_class": per_class})])
    recall = base.confusion_matrix[2][2] / sum(base.confusion_matrix[2])
    assert report.warnings == [
        f"trial ref-baseline: per_class.waving.recall is 0.95 but the confusion matrix gives {recall:.2f}",
        f"trial ref-baseline: per_class.waving.support is 9 but the confusion matrix has "
        f"{sum(base.confusion_matrix[2])} waving clips",
    ]
