"""`lorasweep demo`, the README's first command, from the repository's virtualenv: synthetic clips, four
real trainer processes on the CPU, and a report whose tables match the trials that ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep_operator.report import formatting as fmt
from lorasweep_operator.report.stats import wilson_interval as wilson
from lorasweep_trainer.results import TrialMetrics

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def test_demo_runs_a_sweep_and_reports_it(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    done = subprocess.run(
        [BIN / "lorasweep", "demo", "--dir", str(folder)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report_path = folder / "report" / "report.md"
    assert f"The demo's report: {report_path}" in done.stdout

    trials = [TrialMetrics.model_validate_json(p.read_text()) for p in folder.glob("trials/*/metrics.json")]
    assert len(trials) == 4
    assert {t.group for t in trials} == {"baseline", "learning-rate", "lora-rank"}
    report = report_path.read_text()
    table = [line for line in report.splitlines() if line.startswith("| ") and "% (" in line and line[2].isdigit()]
    top = table[:4]
    # Every trial has its row in the ranking table, with its own accuracies and parameters.
    for t in trials:
        row = (
            f"| {fmt.percent(t.val_accuracy)} ({fmt.interval(wilson(t.val_accuracy, t.dataset.val))}) "
            f"| {fmt.percent(t.test_accuracy)} ({fmt.interval(wilson(t.test_accuracy, t.dataset.test))}) "
            f"| {fmt.scientific(t.params.learning_rate)} | {t.params.lora_rank} |"
        )
        assert any(row in line for line in top), (row, top)
    # Ranked by validation accuracy only.
    ranked = [float(line.split("|")[2].split("%")[0]) for line in top]
    assert ranked == sorted(ranked, reverse=True)
    assert ranked[0] == round(100 * max(t.val_accuracy for t in trials), 2)
    for figure in ("confusion-matrix.png", "group-learning-rate.png", "group-lora-rank.png", "training-curves.png"):
        assert (folder / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    # Training dynamics from every trial's per-epoch history, with the figure of the top curves.
    assert "## Training dynamics" in report and "](training-curves.png)" in report
    for t in trials:
        curve = " → ".join(f"{100 * e.val_accuracy:.0f}" for e in t.epochs)
        assert f"| {t.best_epoch}/{t.params.epochs} | {curve} |" in report, curve
    # Data: clips per split and class (the demo's four classes), nothing corrupt in synthetic clips.
    assert "## Data" in report
    assert "| Split | Clips | Corrupt, skipped | other | sit_down | stand_up | waving |" in report
    for split in ("train", "val", "test"):
        size = getattr(trials[0].dataset, split)
        assert f"| {split} | {size} | 0 |" in report
    assert "none was skipped" in report

    # The best adapter, as the demo names it, gives the test predictions its metrics.json recorded.
    hint = next(line for line in done.stdout.splitlines() if line.startswith("Its best adapter on the clips: "))
    command = hint.split(": ", 1)[1].split()
    assert command[:3] == ["lorasweep-trainer", "predict", "--adapter"]
    adapter = Path(command[3])
    best = next(t for t in trials if adapter == folder / "trials" / t.trial / "adapter")
    assert best.val_accuracy == max(t.val_accuracy for t in trials)
    predicted = subprocess.run(
        [BIN / command[0], *command[1:], "--json", "--device", "cpu"], capture_output=True, text=True, timeout=600
    )
    assert predicted.returncode == 0, predicted.stderr
    rows = {row["clip"]: row for row in json.loads(predicted.stdout)["predictions"]}
    for clip, label in best.test_predictions.items():
        assert rows[clip]["predicted"] == label
        probabilities = [rows[clip]["probabilities"][name] for name in best.classes]
        assert probabilities == pytest.approx(best.test_probabilities[clip], abs=1e-5)

    # Running it again finds every trial finished and only rewrites the report.
    again = subprocess.run(
        [BIN / "lorasweep", "demo", "--dir", str(folder)], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 trials, 4 finished before (skipped)" in again.stdout
