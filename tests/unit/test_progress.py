"""What `lorasweep run` shows: phases read from the trainer's event log, counts by state, the ETA, the
resume command, and the log level and version of both CLIs."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import pytest

from lorasweep_operator.cli import log_level, main
from lorasweep_operator.local import progress
from lorasweep_operator.local.progress import State, TrialProgress, eta_seconds, format_counts, read_log
from lorasweep_operator.local.runner import add_arguments, resume_command
from lorasweep_operator.local.terminal import Screen


def test_the_phase_follows_the_event_log(tmp_path: Path) -> None:
    log = tmp_path / "train.jsonl"
    assert read_log(log, 3).phase == "starting"
    steps = [
        ('{"event": "phase", "phase": "preparing"}', "preparing"),
        ('{"event": "dataset", "train": 8}', "epoch 1/3"),
        ('{"event": "step", "epoch": 1, "step": 1}', "epoch 1/3"),
        ('{"event": "epoch", "epoch": 1, "train_loss": 1.3, "val_accuracy": 0.25}', "epoch 2/3"),
        ('{"event": "step", "epoch": 2, "step": 2}', "epoch 2/3"),
        ('{"event": "epoch", "epoch": 3, "train_loss": 0.9, "val_accuracy": 0.5}', "testing"),
        ('{"event": "test", "test_accuracy": 0.5}', "publishing"),
    ]
    text = ""
    for line, phase in steps:
        text += line + "\n"
        log.write_text(text + '{"event": "ste')  # the trainer is writing the next line
        assert read_log(log, 3).phase == phase, line
    latest = read_log(log, 3).latest
    assert latest is not None and (latest.epoch, latest.val_accuracy, latest.train_loss) == (3, 0.5, 0.9)


def test_counts_show_any_state_name_in_a_stable_order() -> None:
    assert format_counts({"done": 2, "pending": 1}) == "2 done, 0 running, 0 failed, 1 pending"
    # A state another part adds (early stopping's "stopped", say) appears where it belongs, others at the end.
    assert format_counts({"failed": 1, "stopped": 2, "running": 1, "parked": 3}) == (
        "0 done, 1 running, 2 stopped, 1 failed, 3 parked"
    )
    trials = [
        TrialProgress("a", "baseline", 2, State.SUCCEEDED),
        TrialProgress("b", "x", 2, State.DONE_BEFORE),
        TrialProgress("c", "y", 2, State.FAILED),
    ]
    assert progress.counts(trials) == "2 done, 0 running, 1 failed"


def trial(state: State, started: float | None = None, finished: float | None = None, **more: object) -> TrialProgress:
    return TrialProgress("t", "x", 4, state, started=started, finished=finished, **more)  # type: ignore[arg-type]


def test_eta_comes_from_measured_trial_times() -> None:
    # Nothing measured yet: no guess.
    assert eta_seconds([trial(State.RUNNING, started=0.0), trial(State.PENDING)], 1, 2, now=10.0) is None
    # One epoch of four after 30 s: a trial takes about 120 s; the running one has 90 s left, and the
    # pending one starts in the free slot now: 120 s.
    running = trial(State.RUNNING, started=0.0, epoch=1, epoch_finished=30.0)
    assert eta_seconds([running, trial(State.PENDING)], 1, 2, now=30.0) == pytest.approx(120.0)
    # Trials finished in this run measure it: 100 s each. Two slots, one running (40 s in), three to launch:
    # slot A: 60 then +100 = 160; slot B: 100, then 200: the last finishes at 200 s.
    trials = [
        trial(State.SUCCEEDED, started=0.0, finished=100.0),
        trial(State.RUNNING, started=60.0),
        *(trial(State.PENDING) for _ in range(3)),
    ]
    assert eta_seconds(trials, 3, 2, now=100.0) == pytest.approx(200.0)
    # Trials skipped as done before say nothing about how long one takes.
    assert eta_seconds([trial(State.DONE_BEFORE), trial(State.PENDING)], 1, 1, now=5.0) is None
    assert progress.duration(3725) == "1h02m" and progress.duration(75) == "1m15s"


def test_a_pipe_gets_plain_lines_and_no_redraws() -> None:
    out = io.StringIO()
    screen = Screen(out, "sweep s", total=2, slots=1, interactive=False)
    screen.update(1, "1 done", ["  t  epoch 1/2"])
    screen.say("trial t succeeded")
    screen.close()
    assert out.getvalue() == "trial t succeeded\n"


def test_a_terminal_gets_the_bar_and_one_line_per_running_trial() -> None:
    out = io.StringIO()
    screen = Screen(out, "sweep s", total=4, slots=2, interactive=True)
    screen.update(1, "1 done, 1 running, 0 failed, 2 pending; ETA 2m00s", ["  t1  epoch 2/8  val_acc  50.0%"])
    screen.say("trial t2 failed")
    screen.close()
    text = out.getvalue()
    assert "sweep s |" in text and "| 1/4 trials  1 done, 1 running, 0 failed, 2 pending; ETA 2m00s" in text
    assert "  t1  epoch 2/8  val_acc  50.0%" in text
    assert "trial t2 failed\n" in text


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_the_resume_command_repeats_the_file_folder_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["pytest"])  # not called as lorasweep: the command on PATH
    assert resume_command(parse("s.yaml")) == ["lorasweep", "run", "s.yaml"]
    assert resume_command(parse("my sweep.yaml", "--out", "o", "-p", "3", "--device", "cpu", "-n", "ns")) == [
        "lorasweep",
        "run",
        "my sweep.yaml",
        "--out",
        "o",
        "--parallel",
        "3",
        "--namespace",
        "ns",
        "--device",
        "cpu",
    ]
    assert resume_command(parse("s.yaml", "--to-storage")) == ["lorasweep", "run", "s.yaml", "--to-storage"]
    monkeypatch.setattr("sys.argv", [".venv/bin/lorasweep", "run", "s.yaml"])
    assert resume_command(parse("s.yaml")) == [".venv/bin/lorasweep", "run", "s.yaml"]


def test_commands_log_warnings_only_unless_asked() -> None:
    class Command:
        pass

    class Service:
        LOG_LEVEL = logging.INFO

    assert log_level(Command, 0) == logging.WARNING
    assert log_level(Command, 1) == logging.INFO
    assert log_level(Command, 5) == logging.DEBUG
    assert log_level(Service, 0) == logging.INFO
    assert log_level(Service, 1) == logging.DEBUG


def test_both_clis_print_their_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from lorasweep_trainer.cli import build_parser as trainer_parser

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"lorasweep {version('lorasweep')}\n"
    with pytest.raises(SystemExit) as exit_info:
        trainer_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"lorasweep-trainer {version('lorasweep')}\n"
