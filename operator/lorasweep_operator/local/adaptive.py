"""What `lorasweep run` keeps for adaptive sweeps, as files in its state folder, so a re-run decides the same.

- spec.earlyStopping: ``trials/<trial>/early-stopping.json`` holds the trial's metric per epoch (read from its
  event log) and the rung decisions made (`early_stopping.decide`, the operator's rule); a trial with a stop
  decision is Stopped and is not run again.
- search.optimize: ``trials/<trial>/proposal.json`` holds each proposal (index, training, seed) and, once it has
  finished, its phase and objective; the next proposals are planned from these files alone, as the operator
  plans from its Jobs and status.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lorasweep_operator.planning import PlannedTrial, Recorded
from lorasweep_trainer.config import TrainingConfig

EARLY_STOPPING_FILE = "early-stopping.json"
PROPOSAL_FILE = "proposal.json"


def epoch_metrics(path: Path) -> dict[int, dict[str, float]]:
    """Every ``epoch`` event of a trainer event log (epoch -> its numbers); a line still being written is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    found: dict[int, dict[str, float]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "epoch" and isinstance(record.get("epoch"), int):
            found[record["epoch"]] = {
                key: float(value)
                for key, value in record.items()
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            }
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, sort_keys=True))
    partial.replace(path)  # a run killed mid-write leaves the previous record, never half of one


def read_early_stopping(folder: Path) -> tuple[dict[int, float], dict[int, dict[str, Any]]]:
    """(metric per epoch, decisions per rung) recorded for one trial."""
    record = _read(folder / EARLY_STOPPING_FILE)
    values = {int(epoch): float(value) for epoch, value in (record.get("values") or {}).items()}
    decisions = {int(rung): dict(item) for rung, item in (record.get("decisions") or {}).items()}
    return values, decisions


def write_early_stopping(folder: Path, values: dict[int, float], decisions: dict[int, dict[str, Any]]) -> None:
    record = {"values": {str(e): v for e, v in values.items()}, "decisions": {str(r): d for r, d in decisions.items()}}
    _write(folder / EARLY_STOPPING_FILE, record)


def write_proposal(
    folder: Path, trial: PlannedTrial | Recorded, phase: str = "Pending", objective: float | None = None
) -> None:
    record = {
        "index": trial.index,
        "id": trial.id,
        "seed": trial.seed,
        "training": trial.training.model_dump(mode="json", by_alias=True),
        "phase": phase,
        "objective": objective,
    }
    _write(folder / PROPOSAL_FILE, record)


def recorded_proposals(state: Path) -> list[Recorded]:
    """Every proposal under ``state/trials/``; the ones without an outcome count as still to run."""
    found = []
    for path in sorted((state / "trials").glob(f"*/{PROPOSAL_FILE}")):
        record = _read(path)
        try:
            training = TrainingConfig.model_validate(record["training"])
            found.append(
                Recorded(
                    index=int(record["index"]),
                    id=str(record["id"]),
                    training=training,
                    seed=int(record["seed"]),
                    phase=record.get("phase") or "Pending",
                    objective=record.get("objective"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a record from another version: that trial is proposed again
    return found
