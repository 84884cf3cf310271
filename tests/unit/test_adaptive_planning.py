"""search.optimize (TPE proposals rebuilt from the recorded trials) and search.fromSweep.refine (the reference's
suggested Phase 2 from its own results)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lorasweep_operator import planning
from lorasweep_operator.planning import Recorded
from lorasweep_operator.spec import LoraSweepSpec, SpecError, TrainingConfig, TrialStatus, parse_spec

REFERENCE = Path(__file__).parent / "data" / "reference-sweep" / "trials"
SPACE = {
    "learningRate": {"logUniform": {"min": 1e-5, "max": 1e-2}},
    "lora": {
        "rank": {"choice": [8, 16, 32, 64]},
        "alpha": {"choice": [16, 32, 64, 128]},
        "dropout": {"uniform": {"min": 0.0, "max": 0.3}},
    },
    "epochs": {"uniform": {"min": 2, "max": 6}},
}


def optimize_spec(trials: int = 12, seed: int = 7, parallelism: int = 3, **search: Any) -> LoraSweepSpec:
    return parse_spec(
        {
            "image": "trainer:1",
            "dataset": {"source": "s3://b/clips/"},
            "storage": {"output": "s3://b/out/"},
            "parallelism": parallelism,
            "search": {"optimize": {"trials": trials, "seed": seed, "space": SPACE}, **search},
        }
    )


def inside(training: TrainingConfig) -> bool:
    return (
        1e-5 <= training.learning_rate <= 1e-2
        and training.lora.rank in (8, 16, 32, 64)
        and 0.0 <= training.lora.dropout <= 0.3
        and 2 <= training.epochs <= 6
    )


def finish(trials: list[planning.PlannedTrial], score: Any) -> list[Recorded]:
    return [Recorded(t.index, t.id, t.training, t.seed, "Succeeded", score(t.training)) for t in trials]


def score(training: TrainingConfig) -> float:
    """A made-up objective peaking at learningRate 1e-3, rank 32."""
    return 1.0 - abs(math.log10(training.learning_rate) + 3) / 3 - abs(math.log2(training.lora.rank) - 5) / 10


def run_to_the_end(spec: LoraSweepSpec) -> list[planning.PlannedTrial]:
    """Propose, finish what is in flight, propose again: the loop the operator runs, pass by pass."""
    history: list[Recorded] = []
    while True:
        planned = planning.plan(spec, "tpe", history=history)
        new = [t for t in planned if t.index >= len(history)]
        if not new:
            return planned
        history += finish(new, score)


def test_first_proposals_fill_parallelism_and_are_deterministic() -> None:
    spec = optimize_spec()
    first = planning.plan(spec, "tpe")
    assert [t.index for t in first] == [0, 1, 2]
    assert first == planning.plan(spec, "tpe")
    assert all(inside(t.training) and t.group == "optimize" for t in first)
    assert all(t.training.epochs == round(t.training.epochs) for t in first)
    assert planning.plan(optimize_spec(seed=8), "tpe") != first


def test_recorded_proposals_stay_and_next_ones_depend_only_on_the_record() -> None:
    spec = optimize_spec()
    first = planning.plan(spec, "tpe")
    # Two finished, one still running: two slots free.
    history = finish(first[:2], score) + [Recorded(2, first[2].id, first[2].training, 42, "Running")]
    planned = planning.plan(spec, "tpe", history=history)
    assert planned[:3] == first and [t.index for t in planned] == [0, 1, 2, 3, 4]
    # A restarted operator reads the same record (in any order) and proposes the same trials.
    assert planning.plan(spec, "tpe", history=list(reversed(history))) == planned
    # Nothing free: no new proposal.
    running = [Recorded(t.index, t.id, t.training, 42, "Running") for t in first]
    assert planning.plan(spec, "tpe", history=running) == first


def test_a_whole_sweep_proposes_n_distinct_trials_inside_the_space_and_replays_exactly() -> None:
    spec = optimize_spec()
    trials = run_to_the_end(spec)
    assert len(trials) == 12 and len({t.id for t in trials}) == 12
    assert len({planning.trial_id(t.training, t.seed) for t in trials}) == 12  # no configuration twice
    assert all(inside(t.training) for t in trials)
    assert run_to_the_end(spec) == trials
    assert spec.search.optimize is not None and spec.search.optimize.resolved_startup_trials == 4


def test_stopped_and_failed_trials_are_evidence_but_not_results() -> None:
    spec = optimize_spec(trials=6, parallelism=1)
    first = planning.plan(spec, "tpe")
    stopped = [Recorded(0, first[0].id, first[0].training, 42, "Stopped", None, {1: 0.1})]
    failed = [Recorded(0, first[0].id, first[0].training, 42, "Failed")]
    after_stopped = planning.plan(spec, "tpe", history=stopped)
    after_failed = planning.plan(spec, "tpe", history=failed)
    assert len(after_stopped) == len(after_failed) == 2
    assert inside(after_stopped[1].training) and inside(after_failed[1].training)


def test_a_recorded_trial_outside_the_space_is_kept_but_not_told_to_the_sampler() -> None:
    spec = optimize_spec(trials=3, parallelism=1)
    odd = TrainingConfig.model_validate({"learningRate": 0.5, "lora": {"rank": 7, "alpha": 14}})
    planned = planning.plan(spec, "tpe", history=[Recorded(0, "odd", odd, 42, "Succeeded", 0.9)])
    assert planned[0].id == "odd" and inside(planned[1].training)


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"seeds": [1, 2]}, "search.optimize proposes every trial itself: give one seed"),
        ({"includeBaseline": True}, "search.optimize proposes every trial itself"),
    ],
)
def test_optimize_rejects_what_it_cannot_do(search: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        optimize_spec(**search)
    with pytest.raises(SpecError, match="search.optimize.space names no parameter"):
        parse_spec(
            {
                "image": "t",
                "dataset": {"source": "s3://b/c/"},
                "storage": {"output": "s3://b/o/"},
                "search": {"optimize": {"trials": 2, "space": {}}},
            }
        )


def reference_table() -> list[TrialStatus]:
    """The reference sweep's 11 results as the source sweep's trial table (best first, ties in name order)."""
    rows = []
    for path in sorted(REFERENCE.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        p = metrics["params"]
        training = TrainingConfig.model_validate(
            {
                "learningRate": p["learning_rate"],
                "lora": {"rank": p["lora_rank"], "alpha": p["lora_alpha"], "dropout": p["lora_dropout"]},
                "epochs": p["epochs"],
            }
        )
        group = metrics["group"]
        rows.append(
            TrialStatus(
                id=metrics["trial"],
                job=metrics["trial"],
                phase="Succeeded",
                group=group,
                seed=p["seed"],
                params=training,
                objective=metrics["val_accuracy"],
            )  # fmt: skip
        )
    return sorted(rows, key=lambda row: -(row.objective or 0))


def test_refine_gives_the_reference_reports_suggested_neighbours() -> None:
    table = reference_table()
    assert [row.id for row in table[:3]] == ["ref-rank-64", "ref-lr-1e-3", "ref-lr-5e-4"]
    neighbours = planning.neighbours(table, top=3)
    described = {group: planning.describe(TrainingConfig(), training) for group, training in neighbours}
    # "Test LR=7.5e-4 (between configs #2 and #3)" and "explore rank 24-48": the midpoint of 32 and 64, alpha = 2 x rank.
    assert described == {"lora-rank": "lora.rank=48 lora.alpha=96", "learning-rate": "learningRate=0.00075"}


def test_from_sweep_refine_plans_the_top_k_then_their_neighbours_with_the_override() -> None:
    spec = parse_spec(
        {
            "image": "t",
            "dataset": {"source": "s3://b/c/"},
            "storage": {"output": "s3://b/o/"},
            "search": {"fromSweep": {"name": "phase1", "top": 3, "refine": True, "override": {"epochs": 10}}},
        }
    )
    trials = planning.plan(spec, "phase2", reference_table())
    assert [t.group for t in trials] == [
        "lora-rank",
        "learning-rate",
        "learning-rate",
        "refine-lora-rank",
        "refine-learning-rate",
    ]
    assert all(t.training.epochs == 10 for t in trials)
    assert (trials[3].training.lora.rank, trials[3].training.lora.alpha) == (48, 96)
    assert trials[4].training.learning_rate == pytest.approx(7.5e-4)


def test_refine_skips_groups_no_better_than_the_baseline() -> None:
    table = reference_table()
    # Top 8 reaches alpha-ratio (best 66.67% = the baseline's) and dropout (a tie with it): nothing to refine there.
    assert [group for group, _ in planning.neighbours(table, top=8)] == ["lora-rank", "learning-rate"]


def test_refine_skips_a_group_whose_best_is_the_baseline_itself() -> None:
    table = reference_table()
    # The learning-rate group without its two winners: 2e-4 (the baseline) is then its best.
    worse = [row for row in table if row.id not in ("ref-lr-1e-3", "ref-lr-5e-4")]
    assert [group for group, _ in planning.neighbours(worse, top=len(worse))] == ["lora-rank"]
