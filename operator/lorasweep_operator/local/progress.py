"""What `lorasweep run` shows while trials run: trials by state, an ETA, and each running trial's phase.

A running trial's phase comes from the trainer's event log (``train.jsonl``: one JSON object per line,
``{"event": "epoch", "epoch": 2, "val_accuracy": 0.55, ...}``), read as it grows: ``starting`` until the
first event (importing torch and building the model), then ``epoch k/n`` with the latest validation
accuracy, ``testing`` after the last epoch. Any step that writes ``{"event": "phase", "phase": NAME}``
(a preparation step, say) shows as NAME until training events follow. Counts are by state name, so a
state the runner adds later (stopped, say) just appears in the overall line.

Pure apart from reading that file; the runner owns processes, `terminal` owns the screen.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

STARTING = "starting"
TESTING = "testing"
PUBLISHING = "publishing"
DONE = "done"
# The overall line's order; states not listed follow in the order they first appear.
COUNT_ORDER = (DONE, "running", "stopped", "failed", "pending")
ALWAYS_SHOWN = (DONE, "running", "failed")


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DONE_BEFORE = "done before"
    STOPPED = "stopped"  # ended early by spec.earlyStopping


FINISHED_STATES = (State.SUCCEEDED, State.DONE_BEFORE)


@dataclass
class TrialProgress:
    trial: str
    label: str
    epochs: int
    state: State = State.PENDING
    epoch: int = 0
    train_loss: float | None = None
    val_accuracy: float | None = None
    started: float | None = None
    finished: float | None = None
    reason: str | None = None
    phase: str = STARTING
    epoch_finished: float | None = None  # when the latest epoch event was seen (monotonic), for the ETA


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    val_accuracy: float | None
    train_loss: float | None


@dataclass(frozen=True)
class LogState:
    """What a trainer's event log says so far: the phase, and the latest finished epoch (if any)."""

    phase: str
    latest: EpochEvent | None


def _records(path: Path) -> list[dict[str, object]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(record, dict):
            records.append(record)
    return records


def _epoch_event(record: Mapping[str, object]) -> EpochEvent | None:
    epoch = record.get("epoch")
    if record.get("event") != "epoch" or not isinstance(epoch, int):
        return None
    return EpochEvent(
        epoch=epoch, val_accuracy=_number(record.get("val_accuracy")), train_loss=_number(record.get("train_loss"))
    )


def last_epoch(path: Path) -> EpochEvent | None:
    """The latest ``epoch`` event in a trainer event log; a line still being written is ignored."""
    return read_log(path, epochs=0).latest


def read_log(path: Path, epochs: int) -> LogState:
    """The phase a trial of ``epochs`` epochs is in, from its event log (``starting`` while there is none)."""
    phase, latest = STARTING, None
    for record in _records(path):
        kind = record.get("event")
        if kind == "phase" and isinstance(record.get("phase"), str) and record["phase"]:
            phase = str(record["phase"])
        elif kind == "dataset":
            phase = f"epoch 1/{epochs}"
        elif kind == "step" and isinstance(record.get("epoch"), int):
            phase = f"epoch {record['epoch']}/{epochs}"
        elif (event := _epoch_event(record)) is not None:
            latest = event
            phase = f"epoch {event.epoch + 1}/{epochs}" if event.epoch < epochs else TESTING
        elif kind == "test":
            phase = PUBLISHING
    return LogState(phase=phase, latest=latest)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def display_state(t: TrialProgress) -> str:
    """The name a trial counts under in the overall line: finished trials, this run's or earlier, are 'done'."""
    return DONE if t.state in FINISHED_STATES else str(t.state.value)


def state_counts(trials: Iterable[TrialProgress]) -> dict[str, int]:
    return dict(Counter(display_state(t) for t in trials))


def format_counts(counts: Mapping[str, int]) -> str:
    """``3 done, 2 running, 1 failed``: the states in COUNT_ORDER, then any other, zeros only where always shown."""
    names = [*COUNT_ORDER, *(name for name in counts if name not in COUNT_ORDER)]
    return ", ".join(f"{counts.get(n, 0)} {n}" for n in names if counts.get(n, 0) or n in ALWAYS_SHOWN)


def counts(trials: Sequence[TrialProgress]) -> str:
    return format_counts(state_counts(trials))


def trial_seconds(trials: Sequence[TrialProgress]) -> float | None:
    """How long one trial takes, measured: the mean of trials finished in this run; before any has finished,
    extrapolated from running trials' finished epochs (start-up included, so it errs long)."""
    done = [
        t.finished - t.started
        for t in trials
        if t.state in FINISHED_STATES and t.started is not None and t.finished is not None
    ]
    if done:
        return sum(done) / len(done)
    guesses = [
        (t.epoch_finished - t.started) * t.epochs / t.epoch
        for t in trials
        if t.state is State.RUNNING and t.epoch > 0 and t.started is not None and t.epoch_finished is not None
    ]
    return sum(guesses) / len(guesses) if guesses else None


def eta_seconds(trials: Sequence[TrialProgress], to_launch: int, parallel: int, now: float) -> float | None:
    """Seconds until the last trial finishes: running trials finish after the measured trial time, and the
    ``to_launch`` trials still to start take a slot each as one frees up. None until a trial time is measured."""
    each = trial_seconds(trials)
    if each is None:
        return None
    slots = [max(0.0, each - (now - t.started)) for t in trials if t.state is State.RUNNING and t.started is not None]
    slots += [0.0] * max(0, parallel - len(slots))
    heapq.heapify(slots)
    for _ in range(to_launch):
        heapq.heappush(slots, heapq.heappop(slots) + each)
    return max(slots, default=0.0)


def overall(trials: Sequence[TrialProgress], eta: float | None) -> str:
    """The text beside the overall bar: counts by state and the ETA."""
    when = "ETA " + (duration(eta) if eta is not None else "after the first epoch")
    return f"{format_counts(state_counts(trials))}; {when}"


def trial_line(t: TrialProgress, now: float) -> str:
    """One running trial: id, phase, latest validation accuracy, time since it started, what it varies."""
    accuracy = f"val_acc {100 * t.val_accuracy:5.1f}%" if t.val_accuracy is not None else "val_acc   -   "
    elapsed = duration(now - t.started) if t.started is not None else "-"
    return f"  {t.trial}  {t.phase:<11}  {accuracy}  {elapsed}  {t.label}"


def render(sweep: str, trials: Sequence[TrialProgress], now: float, eta: float | None = None) -> list[str]:
    """The progress block as plain lines: the overall line, then one line per running trial."""
    over = sum(t.state not in (State.PENDING, State.RUNNING) for t in trials)
    lines = [f"sweep {sweep}: {over}/{len(trials)} trials; {overall(trials, eta)}"]
    lines += [trial_line(t, now) for t in trials if t.state is State.RUNNING]
    return lines


def event(t: TrialProgress, now: float) -> str:
    """One line for a state change, for logs and terminals that cannot redraw."""
    took = f" in {duration(now - t.started)}" if t.started is not None and t.state is not State.RUNNING else ""
    tail = f": {t.reason}" if t.reason else ""
    accuracy = f" val_acc={t.val_accuracy:.4f}" if t.val_accuracy is not None and t.state is State.SUCCEEDED else ""
    return f"trial {t.trial} {t.state.value}{took}{accuracy} ({t.label}){tail}"
