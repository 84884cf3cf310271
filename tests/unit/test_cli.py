"""`lorasweep validate`, `report`, `run` and `status`: what they print and their exit codes, no cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep_operator.cli import main
from lorasweep_operator.local.demo import demo_manifest
from lorasweep_operator.local.progress import State, TrialProgress, last_epoch, render
from lorasweep_operator.local.runner import visible_gpus

REPO = Path(__file__).resolve().parents[2]
DEMO_SWEEP = REPO / "operator" / "lorasweep_operator" / "local" / "demo-sweep.yaml"
REFERENCE = Path(__file__).parent / "data" / "reference-sweep"

BAD_SWEEP = """\
apiVersion: lorasweep.dev/v1alpha1
kind: LoraSweep
metadata: {name: bad}
spec:
  image: trainer
  dataset: {source: "s3://clips/", split: {train: 0.8, val: 0.15, test: 0.15}}
  training: {learningRate: -1}
  search: {groups: [{name: rank, values: [{lora: {rank: 8}}]}]}
  storage: {output: "s3://out/"}
"""


def test_validate_prints_the_trial_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(DEMO_SWEEP)]) == 0
    out = capsys.readouterr().out
    assert "LoraSweep default/demo is valid: 4 trials (groups search, seeds 42)" in out
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert [row.split()[2] for row in rows] == ["baseline", "learning-rate", "learning-rate", "lora-rank"]


def test_validate_lists_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(BAD_SWEEP)
    assert main(["validate", str(sweep)]) == 1
    err = capsys.readouterr().err
    assert f"{sweep} is not a valid sweep" in err
    assert "- spec.dataset.split: Value error, split fractions must sum to 1" in err
    assert "- spec.training.learningRate: Input should be greater than 0" in err
    assert "without lora.alpha; give alpha too" in err


def test_validate_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_report_writes_report_and_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(REFERENCE), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"report of 11 trials: {tmp_path / 'out' / 'report.md'}" in out
    assert "best by val_accuracy: Rank=64, Alpha=128 (trials ref-rank-64)" in out
    assert (tmp_path / "out" / "confusion-matrix.png").is_file()


def test_report_with_nothing_to_report_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "no readable metrics.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_run_rejects_a_bad_sweep_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(BAD_SWEEP)
    assert main(["run", str(sweep), "--out", str(tmp_path / "out")]) == 2
    assert "spec.training.learningRate" in capsys.readouterr().err
    assert main(["run", str(DEMO_SWEEP), "--parallel", "0", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_status_without_a_cluster_exits_3(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "lorasweep_operator.cli", "status", "demo"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 3, done.stderr
    assert "lorasweep status: get lorasweeps failed" in done.stderr


@pytest.mark.parametrize("command", ["demo", "run", "validate", "report", "status"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lorasweep" in capsys.readouterr().out


def test_progress_reads_the_trainer_event_log(tmp_path: Path) -> None:
    log = tmp_path / "train.jsonl"
    log.write_text(
        '{"event": "dataset", "train": 32}\n'
        '{"event": "epoch", "epoch": 1, "train_loss": 1.38, "val_accuracy": 0.25}\n'
        '{"event": "epoch", "epoch": 2, "train_loss": 1.2, "val_accuracy": 0.5625}\n'
        '{"event": "epoch", "epoch": 3, "val_acc'  # a line the trainer is still writing
    )
    latest = last_epoch(log)
    assert latest is not None and (latest.epoch, latest.val_accuracy) == (2, 0.5625)
    assert last_epoch(tmp_path / "missing.jsonl") is None
    trials = [
        TrialProgress("a1", "baseline", 8, State.RUNNING, epoch=2, val_accuracy=0.5625, started=0.0),
        TrialProgress("b2", "learning-rate: learningRate=0.01", 8),
        TrialProgress("c3", "lora-rank", 8, State.DONE_BEFORE),
    ]
    lines = render("demo", trials, now=75.0)
    assert lines[0] == "sweep demo: 1/3 trials; 1 done, 1 running, 0 failed, 1 pending; ETA after the first epoch"
    assert lines[1] == "  a1  starting     val_acc  56.2%  1m15s  baseline"
    assert len(lines) == 2


def test_gpus_are_handed_out_one_per_trial() -> None:
    assert visible_gpus("0,1", "auto") == ["0", "1"]
    assert visible_gpus("0,1", "cpu") == []
    assert visible_gpus("", "auto") == []
    assert visible_gpus(None, "cuda") == []


def test_demo_sweep_is_a_valid_four_trial_sweep(tmp_path: Path) -> None:
    from lorasweep_operator.planning import plan
    from lorasweep_operator.spec import parse_manifest

    manifest = parse_manifest(demo_manifest(tmp_path / "clips", tmp_path))
    assert manifest.spec.dataset.source == f"{tmp_path / 'clips'}/"
    assert manifest.spec.model.preset == "tiny"
    assert len(plan(manifest.spec, manifest.name)) == 4


def test_a_second_run_in_the_same_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl
    import os

    out = tmp_path / "out"
    out.mkdir()
    with (out / "run.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(str(os.getpid()))
        lock.flush()
        assert main(["run", str(DEMO_SWEEP), "--out", str(out)]) == 3
    assert f"another `lorasweep run` (pid {os.getpid()}) is working in {out}" in capsys.readouterr().err
    assert not (out / "trials").exists()
