"""Packed trials (spec.packing > 1), without a cluster: fixed packs by plan order, their Job, launches that count
pods, member phases from their own summaries, and the trainer's pack summary within the kubelet's limit."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from lorasweep_operator import planning, rendering
from lorasweep_operator import status as statuses
from lorasweep_operator.spec import LoraSweepStatus, parse_spec
from lorasweep_trainer.config import PACK_ENV, TERMINATION_MESSAGE_LIMIT, TRIAL_ENV, TrialConfig
from lorasweep_trainer.results import PackSummary, TerminationSummary

RATES = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]


def spec(packing: int, parallelism: int = 1) -> Any:
    return parse_spec(
        {
            "image": "i",
            "dataset": {"source": "s3://b/clips/"},
            "search": {"list": [{"learningRate": rate} for rate in RATES]},
            "storage": {"output": "s3://b/out/"},
            "packing": packing,
            "parallelism": parallelism,
        }
    )


def test_packs_are_fixed_by_plan_order() -> None:
    trials = planning.plan(spec(2), "sweep")
    names = [trial.job_name for trial in trials]
    assert names[0] == names[1] != names[2] == names[3] != names[4]
    assert all(name.startswith("sweep-") and "-pack-" in name and len(name) <= 63 for name in names)
    assert planning.plan(spec(2), "sweep") == trials  # a restarted operator finds the same packs
    assert [t.id for t in planning.plan(spec(1), "sweep")] == [t.id for t in trials]  # same trials, other Jobs


def test_the_pack_job_carries_every_member_and_no_single_trial() -> None:
    s = spec(3)
    members = planning.plan(s, "sweep")[:3]
    job = rendering.render_pack_job(s, "ns", "sweep", "uid", members)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert TRIAL_ENV not in env
    configs = [TrialConfig.model_validate(doc) for doc in json.loads(env[PACK_ENV])]
    assert [c.trial for c in configs] == [t.id for t in members]
    assert job["metadata"]["annotations"][rendering.TRIALS_ANNOTATION] == ",".join(t.id for t in members)
    assert job["metadata"]["labels"][rendering.TRIAL_LABEL].startswith("pack-")
    observed = statuses.observe_jobs(job)
    assert [o.trial for o in observed] == [t.id for t in members] and all(o.packed for o in observed)


def test_parallelism_counts_pods_not_trials() -> None:
    s = spec(2, parallelism=2)
    trials = planning.plan(s, "sweep")
    launched = statuses.launches(s, trials, [], LoraSweepStatus())
    assert [t.id for t in launched] == [t.id for t in trials[:4]]  # two packs of two
    running = [statuses.ObservedJob(t.job_name, t.id, "Running", packed=True) for t in trials[:2]]
    assert [t.id for t in statuses.launches(s, trials, running, LoraSweepStatus())] == [t.id for t in trials[2:4]]


def test_a_member_of_a_failed_pack_keeps_its_own_success() -> None:
    failed = statuses.ObservedJob("sweep-pack-x", "a", "Failed", reason="PodFailurePolicy", packed=True)
    summaries = {
        "a": TerminationSummary(trial="a", status="Succeeded", metrics={"val_accuracy": 0.5}),
        "b": TerminationSummary(trial="b", status="Failed", reason="InvalidConfig", message="no such module"),
    }
    jobs = statuses.with_summaries([failed, replace(failed, trial="b")], summaries)
    assert [job.phase for job in jobs] == ["Succeeded", "Failed"]


def test_a_pack_summary_fits_the_termination_message() -> None:
    long = "x" * 3000
    pack = PackSummary(
        pack=[
            TerminationSummary(
                trial=f"t{i}", status="Failed", reason="Error", message=long, metrics={"val_accuracy": 0.1}
            )
            for i in range(8)
        ]
    )
    text = pack.encode()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert [s.trial for s in PackSummary.model_validate_json(text).pack] == [f"t{i}" for i in range(8)]
