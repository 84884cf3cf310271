"""Early stopping across trials: ASHA's rung decisions (asynchronous successive halving). Pure; no cluster, no clock.

Rungs are the epochs ``minEpochs x reductionFactor^k`` below a trial's own epochs (its last epoch is its end,
not a rung). When a trial has reported its metric at a rung and no decision for that rung is recorded yet, it
is compared with every result known at that rung, its own included, from trials running, finished or stopped:
it continues when it is among the best ``max(1, n // reductionFactor)`` of those ``n`` (ties with the cutoff
continue), else it is stopped. A missing or NaN value counts as the worst.

Decisions are recorded once and never revisited (a trial let through at rung 1 is not stopped later because of
results that came after it: ASHA's promotions are final). A late result, one for a rung below a rung the trial
has already passed, is compared against but not decided on; a rung whose report was lost is skipped and the next
rung decides. Undecided rungs are decided together, each against the same set of results, so the outcome depends
on the results only, never on the order of events or passes: a restarted operator that reads the same results
and recorded decisions makes the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lorasweep_trainer.config import Goal


@dataclass(frozen=True)
class Rule:
    """What `spec.earlyStopping` asks for, resolved (metric and goal from the objective when not given)."""

    metric: str
    goal: Goal
    reduction_factor: int = 3
    min_epochs: int = 1


@dataclass(frozen=True)
class Decision:
    trial: str
    rung: int
    stop: bool
    cutoff: float
    compared: int  # results at the rung, this trial's included

    def to_json(self) -> dict[str, object]:
        return {"stop": self.stop, "cutoff": self.cutoff, "compared": self.compared}


@dataclass(frozen=True)
class History:
    """What is known of one trial: its planned epochs, its metric per reported epoch, the decisions recorded."""

    epochs: int
    values: Mapping[int, float] = field(default_factory=dict)
    decided: Mapping[int, bool] = field(default_factory=dict)  # rung -> stopped there
    finished: bool = False  # ended by itself (succeeded or failed): nothing left to stop

    @property
    def stopped(self) -> bool:
        return any(self.decided.values())


def rungs(rule: Rule, epochs: int) -> list[int]:
    """The rung epochs of a trial of `epochs` epochs, e.g. minEpochs 1, factor 3, 10 epochs: [1, 3, 9]."""
    found, rung = [], rule.min_epochs
    while rung < epochs:
        found.append(rung)
        rung *= rule.reduction_factor
    return found


def _score(value: float | None, goal: Goal) -> float:
    """Higher is better; unknown and NaN are the worst."""
    if value is None or math.isnan(value):
        return -math.inf
    return value if goal == "maximize" else -value


def cutoff(values: Sequence[float], rule: Rule) -> float:
    """The worst value that still continues among `values` (at least one value)."""
    keep = max(1, len(values) // rule.reduction_factor)
    ranked = sorted(values, key=lambda value: _score(value, rule.goal), reverse=True)
    return ranked[keep - 1]


def decide(rule: Rule, histories: Mapping[str, History]) -> list[Decision]:
    """The decisions due now: every reported rung of a live trial with no decision recorded, in trial order."""
    at_rung: dict[int, list[float]] = {}
    for history in histories.values():
        for epoch, value in history.values.items():
            at_rung.setdefault(epoch, []).append(value)
    decisions = []
    for trial in sorted(histories):
        history = histories[trial]
        if history.finished or history.stopped:
            continue
        latest = max(history.values, default=0)
        passed = max(history.decided, default=0)
        for rung in rungs(rule, history.epochs):
            if rung <= passed:
                continue  # decided, or a late result below a rung already passed: promotions are final
            if rung not in history.values:
                if rung < latest:
                    continue  # that epoch's report was lost; a later rung decides
                break  # not there yet
            value = history.values[rung]
            line = cutoff(at_rung[rung], rule)
            stop = _score(value, rule.goal) < _score(line, rule.goal)
            decisions.append(Decision(trial, rung, stop, line, len(at_rung[rung])))
            if stop:
                break
    return decisions
