"""What `lorasweep run` shows while trials run: trials by state, and each running trial's epoch and accuracy.

The epoch and accuracy come from the trainer's event log (``train.jsonl``: one JSON object per line,
``{"event": "epoch", "epoch": 2, "val_accuracy": 0.55, ...}``), read as it grows. Pure apart from
reading that file; the runner owns processes and the terminal.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DONE_BEFORE = "done before"
    STOPPED = "stopped"  # ended early by spec.earlyStopping


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


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    val_accuracy: float | None
    train_loss: float | None


def last_epoch(path: Path) -> EpochEvent | None:
    """The latest ``epoch`` event in a trainer event log; a line still being written is ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "epoch" and isinstance(record.get("epoch"), int):
            return EpochEvent(
                epoch=record["epoch"],
                val_accuracy=_number(record.get("val_accuracy")),
                train_loss=_number(record.get("train_loss")),
            )
    return None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def counts(trials: Sequence[TrialProgress]) -> str:
    by_state = Counter(t.state for t in trials)
    order = (State.RUNNING, State.PENDING, State.SUCCEEDED, State.FAILED, State.STOPPED, State.DONE_BEFORE)
    optional = (State.DONE_BEFORE, State.STOPPED)
    return ", ".join(f"{by_state[s]} {s.value}" for s in order if by_state[s] or s not in optional)


def render(sweep: str, trials: Sequence[TrialProgress], now: float) -> list[str]:
    """The progress block: a counts line, then one line per running trial."""
    lines = [f"sweep {sweep}: {len(trials)} trials: {counts(trials)}"]
    for t in trials:
        if t.state is not State.RUNNING:
            continue
        accuracy = f"val_acc {100 * t.val_accuracy:5.1f}%" if t.val_accuracy is not None else "val_acc   -   "
        elapsed = _duration(now - t.started) if t.started is not None else "-"
        lines.append(f"  {t.trial}  epoch {t.epoch}/{t.epochs}  {accuracy}  {elapsed}  {t.label}")
    return lines


def event(t: TrialProgress, now: float) -> str:
    """One line for a state change, for logs and terminals that cannot redraw."""
    took = f" in {_duration(now - t.started)}" if t.started is not None and t.state is not State.RUNNING else ""
    tail = f": {t.reason}" if t.reason else ""
    accuracy = f" val_acc={t.val_accuracy:.4f}" if t.val_accuracy is not None and t.state is State.SUCCEEDED else ""
    return f"trial {t.trial} {t.state.value}{took}{accuracy} ({t.label}){tail}"
