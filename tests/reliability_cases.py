"""What the reliability tests share between the unit and the integration suites: a small sweep spec, a trial's
succeeded termination message and metrics.json, and the status of a large sweep whose trials all finished (built
by the real, pure aggregation)."""

from __future__ import annotations

from typing import Any

from lorasweep_operator import planning
from lorasweep_operator import status as statuses
from lorasweep_operator.spec import LoraSweepStatus, parse_spec
from lorasweep_trainer.results import TerminationSummary, TrialMetrics


def spec(**changes: Any) -> dict[str, Any]:
    # A command of its own and a preset (no weights to fetch): these sweeps have no preparation step, their first
    # pass launches trials.
    return {
        "image": "trainer:1",
        "command": ["python", "-m", "trial_stand_in"],
        "model": {"preset": "tiny", "framesPerClip": 4},
        "dataset": {"source": "s3://b/clips/"},
        "search": {"list": [{"learningRate": (i + 1) * 1e-4} for i in range(3)]},
        "storage": {"output": "s3://b/out/"},
        "parallelism": 2,
        **changes,
    }


def succeeded(trial: str, accuracy: float) -> str:
    return TerminationSummary(trial=trial, status="Succeeded", metrics={"val_accuracy": accuracy}).encode()


def trial_metrics(trial: str, accuracy: float, sweep: str = "s", **changes: Any) -> TrialMetrics:
    """A complete metrics.json of one trial, val_accuracy `accuracy`."""
    params = {"learning_rate": 1e-4, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.1, "epochs": 5,
              "batch_size": 1, "gradient_accumulation_steps": 4, "weight_decay": 0.01, "frames_per_clip": 8, "seed": 42}  # fmt: skip
    return TrialMetrics.model_validate(
        {
            "sweep": sweep,
            "trial": trial,
            "params": params,
            "classes": ["a", "b"],
            "dataset": {"videos_per_class": 2, "train": 2, "val": 1, "test": 1},
            "epochs": [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.5, "val_accuracy": accuracy}],
            "best_epoch": 1,
            "train_accuracy": 0.5,
            "val_accuracy": accuracy,
            "test_accuracy": 0.5,
            "per_class": {},
            "confusion_matrix": [[1, 0], [0, 1]],
            "trainable_parameters": 1,
            "total_parameters": 2,
            "inference_ms_per_video": 1.0,
            "train_seconds": 1.0,
            "git_commit": "0" * 40,
            "model": "tiny",
            "device": "cpu",
            "started_at": "t0",
            "finished_at": "t1",
            **changes,
        }  # fmt: skip
    )


def finished_status(
    count: int, name: str = "big", **changes: Any
) -> tuple[LoraSweepStatus, list[planning.PlannedTrial]]:
    """The status of a `count`-trial grid sweep whose trials all succeeded, val_accuracy rising with the index."""
    rates = [round(1e-5 * (i + 1), 8) for i in range(100)]
    decays = [round(0.001 * (j + 1), 6) for j in range(-(-count // 100))]
    sweep = parse_spec(spec(search={"grid": {"learningRate": rates, "weightDecay": decays}}, **changes))
    plan = planning.plan(sweep, name)[:count]
    jobs = [
        statuses.ObservedJob(
            t.job_name, t.id, "Succeeded", summary=TerminationSummary.decode(succeeded(t.id, t.index / count))
        )
        for t in plan
    ]
    result = statuses.aggregate(sweep, plan, jobs, LoraSweepStatus(), 1, "2025-01-01T00:00:00Z")
    return result.status, plan
