"""`lorasweep run` with adaptive sweeps and the real trainer: ASHA ends the local trials behind at the first rung
(recorded, not run again), and search.optimize plans its proposals from its record, so an interrupted run
resumes with the same ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_local_runner import interrupt_after_a_trial, processes_using, synthetic_clips, tiny_sweep

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_clips(tmp_path_factory.mktemp("clips"))


def records(out: Path, name: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in out.glob(f"trials/*/{name}"):
        found[path.parent.name] = json.loads(path.read_text())
    return found


def test_local_asha_stops_trials_behind_and_a_rerun_keeps_them_stopped(tmp_path: Path, clips: Path) -> None:
    sweep: dict[str, Any] = tiny_sweep(clips)
    sweep["metadata"]["name"] = "asha"  # type: ignore[index]
    spec = sweep["spec"]
    spec["training"]["epochs"] = 3
    spec["search"] = {"list": [{"learningRate": rate} for rate in (1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1)]}
    spec["earlyStopping"] = {"metric": "val_loss", "reductionFactor": 3, "minEpochs": 1}
    spec["parallelism"] = 3
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    command = [str(BIN / "lorasweep"), "run", str(path), "--out", str(out), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    decided = records(out, "early-stopping.json")
    assert len(decided) == 6
    stopped = {trial for trial, record in decided.items() if record["decisions"]["1"]["stop"]}
    assert stopped and len(stopped) < 6, decided
    for trial, record in decided.items():
        rung = record["decisions"]["1"]
        loss = record["values"]["1"]
        assert (loss > rung["cutoff"]) if trial in stopped else (loss <= rung["cutoff"]), record
        assert (out / "trials" / trial / "metrics.json").exists() == (trial not in stopped)
        if trial in stopped:
            assert sorted(record["values"]) == ["1"]  # told to stop in the answer to its first report
    assert f"{len(stopped)} stopped early" in result.stdout
    assert all(f"trial {trial} stopped" in result.stdout for trial in stopped)
    assert processes_using(out) == []

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{6 - len(stopped)} finished before (skipped)" in rerun.stdout
    assert not any(f"trial {trial} running" in rerun.stdout for trial in stopped)
    assert records(out, "early-stopping.json") == decided


def test_local_tpe_resumes_with_the_proposals_it_recorded(tmp_path: Path, clips: Path) -> None:
    sweep: dict[str, Any] = tiny_sweep(clips)
    sweep["metadata"]["name"] = "tpe"  # type: ignore[index]
    spec = sweep["spec"]
    space = {"learningRate": {"logUniform": {"min": 1e-4, "max": 1e-1}}}
    spec["search"] = {"optimize": {"trials": 4, "seed": 5, "space": space}}
    spec["parallelism"] = 2
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    command = [str(BIN / "lorasweep"), "run", str(path), "--out", str(out), "--device", "cpu"]

    interrupt_after_a_trial(command, out)
    before = {record["index"]: (trial, record["training"]) for trial, record in records(out, "proposal.json").items()}
    assert 2 <= len(before) < 4, before

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = {record["index"]: (trial, record["training"]) for trial, record in records(out, "proposal.json").items()}
    assert sorted(after) == [0, 1, 2, 3]
    assert {index: after[index] for index in before} == before
    assert len({trial for trial, _ in after.values()}) == 4
    assert all(1e-4 <= training["learningRate"] <= 1e-1 for _, training in after.values())
    assert all(record["phase"] == "Succeeded" for record in records(out, "proposal.json").values())
    assert len(list(out.glob("trials/*/metrics.json"))) == 4
    assert (out / "report" / "report.md").exists()
