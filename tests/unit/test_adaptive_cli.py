"""`lorasweep validate` on adaptive sweeps (the first TPE proposals, the ASHA rungs) and `lorasweep status` with
stopped trials."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorasweep_operator.cli import main
from lorasweep_operator.commands.status import describe
from lorasweep_operator.spec import LoraSweepStatus, TrainingConfig, TrialCounts, TrialStatus

SWEEP = {
    "apiVersion": "lorasweep.dev/v1alpha1",
    "kind": "LoraSweep",
    "metadata": {"name": "adaptive"},
    "spec": {
        "image": "trainer:1",
        "dataset": {"source": "s3://b/clips/"},
        "storage": {"output": "s3://b/out/"},
        "training": {"epochs": 9},
        "earlyStopping": {"metric": "val_loss"},
        "parallelism": 3,
        "search": {
            "optimize": {"trials": 12, "seed": 5, "space": {"learningRate": {"logUniform": {"min": 1e-4, "max": 1e-1}}}}
        },
    },
}


def test_validate_prints_the_first_proposals_and_the_rungs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("LoraSweep default/adaptive is valid: 12 trials (optimize search")
    assert lines[1] == (
        "TPE proposes each next trial from the results so far (seed 5, 4 random start-up trials); the first 3 proposals:"
    )
    assert lines[2] == (
        "early stopping: ASHA on val_loss (minimize), reduction factor 3: at epochs 1, 3 of 9, a trial outside the "
        "best 1/3 there is stopped"
    )
    table = [line for line in lines[4:] if line.strip()]
    assert len(table) == 4 and all(" optimize " in line for line in table[1:])
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == out  # the same proposals every time


def test_status_shows_stopped_trials_with_their_epoch_and_accuracy() -> None:
    training = TrainingConfig()
    stopped = TrialStatus(
        id="t2", job="s-t2", phase="Stopped", seed=42, params=training, metrics={"val_accuracy": 0.25},
        epochs_completed=1, reason="EarlyStopped",
    )  # fmt: skip
    done = TrialStatus(id="t1", job="s-t1", phase="Succeeded", seed=42, params=training, objective=0.75)
    status = LoraSweepStatus(
        phase="Succeeded", counts=TrialCounts(total=2, succeeded=1, stopped=1), trials=[done, stopped]
    )
    lines = describe("ns/s", status)
    assert lines[1] == "trials: 2 total, 0 running, 0 pending, 1 succeeded, 0 failed, 1 stopped early"
    row = next(line for line in lines if line.startswith("t2"))
    assert "Stopped" in row and row.endswith("EarlyStopped after epoch 1, val_accuracy 0.2500")
