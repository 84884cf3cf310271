"""The operator on the real control plane: a subprocess `lorasweep operator --namespace NS` with the
deploy/rbac ServiceAccount's token, real Jobs run by the Job controller, pods run by the dev node agent."""

from __future__ import annotations

import time
from typing import Any

import pytest
from operator_harness import (
    REPORTS,
    OperatorProcess,
    apply,
    condition,
    events,
    get_sweep,
    job_finished,
    learning_rates,
    list_jobs,
    list_pods,
    sweep_manifest,
    wait_phase,
)

from fixtures_cluster import wait_for


def test_parallelism_2_with_5_trials_never_runs_more_than_2_and_succeeds(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    rates = (1e-3, 2e-3, 5e-3, 3e-3, 4e-3)
    assert (
        apply(cluster, sweep_manifest("par", namespace, parallelism=2, search=learning_rates(*rates))).returncode == 0
    )
    most_running = 0
    seen_jobs: set[str] = set()
    deadline = time.monotonic() + 180
    while True:
        jobs = list_jobs(cluster, namespace)
        seen_jobs.update(job["metadata"]["name"] for job in jobs)
        unfinished = [job for job in jobs if not job_finished(job)]
        most_running = max(most_running, len(unfinished))
        assert len(unfinished) <= 2, [job["metadata"]["name"] for job in unfinished]
        if (get_sweep(cluster, namespace, "par").get("status") or {}).get("phase") == "Succeeded":
            break
        assert time.monotonic() < deadline, operator.log()
        time.sleep(0.2)
    assert most_running == 2 and len(seen_jobs) == 5

    status = get_sweep(cluster, namespace, "par")["status"]
    assert status["counts"] == {"total": 5, "pending": 0, "running": 0, "succeeded": 5, "failed": 0, "stopped": 0}
    best = status["best"]
    assert best["params"]["learningRate"] == 5e-3 and best["objective"] == pytest.approx(0.5)
    assert best["metric"] == "val_accuracy" and best["metricsUri"].endswith(f"/trials/{best['trial']}/metrics.json")
    assert [row["objective"] for row in status["trials"]] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    assert status["observedGeneration"] == 1 and status["completionTime"] and status["startTime"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Complete"] == ("True", "AllTrialsFinished")
    assert conditions["SpecValid"] == ("True", "Valid")
    table = cluster.kubectl("get", "lsw", "par", "-n", namespace).stdout.splitlines()
    assert table[1].split()[1:8] == [
        "Succeeded",
        "5",
        "5",
        "0",
        "0",
        "0",
        "0.5",
    ]  # phase, trials, succeeded, failed, stopped, running, best
    reasons = events(cluster, namespace, "par")
    assert {"TrialsLaunched", "TrialSucceeded", "NewBest", "AllTrialsFinished"} <= set(reasons)
    assert operator.metric("lorasweep_operator_jobs_created_total", namespace=namespace, sweep="par") == 5
    assert operator.metric("lorasweep_operator_trials", namespace=namespace, sweep="par", phase="Succeeded") == 5
    assert operator.metric("lorasweep_operator_best_objective", namespace=namespace, sweep="par") == pytest.approx(0.5)


def test_trial_exiting_2_fails_without_retry(cluster: Any, namespace: str, operator: OperatorProcess) -> None:
    manifest = sweep_manifest("bad-trial", namespace, parallelism=2, maxFailedTrials=0, backoffLimit=3,
                              search=learning_rates(1e-3, 0.6))  # fmt: skip
    assert apply(cluster, manifest).returncode == 0
    status = wait_phase(cluster, namespace, "bad-trial", ("Failed",))["status"]
    failed = next(row for row in status["trials"] if row["phase"] == "Failed")
    assert failed["params"]["learningRate"] == 0.6
    assert (failed["reason"], failed["message"]) == ("InvalidConfig", "learningRate too high")
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Failed"] == ("True", "TooManyFailedTrials")
    job = next(j for j in list_jobs(cluster, namespace) if j["metadata"]["name"] == failed["job"])
    failure = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failure["reason"] == "PodFailurePolicy"
    pods = [p for p in list_pods(cluster, namespace) if p["metadata"]["labels"]["lorasweep.dev/trial"] == failed["id"]]
    assert len(pods) == 1  # backoffLimit 3, yet exit code 2 was never retried
    wait_phase(cluster, namespace, "bad-trial", ("Failed",))
    wait_for(
        "the good trial to finish", lambda: get_sweep(cluster, namespace, "bad-trial")["status"].get("completionTime")
    )


def test_operator_killed_between_job_creations_leaves_exactly_one_job_per_trial(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    rates = [round(1e-4 * (i + 1), 6) for i in range(12)]
    manifest = sweep_manifest("restart", namespace, parallelism=12, search=learning_rates(*rates))
    operator.kill()
    assert apply(cluster, manifest).returncode == 0
    # Restart and SIGKILL as soon as the first Jobs appear, over and over, until all twelve exist.
    for _ in range(8):
        before = len(list_jobs(cluster, namespace))
        if before == 12:
            break
        operator.start()
        wait_for("a new Job", lambda b=before: len(list_jobs(cluster, namespace)) > b, timeout=60, interval=0.02)
        operator.kill()
    operator.start()
    status = wait_phase(cluster, namespace, "restart", ("Succeeded",))["status"]
    jobs = list_jobs(cluster, namespace)
    trials = [job["metadata"]["labels"]["lorasweep.dev/trial"] for job in jobs]
    assert len(jobs) == 12 and sorted(trials) == sorted({row["id"] for row in status["trials"]})
    assert status["counts"]["succeeded"] == 12
    pods = list_pods(cluster, namespace)
    assert len(pods) == 12  # every trial ran once
    assert operator.starts >= 3


def test_finished_result_survives_its_job_and_deleting_the_sweep_deletes_its_jobs(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    assert (
        apply(cluster, sweep_manifest("keep", namespace, parallelism=2, search=learning_rates(1e-3, 2e-3))).returncode
        == 0
    )
    before = wait_phase(cluster, namespace, "keep", ("Succeeded",))["status"]
    victim = before["best"]["job"]
    passes = operator.metric("lorasweep_operator_reconciles_total", trigger="job")
    cluster.kubectl("delete", "job", victim, "-n", namespace, "--cascade=foreground", "--wait=true")
    # The deletion's watch event runs a pass; the status it writes must still hold the result.
    wait_for(
        "a pass after the deletion",
        lambda: operator.metric("lorasweep_operator_reconciles_total", trigger="job") > passes,
    )
    after = get_sweep(cluster, namespace, "keep")["status"]
    assert after["best"] == before["best"]
    assert after["trials"] == before["trials"]
    assert after["counts"] == before["counts"] and after["phase"] == "Succeeded"
    assert victim not in {job["metadata"]["name"] for job in list_jobs(cluster, namespace)}  # not relaunched

    cluster.kubectl("delete", "lsw", "keep", "-n", namespace, "--wait=true")
    every_job = "lorasweep.dev/sweep"  # the report Job's too
    wait_for("the sweep's Jobs to be garbage collected", lambda: not list_jobs(cluster, namespace, every_job), 120)


def test_suspend_pauses_launching(cluster: Any, namespace: str, operator: OperatorProcess) -> None:
    manifest = sweep_manifest("paused", namespace, suspend=True, search=learning_rates(1e-3, 2e-3))
    assert apply(cluster, manifest).returncode == 0
    status = wait_phase(cluster, namespace, "paused", ("Suspended",))["status"]
    assert status["counts"]["pending"] == 2 and list_jobs(cluster, namespace) == []
    cluster.kubectl("patch", "lsw", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    status = wait_phase(cluster, namespace, "paused", ("Succeeded",))["status"]
    assert status["counts"]["succeeded"] == 2 and status["observedGeneration"] == 2


def test_a_failed_report_job_warns_and_leaves_the_sweep_succeeded(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    """The stand-in trial writes no metrics and the sweep names storage its pods cannot reach (no endpoint, no
    credentials), so the report Job fails: retried for exit code 3, then recorded without touching the phase."""
    assert apply(cluster, sweep_manifest("unreported", namespace, search=learning_rates(1e-3))).returncode == 0

    def report_settled() -> dict[str, Any] | None:
        status = get_sweep(cluster, namespace, "unreported").get("status") or {}
        found = condition(status, "ReportWritten")
        return status if found and found[0] != "Unknown" else None

    status = wait_for("the report Job's outcome", report_settled, timeout=180, interval=0.5)
    state, reason, message = condition(status, "ReportWritten") or ("", "", "")
    assert (state, reason) == ("False", "ReportJobFailed"), (message, operator.log())
    assert "object storage failed" in message  # from the report's termination message
    assert status["phase"] == "Succeeded" and "reportUri" not in status
    assert condition(status, "Complete") == ("True", "AllTrialsFinished", status["message"])
    (job,) = list_jobs(cluster, namespace, REPORTS)
    failure = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failure["reason"] == "BackoffLimitExceeded"
    assert len(list_pods(cluster, namespace, REPORTS)) == 3  # backoffLimit 2: exit code 3 is worth retrying
    assert {"ReportJobCreated", "ReportFailed"} <= set(events(cluster, namespace, "unreported"))
    assert len(list_jobs(cluster, namespace)) == 1  # the report Job never counts as a trial
