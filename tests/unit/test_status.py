"""Status aggregation and launch decisions, from Job and pod bodies, without a cluster."""

from __future__ import annotations

import json
from typing import Any

from lorasweep_operator import planning, status
from lorasweep_operator.spec import LoraSweepSpec, LoraSweepStatus, parse_spec
from lorasweep_trainer.results import TerminationSummary

NOW = "2025-10-06T12:00:00Z"
LATER = "2025-10-06T13:00:00Z"


def make_spec(values: int = 4, **changes: Any) -> LoraSweepSpec:
    return parse_spec(
        {
            "image": "trainer:1",
            "dataset": {"source": "s3://b/clips/"},
            "search": {"list": [{"learningRate": (i + 1) * 1e-4} for i in range(values)]},
            "storage": {"output": "s3://b/out/"},
            **changes,
        }
    )


def job(trial: planning.PlannedTrial, phase: str, reason: str = "", message: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": trial.job_name, "labels": {"lorasweep.dev/trial": trial.id}},
        "spec": {},
        "status": {"startTime": NOW},
    }
    if phase == "Running":
        body["status"]["active"] = 1
    elif phase == "Succeeded":
        body["status"].update(
            completionTime=LATER, conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": LATER}]
        )
    elif phase == "Failed":
        body["status"]["conditions"] = [
            {"type": "FailureTarget", "status": "True", "reason": reason},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": LATER},
        ]
    return body


def pod(trial: planning.PlannedTrial, message: str, finished: str = LATER) -> dict[str, Any]:
    terminated = {"exitCode": 0, "message": message, "finishedAt": finished}
    return {
        "metadata": {"labels": {"lorasweep.dev/trial": trial.id}},
        "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]},
    }


def success(trial: planning.PlannedTrial, val_accuracy: float) -> str:
    return TerminationSummary(
        trial=trial.id,
        status="Succeeded",
        metrics={"val_accuracy": val_accuracy, "test_accuracy": 0.5, "val_loss": 1 - val_accuracy},
        best_epoch=4,
        metrics_uri=f"s3://b/out/ns/s/trials/{trial.id}/metrics.json",
    ).encode()


def observe(
    plan: list[planning.PlannedTrial], phases: dict[int, str], accuracies: dict[int, float]
) -> list[status.ObservedJob]:
    jobs = [status.observe_job(job(plan[i], phase, reason="PodFailurePolicy")) for i, phase in phases.items()]
    pods = [pod(plan[i], success(plan[i], accuracy)) for i, accuracy in accuracies.items()]
    return status.with_summaries(jobs, status.summaries_by_trial(pods))


def test_observe_job_maps_conditions_to_trial_phases() -> None:
    trial = planning.plan(make_spec(1), "s")[0]
    assert status.observe_job(job(trial, "Pending")).phase == "Pending"
    assert status.observe_job(job(trial, "Running")).phase == "Running"
    done = status.observe_job(job(trial, "Succeeded"))
    assert (done.phase, done.completion_time, done.trial, done.name) == ("Succeeded", LATER, trial.id, trial.job_name)
    failed = status.observe_job(job(trial, "Failed", "PodFailurePolicy", "Container trainer exited with 2"))
    assert (failed.phase, failed.reason, failed.message) == (
        "Failed",
        "PodFailurePolicy",
        "Container trainer exited with 2",
    )
    suspended = job(trial, "Running")
    suspended["spec"]["suspend"] = True
    assert status.observe_job(suspended).phase == "Pending"


def test_launches_respect_parallelism_in_plan_order() -> None:
    spec = make_spec(5, parallelism=2)
    plan = planning.plan(spec, "s")
    empty = LoraSweepStatus()
    assert [t.index for t in status.launches(spec, plan, [], empty)] == [0, 1]
    two_running = observe(plan, {0: "Running", 1: "Pending"}, {})
    assert status.launches(spec, plan, two_running, empty) == []
    one_done = observe(plan, {0: "Succeeded", 1: "Running"}, {0: 0.5})
    assert [t.index for t in status.launches(spec, plan, one_done, empty)] == [2]
    assert status.launches(spec.model_copy(update={"suspend": True}), plan, [], empty) == []


def test_launches_stop_after_more_than_max_failed_trials() -> None:
    spec = make_spec(5, parallelism=5, maxFailedTrials=1)
    plan = planning.plan(spec, "s")
    one_failed = observe(plan, {0: "Failed"}, {})
    assert [t.index for t in status.launches(spec, plan, one_failed, LoraSweepStatus())] == [1, 2, 3, 4]
    two_failed = observe(plan, {0: "Failed", 1: "Failed"}, {})
    assert status.launches(spec, plan, two_failed, LoraSweepStatus()) == []
    result = status.aggregate(spec, plan, two_failed, LoraSweepStatus(), 1, NOW).status
    assert result.phase == "Failed"
    assert "more than maxFailedTrials=1" in (result.message or "")


def test_aggregate_counts_results_and_best_with_deterministic_ties() -> None:
    spec = make_spec(4, parallelism=4)
    plan = planning.plan(spec, "s")
    jobs = observe(plan, {0: "Succeeded", 1: "Succeeded", 2: "Succeeded", 3: "Running"}, {0: 0.6, 1: 0.8, 2: 0.8})
    result = status.aggregate(spec, plan, jobs, LoraSweepStatus(), 3, NOW)
    new = result.status
    assert new.phase == "Running"
    assert new.counts.model_dump() == {
        "total": 4,
        "pending": 0,
        "running": 1,
        "succeeded": 3,
        "failed": 0,
        "stopped": 0,
    }
    assert new.best is not None
    assert (new.best.trial, new.best.objective) == (plan[1].id, 0.8)  # tie with plan[2]: plan order wins
    assert new.best.metrics_uri == f"s3://b/out/ns/s/trials/{plan[1].id}/metrics.json"
    assert new.best.adapter_uri == f"s3://b/out/ns/s/trials/{plan[1].id}/adapter/"  # written beside metrics.json
    assert new.to_patch()["best"]["adapterUri"] == new.best.adapter_uri
    assert new.best.summary == "0.8 baseline"  # the list item equal to spec.training
    assert [row.id for row in new.trials] == [plan[1].id, plan[2].id, plan[0].id, plan[3].id]
    assert new.trials[0].metrics["test_accuracy"] == 0.5 and new.trials[0].best_epoch == 4
    assert new.observed_generation == 3 and new.start_time == NOW and new.completion_time is None
    assert {e.reason for e in result.events} == {"TrialSucceeded", "NewBest"}
    assert sum(e.reason == "TrialSucceeded" for e in result.events) == 3


def test_minimize_picks_the_lowest() -> None:
    spec = make_spec(3, objective={"metric": "val_loss"})
    plan = planning.plan(spec, "s")
    jobs = observe(plan, {0: "Succeeded", 1: "Succeeded", 2: "Succeeded"}, {0: 0.6, 1: 0.9, 2: 0.7})
    new = status.aggregate(spec, plan, jobs, LoraSweepStatus(), 1, NOW).status
    assert new.best is not None and new.best.trial == plan[1].id  # val_loss = 1 - 0.9
    assert new.phase == "Succeeded" and new.completion_time == NOW


def test_finished_result_survives_its_job_and_is_never_relaunched() -> None:
    spec = make_spec(2, parallelism=1)
    plan = planning.plan(spec, "s")
    first = status.aggregate(spec, plan, observe(plan, {0: "Succeeded"}, {0: 0.7}), LoraSweepStatus(), 1, NOW).status
    assert first.outcomes[plan[0].id].objective == 0.7
    # Round-trip through the API's JSON, then the Job is gone (ttlSecondsAfterFinished).
    stored = LoraSweepStatus.model_validate(json.loads(json.dumps(first.to_patch())))
    assert [t.index for t in status.launches(spec, plan, [], stored)] == [1]
    again = status.aggregate(spec, plan, [], stored, 1, LATER)
    row = next(r for r in again.status.trials if r.id == plan[0].id)
    assert (row.phase, row.objective, row.best_epoch) == ("Succeeded", 0.7, 4)
    assert again.status.best is not None and again.status.best.trial == plan[0].id
    assert again.events == []  # no duplicate TrialSucceeded


def test_failed_trial_carries_the_reason_and_the_trainer_message() -> None:
    spec = make_spec(1)
    plan = planning.plan(spec, "s")
    jobs = [status.observe_job(job(plan[0], "Failed", "PodFailurePolicy", "Container trainer exited with 2"))]
    summary = TerminationSummary(
        trial=plan[0].id, status="Failed", reason="InvalidConfig", message="epochs must be >= 1"
    )
    jobs = status.with_summaries(jobs, status.summaries_by_trial([pod(plan[0], summary.encode())]))
    result = status.aggregate(spec, plan, jobs, LoraSweepStatus(), 1, NOW)
    row = result.status.trials[0]
    assert (row.phase, row.reason, row.message) == ("Failed", "InvalidConfig", "epochs must be >= 1")
    assert result.status.phase == "Succeeded"  # 1 failure is within maxFailedTrials=3 and every trial is done
    assert [e.type for e in result.events if e.reason == "TrialFailed"] == ["Warning"]


def test_termination_messages_latest_pod_wins_and_logs_are_not_results() -> None:
    plan = planning.plan(make_spec(1), "s")
    pods = [pod(plan[0], "Traceback: boom", "2025-10-06T12:30:00Z"), pod(plan[0], success(plan[0], 0.75))]
    summaries = status.summaries_by_trial(pods)
    assert summaries[plan[0].id].metrics["val_accuracy"] == 0.75
    crashed = status.summaries_by_trial([pod(plan[0], "Traceback (most recent call last): boom")])
    assert crashed[plan[0].id].status == "Failed" and crashed[plan[0].id].reason == "NoSummary"
    # The text is not the program's summary, so none of it is kept: it may be a log tail holding secrets.
    assert crashed[plan[0].id].message == status.UNSTRUCTURED_MESSAGE
    assert status.summaries_by_trial([{"metadata": {"labels": {}}, "status": {}}]) == {}


def test_succeeded_without_summary_is_recorded_without_objective() -> None:
    spec = make_spec(1)
    plan = planning.plan(spec, "s")
    new = status.aggregate(spec, plan, observe(plan, {0: "Succeeded"}, {}), LoraSweepStatus(), 1, NOW).status
    assert new.trials[0].objective is None and "no termination message" in (new.trials[0].message or "")
    assert new.best is None and new.phase == "Succeeded"


def test_phases_and_conditions_keep_their_transition_times() -> None:
    spec = make_spec(2)
    plan = planning.plan(spec, "s")
    pending = status.aggregate(spec, plan, [], LoraSweepStatus(), 1, NOW).status
    assert pending.phase == "Pending" and pending.start_time is None
    running = status.aggregate(spec, plan, observe(plan, {0: "Running"}, {}), pending, 1, LATER).status
    assert running.phase == "Running"
    valid = next(c for c in running.conditions if c.type == "SpecValid")
    assert (valid.status, valid.last_transition_time) == ("True", NOW)
    suspended_spec = spec.model_copy(update={"suspend": True})
    suspended = status.aggregate(suspended_spec, plan, observe(plan, {0: "Running"}, {}), running, 2, LATER).status
    assert suspended.phase == "Suspended"
    assert next(c for c in suspended.conditions if c.type == "Suspended").status == "True"
    broken = status.invalid(suspended, "spec.search: bad", 3, LATER)
    assert broken.phase == "Failed" and broken.observed_generation == 3
    assert next(c for c in broken.conditions if c.type == "SpecValid").reason == "InvalidSpec"


def test_large_sweeps_keep_a_bounded_table_and_every_outcome() -> None:
    spec = make_spec(1000, parallelism=50)
    plan = planning.plan(spec, "s")
    phases = {i: "Succeeded" for i in range(900)} | {i: "Running" for i in range(900, 950)}
    phases |= {i: "Failed" for i in range(950, 952)}
    jobs = observe(plan, phases, {i: (i % 97) / 97 for i in range(900)})
    new = status.aggregate(spec, plan, jobs, LoraSweepStatus(), 1, NOW).status
    assert new.trials_truncated
    assert len(new.trials) == status.TOP_K * 2 + 2
    assert len(new.outcomes) == 902
    objectives = [row.objective for row in new.trials if row.phase == "Succeeded"]
    assert objectives == sorted(objectives, reverse=True)  # type: ignore[type-var]
    assert new.best is not None and new.best.objective == objectives[0]
    assert new.counts.model_dump() == {
        "total": 1000,
        "pending": 48,
        "running": 50,
        "succeeded": 900,
        "failed": 2,
        "stopped": 0,
    }
    size = len(json.dumps(new.to_patch()))
    assert size < 150_000, size  # the API server's limit is ~1.5 MB
