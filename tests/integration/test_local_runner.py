"""`lorasweep run` with the real trainer on synthetic clips: an interrupted run resumes without
re-running finished trials, and nothing of the stopped trial is left running or half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def tiny_sweep(clips: Path) -> dict[str, Any]:
    return {
        "apiVersion": "lorasweep.dev/v1alpha1",
        "kind": "LoraSweep",
        "metadata": {"name": "resume"},
        "spec": {
            "image": "lorasweep-trainer:cpu",
            "model": {"preset": "tiny", "framesPerClip": 4},
            "dataset": {
                "source": f"{clips}/",
                "classes": {"sit_down": [8], "stand_up": [9], "other": "rest"},
                "videosPerClass": 4,
                "split": {"train": 0.5, "val": 0.25, "test": 0.25},
            },
            "training": {"epochs": 1, "batchSize": 2, "gradientAccumulationSteps": 1, "learningRate": 3.0e-3},
            "search": {"list": [{"learningRate": 1.0e-2}, {"learningRate": 3.0e-3}]},
            "parallelism": 1,
            "storage": {"output": "s3://unused/"},
        },
    }


def synthetic_clips(folder: Path) -> Path:
    """Four synthetic clips of each of three NTU actions, written to `folder`."""
    subprocess.run(
        [BIN / "lorasweep-trainer", "synth", str(folder), "--actions", "8,9,23", "--clips-per-action", "4"],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_clips(tmp_path_factory.mktemp("clips"))


def processes_using(folder: Path) -> list[int]:
    """Live processes whose environment mentions ``folder`` (the runner gives each trial a TMPDIR there)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if str(folder).encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def interrupt_after_a_trial(command: list[str], out: Path) -> str:
    """Run `command` (a `lorasweep run`) until a trial has written its metrics.json, then Ctrl-C it; its output."""
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("trials/*/metrics.json")):
        assert runner.poll() is None, runner.communicate()[0]
        assert time.monotonic() < deadline, "no trial finished within 300 s"
        time.sleep(0.5)
    runner.send_signal(signal.SIGINT)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 130, output
    return output


def test_interrupted_run_resumes_without_rerunning_finished_trials(tmp_path: Path, clips: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(tiny_sweep(clips)))
    out = tmp_path / "out"
    command = [str(BIN / "lorasweep"), "run", str(sweep), "--out", str(out), "--device", "cpu"]

    first_output = interrupt_after_a_trial(command, out)
    assert "interrupted: finished trials are kept" in first_output

    finished = {p.parent.name: p for p in out.glob("trials/*/metrics.json")}
    assert len(finished) == 1, first_output
    ((trial, metrics),) = finished.items()
    before = (metrics.read_bytes(), metrics.stat().st_mtime_ns)
    # The stopped trial's process is gone and left neither metrics nor scratch files.
    assert processes_using(out) == []
    assert not list(out.glob("trials/*/tmp"))

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "sweep resume: 2 trials, 1 finished before (skipped)" in rerun.stdout
    assert f"trial {trial} running" not in rerun.stdout
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before
    # The trainer log is appended per launch: the finished trial started exactly once.
    assert (out / "trials" / trial / "trainer.log").read_text().count("trial starting") == 1
    assert len(list(out.glob("trials/*/metrics.json"))) == 2
    report = (out / "report" / "report.md").read_text()
    assert "**Trials:** 2 (2 configurations × 1 seed: 42)" in report
    assert f"report: {out / 'report' / 'report.md'}" in rerun.stdout
    assert os.access(out / "report" / "confusion-matrix.png", os.R_OK)


def run_sweep(sweep: dict[str, Any], folder: Path, out: Path) -> subprocess.CompletedProcess[str]:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return subprocess.run(
        [str(BIN / "lorasweep"), "run", str(path), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_failed_trials_stop_the_sweep_with_their_reason(tmp_path: Path, clips: Path) -> None:
    sweep = tiny_sweep(clips)
    spec: dict[str, Any] = sweep["spec"]  # type: ignore[assignment]
    spec["training"]["lora"] = {"targetModules": ["no_such_module"]}  # every trial fails (exit 2)
    spec["maxFailedTrials"] = 0
    out = tmp_path / "out"
    done = run_sweep(sweep, tmp_path, out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sweep resume: 0 succeeded, 1 failed" in done.stdout
    assert "stopped launching after 1 failure (maxFailedTrials=0); 1 trial not run" in done.stdout
    assert "invalid trial configuration: " in done.stdout and "no_such_module" in done.stdout
    assert "no trial succeeded, so there is no report" in done.stdout
    assert not (out / "report").exists()
    assert len(list(out.glob("trials/*/trainer.log"))) == 1


def test_an_unusable_dataset_fails_the_preparation_and_runs_no_trial(tmp_path: Path, clips: Path) -> None:
    sweep = tiny_sweep(clips)
    spec: dict[str, Any] = sweep["spec"]  # type: ignore[assignment]
    spec["dataset"]["classes"] = {"sit_down": [8], "jumping": [27], "other": "rest"}  # no clip of action 27
    out = tmp_path / "out"
    done = run_sweep(sweep, tmp_path, out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "preparation failed (DatasetUnusable: no clips for class(es) ['jumping']" in done.stdout
    assert "no trial ran" in done.stdout and not list(out.glob("trials/*/trainer.log"))


def test_trials_die_with_a_killed_runner(tmp_path: Path, clips: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(tiny_sweep(clips)))
    out = tmp_path / "out"
    runner = subprocess.Popen(
        [str(BIN / "lorasweep"), "run", str(sweep), "--out", str(out), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not processes_using(out):  # a trainer has started: its env (TMPDIR) names the folder
        assert runner.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    runner.kill()  # SIGKILL: no handler runs, no chance to stop the trials
    runner.wait()
    deadline = time.monotonic() + 30
    while processes_using(out):
        assert time.monotonic() < deadline, f"orphaned trainer processes: {processes_using(out)}"
        time.sleep(0.2)
    # Stopped, not left to finish on its own: an orphan would have gone on to write its metrics.json.
    assert not list(out.glob("trials/*/metrics.json"))
