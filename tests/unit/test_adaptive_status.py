"""Stopped trials in the status (from their Jobs' annotations), the rung histories ASHA reads, the records
search.optimize replans from, and the progress wiring of rendered trial Jobs."""

from __future__ import annotations

import json
from typing import Any

from test_status import NOW, job, make_spec, pod, success

from lorasweep_operator import planning, rendering, status
from lorasweep_operator.early_stopping import decide
from lorasweep_operator.spec import LoraSweepStatus
from lorasweep_trainer.config import TrialConfig

EARLY = {"earlyStopping": {"algorithm": "asha", "reductionFactor": 3, "minEpochs": 1}, "training": {"epochs": 3}}


def annotated(body: dict[str, Any], progress: dict[int, float], decisions: dict[int, bool]) -> dict[str, Any]:
    body["metadata"]["annotations"] = {
        rendering.PROGRESS_ANNOTATION: json.dumps(
            {str(e): {"val_accuracy": v, "train_loss": 1.0, "val_loss": float("nan")} for e, v in progress.items()}
        ),
        rendering.EARLY_STOPPING_ANNOTATION: json.dumps(
            {str(r): {"stop": s, "cutoff": 0.5, "compared": 3} for r, s in decisions.items()}
        ),
    }
    return body


def test_a_stopped_trial_has_its_own_phase_last_metrics_and_reason() -> None:
    spec = make_spec(3, **EARLY)
    plan = planning.plan(spec, "s")
    bodies = [
        annotated(job(plan[0], "Running"), {1: 0.8}, {1: False}),
        annotated(job(plan[1], "Failed", reason="DeadlineExceeded"), {1: 0.2}, {1: True}),
        annotated(job(plan[2], "Failed", reason="BackoffLimitExceeded"), {1: 0.3}, {}),
    ]
    jobs = [status.observe_job(body) for body in bodies]
    assert [j.phase for j in jobs] == ["Running", "Stopped", "Failed"]
    new = status.aggregate(spec, plan, jobs, LoraSweepStatus(), 1, NOW)
    rows = {row.id: row for row in new.status.trials}
    stopped = rows[plan[1].id]
    assert stopped.phase == "Stopped" and stopped.objective is None and stopped.epochs_completed == 1
    assert stopped.metrics == {"val_accuracy": 0.2, "train_loss": 1.0}  # NaN has no place in JSON
    assert stopped.reason == "EarlyStopped"
    assert stopped.message == "stopped at epoch 1: val_accuracy=0.2 below the rung's cutoff 0.5 (best 1/3 of 3 results)"
    assert new.status.counts.model_dump() == {
        "total": 3, "pending": 0, "running": 1, "succeeded": 0, "failed": 1, "stopped": 1,
    }  # fmt: skip
    assert new.status.outcomes[plan[1].id].phase == "Stopped"
    assert new.status.outcomes[plan[1].id].rungs == {1: 0.2}
    assert "TrialStopped" in [event.reason for event in new.events]
    assert "1 stopped early" in (new.status.message or "")


def test_a_sweep_whose_trials_all_ended_or_stopped_has_succeeded() -> None:
    spec = make_spec(2, **EARLY)
    plan = planning.plan(spec, "s")
    bodies = [
        annotated(job(plan[0], "Succeeded"), {1: 0.8, 2: 0.9, 3: 0.9}, {1: False}),
        annotated(job(plan[1], "Failed", reason="DeadlineExceeded"), {1: 0.2}, {1: True}),
    ]
    jobs = status.with_summaries(
        [status.observe_job(body) for body in bodies], status.summaries_by_trial([pod(plan[0], success(plan[0], 0.9))])
    )
    new = status.aggregate(spec, plan, jobs, LoraSweepStatus(), 1, NOW).status
    assert new.phase == "Succeeded" and new.best is not None and new.best.trial == plan[0].id
    assert [row.phase for row in new.trials] == ["Succeeded", "Stopped"]
    # Jobs gone (ttlSecondsAfterFinished): the outcomes still tell ASHA what each trial reported.
    histories = status.histories(spec, plan, [], new)
    assert histories[plan[0].id].values == {1: 0.8} and histories[plan[1].id].values == {1: 0.2}  # rungs only
    assert all(history.finished for history in histories.values())


def test_histories_feed_the_rung_decisions() -> None:
    spec = make_spec(3, **EARLY)
    plan = planning.plan(spec, "s")
    jobs = [
        status.observe_job(annotated(job(t, "Running"), {1: v}, {})) for t, v in zip(plan, [0.3, 0.9, 0.5], strict=True)
    ]
    rule = status.stopping_rule(spec)
    assert rule is not None and (rule.metric, rule.goal) == ("val_accuracy", "maximize")
    decisions = decide(rule, status.histories(spec, plan, jobs, LoraSweepStatus()))
    assert {d.trial: d.stop for d in decisions} == {plan[0].id: True, plan[1].id: False, plan[2].id: True}


def test_optimize_records_come_from_jobs_and_outcomes() -> None:
    spec = make_spec(
        1,
        search={"optimize": {"trials": 4, "space": {"learningRate": {"logUniform": {"min": 1e-5, "max": 1e-2}}}}},
        parallelism=2,
    )
    first = planning.plan(spec, "s")
    bodies = [rendering.render_job(spec, "ns", "s", "uid", trial) for trial in first]
    for body, phase in zip(bodies, ["Succeeded", "Running"], strict=True):
        body["status"] = job(first[0], phase)["status"]
    jobs = status.with_summaries(
        [status.observe_job(body) for body in bodies],
        status.summaries_by_trial([pod(first[0], success(first[0], 0.7))]),
    )
    records = status.recorded(spec, bodies, jobs, LoraSweepStatus())
    assert [(r.index, r.id, r.phase, r.objective) for r in records] == [
        (0, first[0].id, "Succeeded", 0.7), (1, first[1].id, "Running", None),
    ]  # fmt: skip
    assert records[0].training == first[0].training
    # The status keeps what a deleted Job knew; planning from it alone proposes the same.
    after = status.aggregate(spec, planning.plan(spec, "s", history=records), jobs, LoraSweepStatus(), 1, NOW, total=4)
    assert after.status.counts.total == 4 and after.status.counts.pending == 2  # one proposed, one not yet
    outcome = after.status.outcomes[first[0].id]
    assert (outcome.index, outcome.params) == (0, first[0].training)
    from_outcomes = status.recorded(spec, [bodies[1]], jobs[1:], after.status)
    assert planning.plan(spec, "s", history=from_outcomes) == planning.plan(spec, "s", history=records)


def test_progress_reporting_is_rendered_only_for_early_stopping_with_an_endpoint() -> None:
    url = "http://lorasweep.lorasweep-system.svc:8082/v1/progress"
    spec = make_spec(1, **EARLY)
    (trial,) = planning.plan(spec, "s")
    body = rendering.render_job(spec, "ns", "s", "uid", trial, url)
    pod_spec = body["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["LORASWEEP_PROGRESS_URL"] == url
    assert env["LORASWEEP_PROGRESS_TOKEN"] == "/var/run/secrets/lorasweep.dev/progress/token"
    assert pod_spec["automountServiceAccountToken"] is False
    (volume,) = pod_spec["volumes"]
    assert volume["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "lorasweep", "expirationSeconds": 3600, "path": "token"}}
    ]
    assert container["volumeMounts"] == [
        {"name": volume["name"], "mountPath": "/var/run/secrets/lorasweep.dev/progress", "readOnly": True}
    ]
    TrialConfig.model_validate_json(env["LORASWEEP_TRIAL"])
    plain = rendering.render_job(make_spec(1), "ns", "s", "uid", planning.plan(make_spec(1), "s")[0], url)
    assert "volumes" not in plain["spec"]["template"]["spec"]
    assert rendering.render_job(spec, "ns", "s", "uid", trial) == rendering.render_job(
        spec, "ns", "s", "uid", trial, None
    )
    assert "volumes" not in rendering.render_job(spec, "ns", "s", "uid", trial)["spec"]["template"]["spec"]
