"""The report of a finished sweep, without a cluster: the report Job's rendering, the ReportWritten decisions
(pure), and `lorasweep report` as the report Job runs it (trial filter, failed trials, termination summary)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from test_rendering import CREDENTIAL_REFS, secret_keys

from lorasweep_operator import planning, rendering, status
from lorasweep_operator.cli import build_parser, main
from lorasweep_operator.report.model import ReportSummary
from lorasweep_operator.spec import LoraSweepSpec, LoraSweepStatus, TrialOutcome, TrialStatus, parse_spec

REFERENCE = Path(__file__).parent / "data" / "reference-sweep"
NOW = "2025-10-06T12:00:00Z"
LATER = "2025-10-06T13:00:00Z"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
BASE: dict[str, Any] = {
    "image": "registry.example/lorasweep-trainer:0.1.0",
    "dataset": {"source": "s3://bucket/nturgbd_rgb/"},
    "search": {"list": [{"learningRate": 1e-3}, {"learningRate": 2e-3}]},
    "storage": {"output": "s3://bucket/sweeps/", "endpoint": "http://minio:9000", "credentialsSecret": "s3"},
}


def spec_with(**changes: Any) -> LoraSweepSpec:
    return parse_spec({**BASE, **changes})


def report_job(**changes: Any) -> dict[str, Any]:
    failed = {"bbbbbbbbbb": "InvalidConfig: learningRate\n  too high"}
    return rendering.render_report_job(
        spec_with(**changes), "research", "phase1", "uid-123", ["cccccccccc", "aaaaaaaaaa"], failed
    )


# --- rendering ------------------------------------------------------------------------------------------------


def test_report_job_runs_lorasweep_report_over_the_sweeps_output() -> None:
    job = report_job()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "report"
    assert container["image"] == "registry.example/lorasweep-trainer:0.1.0"
    assert container["command"] == [
        "lorasweep", "report", "s3://bucket/sweeps/research/phase1/trials/",
        "--out", "s3://bucket/sweeps/research/phase1/report/",
        "--objective", "val_accuracy", "--goal", "maximize", "--sweep", "phase1",
        "--trials", "aaaaaaaaaa,cccccccccc",
        "--failed", "bbbbbbbbbb=InvalidConfig: learningRate too high",
    ]  # fmt: skip
    assert "args" not in container
    # The argv is one the real CLI accepts, and means what the operator meant.
    args = build_parser().parse_args(container["command"][1:])
    assert args.trials == ["aaaaaaaaaa", "cccccccccc"]
    assert args.failed == [("bbbbbbbbbb", "InvalidConfig: learningRate too high")]
    assert (args.objective, args.goal, args.sweep) == ("val_accuracy", "maximize", "phase1")


def test_report_job_has_the_trials_storage_access_and_no_gpu() -> None:
    job = report_job(serviceAccountName="trainer", resources={"limits": {"nvidia.com/gpu": 2}})
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert secret_keys(container) == CREDENTIAL_REFS
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env == {"LORASWEEP_TERMINATION_LOG": "/dev/termination-log", "AWS_ENDPOINT_URL_S3": "http://minio:9000"}
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert pod["serviceAccountName"] == "trainer"  # workload identity for S3, like the trials
    assert container["resources"] == rendering.REPORT_RESOURCES
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "ports" not in container


def test_report_job_meets_pod_security_restricted() -> None:
    pod = report_job()["spec"]["template"]["spec"]
    # The same restricted settings as a trial's pod (test_rendering checks those field by field).
    trial = planning.plan(spec_with(), "phase1")[0]
    trial_pod = rendering.render_job(spec_with(), "research", "phase1", "uid-123", trial)["spec"]["template"]["spec"]
    for key in ("restartPolicy", "automountServiceAccountToken", "enableServiceLinks", "securityContext"):
        assert pod[key] == trial_pod[key], key
    assert pod["containers"][0]["securityContext"] == trial_pod["containers"][0]["securityContext"]
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    assert "hostNetwork" not in pod and "volumes" not in pod


def test_report_job_retries_only_what_can_change_and_is_not_queued() -> None:
    job = report_job(queueName="gpu-queue", ttlSecondsAfterFinished=600)
    spec = job["spec"]
    assert spec["backoffLimit"] == 2 and spec["completions"] == 1 and spec["parallelism"] == 1
    assert spec["activeDeadlineSeconds"] == rendering.REPORT_DEADLINE_SECONDS
    assert spec["ttlSecondsAfterFinished"] == 600
    # Nothing to report (1) and usage (2) fail the same way again; storage errors (3) and crashes are retried.
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "report", "operator": "In", "values": [1, 2]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    # A GPU queue is for the trials; the report needs no GPU and must not wait for Kueue's admission.
    assert "suspend" not in spec and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


def test_report_job_labels_name_and_owner() -> None:
    job = report_job()
    labels = job["metadata"]["labels"]
    # Labelled like the trials (test_rendering spells those out), but component "report" and no trial label.
    trial_labels = rendering.trial_labels("phase1", planning.plan(spec_with(), "phase1")[0])
    del trial_labels["lorasweep.dev/trial"]
    assert labels == {**trial_labels, "app.kubernetes.io/component": "report"}
    assert labels["lorasweep.dev/sweep"] == "phase1"
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert rendering.is_report(job) and rendering.is_report(job["spec"]["template"])
    assert "lorasweep.dev/trial" not in labels  # never counted as a trial
    assert job["metadata"]["ownerReferences"] == [rendering.owner_reference("phase1", "uid-123")]
    name = job["metadata"]["name"]
    assert name == rendering.report_job_name("phase1", "uid-123") and name == "phase1-2568a-report-23481502b4"
    assert rendering.report_job_name("phase1", "uid-456") != name  # a recreated sweep gets its own
    trials = planning.plan(spec_with(), "phase1")
    assert name not in {trial.job_name for trial in trials}
    assert not any(rendering.is_report(rendering.render_job(spec_with(), "research", "phase1", "u", t)) for t in trials)


@pytest.mark.parametrize("sweep", ["a", "x" * 63, "Phase.1-" + "long" * 50, "a.b.c"])
def test_report_job_name_is_a_dns_label_for_any_sweep_name(sweep: str) -> None:
    name = rendering.report_job_name(sweep, "uid-1")
    assert len(name) <= 63 and DNS_LABEL.match(name), name
    assert name == rendering.report_job_name(sweep, "uid-1")


def test_report_job_is_deterministic_and_a_valid_batch_v1_job() -> None:
    job = report_job()
    assert json.dumps(job, sort_keys=True) == json.dumps(report_job(), sort_keys=True)
    api = client.ApiClient()
    typed = api.deserialize(json.dumps(job), "V1Job", "application/json")
    assert typed.spec.template.spec.containers[0].command[:2] == ["lorasweep", "report"]
    assert typed.spec.pod_failure_policy.rules[0].on_exit_codes.values == [1, 2]
    assert api.sanitize_for_serialization(typed) == job  # type: ignore[no-untyped-call]  # no field the API's schema does not know


def test_report_job_clips_failure_reasons() -> None:
    spec = spec_with()
    failed = {"t1": "Boom: " + "x" * 1000}
    command = rendering.render_report_job(spec, "ns", "s", "u", ["t1"], failed)["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    (reason,) = [arg for arg in command if arg.startswith("t1=")]
    assert len(reason) == len("t1=") + rendering.REPORT_REASON_LIMIT


# --- the ReportWritten decisions --------------------------------------------------------------------------------


def finished(*phases: str, report_uri: str | None = None) -> LoraSweepStatus:
    spec = spec_with()
    rows = [
        TrialStatus(id=f"t{i}", job=f"s-t{i}", phase=phase, seed=42, params=spec.training, reason="InvalidConfig")
        for i, phase in enumerate(phases)
    ]
    return LoraSweepStatus(
        phase="Succeeded",
        completion_time=NOW,
        trials=rows,
        outcomes={row.id: TrialOutcome(phase=row.phase) for row in rows},
        report_uri=report_uri,
    )


def observed(phase: str, reason: str | None = None, message: str | None = None) -> status.ObservedJob:
    return status.ObservedJob("s-report-x", "", phase, reason=reason, message=message)  # type: ignore[arg-type]


def report_condition(current: LoraSweepStatus) -> tuple[str, str, str]:
    (condition,) = [c for c in current.conditions if c.type == "ReportWritten"]
    return condition.status, condition.reason, condition.message


URI = "s3://bucket/sweeps/ns/s/report/report.md"


def test_report_is_due_once_the_sweep_finished_until_written_or_given_up() -> None:
    assert status.report_due(finished("Succeeded"))
    assert not status.report_due(finished("Succeeded").model_copy(update={"completion_time": None}))
    assert not status.report_due(finished("Succeeded").model_copy(update={"phase": "Running"}))
    assert not status.report_due(finished("Succeeded", report_uri=URI))
    running = status.report_step(finished("Succeeded"), observed("Running"), None, URI, NOW).status
    assert status.report_due(running)
    failed = status.report_step(finished("Succeeded"), observed("Failed"), None, URI, NOW).status
    assert not status.report_due(failed)  # final: a deleted failed Job is not launched again


def test_report_inputs_are_the_finished_trials_and_why_the_failed_ones_failed() -> None:
    current = finished("Succeeded", "Failed", "Succeeded")
    current.trials[1].message = "learningRate too high"
    current.outcomes["gone"] = TrialOutcome(phase="Failed")  # beyond the status table's size budget
    trials, failed = status.report_inputs(current)
    assert trials == ["gone", "t0", "t1", "t2"]
    assert failed == {"gone": "Failed", "t1": "InvalidConfig learningRate too high"}


def test_first_pass_launches_the_report_job_once() -> None:
    step = status.report_step(finished("Succeeded", "Failed"), None, None, URI, NOW)
    assert step.launch
    assert report_condition(step.status) == ("Unknown", "ReportJobCreated", f"a report Job writes {URI}")
    assert [(e.type, e.reason) for e in step.events] == [("Normal", "ReportJobCreated")]
    # The Job is in the cache yet unseen (or its creation answered 409): asked again, no new Event.
    again = status.report_step(step.status, None, None, URI, LATER)
    assert again.launch and again.events == []
    running = status.report_step(step.status, observed("Running"), None, URI, LATER)
    assert not running.launch and running.events == []
    assert report_condition(running.status)[:2] == ("Unknown", "ReportJobRunning")
    assert running.status.report_uri is None and running.status.phase == "Succeeded"


def test_a_written_report_sets_report_uri_from_the_jobs_summary() -> None:
    summary = ReportSummary(status="Written", report_uri=URI, trials=2, best="learningRate=0.001")
    step = status.report_step(finished("Succeeded", "Succeeded"), observed("Succeeded"), summary, URI, NOW)
    assert not step.launch
    assert step.status.report_uri == URI
    assert report_condition(step.status) == (
        "True",
        "ReportWritten",
        f"report at {URI} (2 trials; best: learningRate=0.001)",
    )
    assert [(e.type, e.reason) for e in step.events] == [("Normal", "ReportWritten")]
    assert not status.report_due(step.status)
    # Its pod gone before the operator read it: the Job succeeded, so the report is where it was told to write.
    bare = status.report_step(finished("Succeeded"), observed("Succeeded"), None, URI, NOW)
    assert bare.status.report_uri == URI and report_condition(bare.status)[:2] == ("True", "ReportWritten")


def test_a_failed_report_job_warns_and_leaves_the_sweep_phase() -> None:
    summary = ReportSummary(status="Failed", reason="StorageError", message="object storage failed: AccessDenied")
    before = finished("Succeeded")
    step = status.report_step(before, observed("Failed", "BackoffLimitExceeded", "too many"), summary, URI, NOW)
    assert report_condition(step.status) == (
        "False",
        "ReportJobFailed",
        "report Job s-report-x failed: object storage failed: AccessDenied",
    )
    assert [(e.type, e.reason) for e in step.events] == [("Warning", "ReportFailed")]
    assert step.status.phase == before.phase and step.status.report_uri is None
    assert step.status.model_copy(update={"conditions": []}) == before
    # Without a summary (killed at its deadline), the Job's own condition says why.
    bare = status.report_step(before, observed("Failed", "DeadlineExceeded", "Job was active longer"), None, URI, NOW)
    assert report_condition(bare.status)[2] == "report Job s-report-x failed: DeadlineExceeded: Job was active longer"


def test_lorasweep_status_says_where_the_report_is_or_why_there_is_none() -> None:
    from lorasweep_operator.commands.status import describe

    failed = status.report_step(finished("Succeeded"), observed("Failed", "DeadlineExceeded", "late"), None, URI, NOW)
    assert "report: none yet (ReportJobFailed: report Job s-report-x failed: DeadlineExceeded: late)" in describe(
        "ns/s", failed.status
    )
    written = status.report_step(finished("Succeeded"), observed("Succeeded"), None, URI, NOW)
    assert f"report: {URI}" in describe("ns/s", written.status)


def test_no_succeeded_trial_means_no_report_job() -> None:
    step = status.report_step(finished("Failed", "Failed"), None, None, URI, NOW)
    assert not step.launch
    assert report_condition(step.status)[:2] == ("False", "NoResults")
    assert [(e.type, e.reason) for e in step.events] == [("Normal", "ReportSkipped")]
    assert not status.report_due(step.status)


def report_pod(job: str, message: str, finished_at: str = LATER, container: str = "report") -> dict[str, Any]:
    terminated = {"exitCode": 0, "message": message, "finishedAt": finished_at}
    labels = {**rendering.report_labels("s"), "batch.kubernetes.io/job-name": job}
    return {
        "metadata": {"labels": labels},
        "status": {"containerStatuses": [{"name": container, "state": {"terminated": terminated}}]},
    }


def test_report_summary_reads_the_latest_pod_of_that_job() -> None:
    written = ReportSummary(status="Written", report_uri=URI, trials=3).encode()
    failed = ReportSummary(status="Failed", reason="StorageError", message="timeout").encode()
    pods = [
        report_pod("s-report-x", failed, NOW),
        report_pod("s-report-x", written, LATER),
        report_pod("s-report-old", failed, "2030-01-01T00:00:00Z"),  # an earlier sweep object's Job
    ]
    assert status.report_summary(pods, "s-report-x") == ReportSummary.decode(written)
    assert status.report_summary([], "s-report-x") is None
    crashed = status.report_summary([report_pod("s-report-x", "Traceback: boom")], "s-report-x")
    # A crash's own text (its log tail, say) is never shown: it may hold secrets.
    assert crashed == ReportSummary(status="Failed", reason="NoSummary", message=status.UNSTRUCTURED_MESSAGE)
    # A trainer container's message is a trial's, never the report's.
    assert status.report_summary([report_pod("s-report-x", written, container="trainer")], "s-report-x") is None


# --- `lorasweep report` as the report Job runs it --------------------------------------------------------------


def test_report_command_keeps_the_named_trials_lists_failed_ones_and_leaves_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    argv = [
        "report", str(REFERENCE), "--out", str(tmp_path / "out"), "--sweep", "phase1",
        "--trials", "ref-baseline,ref-lr-1e-3", "--failed", "ref-gone=DatasetUnusable: no clips",
        "--termination-log", str(log),
    ]  # fmt: skip
    assert main(argv) == 0
    uri = str(tmp_path / "out" / "report.md")
    assert f"report of 2 trials: {uri}" in capsys.readouterr().out
    text = Path(uri).read_text()
    assert "**Trials:** 2 (2 configurations" in text and "ref-gone (DatasetUnusable: no clips)" in text
    summary = ReportSummary.decode(log.read_text())
    assert summary == ReportSummary(status="Written", report_uri=uri, trials=2, best="LR=1e-3")


def test_report_command_summary_comes_from_the_environment_like_the_trainers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("LORASWEEP_TERMINATION_LOG", str(log))
    assert main(["report", str(REFERENCE), "--out", str(tmp_path / "out"), "--trials", "nope"]) == 1
    summary = ReportSummary.decode(log.read_text())
    assert (summary.status, summary.reason) == ("Failed", "NothingToReport")
    assert summary.message and "for the 1 trials asked for" in summary.message


def test_report_command_storage_failure_exits_3_with_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    code = main(["report", str(REFERENCE), "--out", str(blocker / "out"), "--termination-log", str(log)])
    assert code == 3
    summary = ReportSummary.decode(log.read_text())
    assert (summary.status, summary.reason) == ("Failed", "StorageError")
    assert "object storage failed" in capsys.readouterr().err


def test_report_command_rejects_malformed_filters(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--trials", ","], ["--failed", "no-equals-sign"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["report", str(REFERENCE), "--out", "x", *bad])
        assert exit_info.value.code == 2
    assert "expected ID=WHY" in capsys.readouterr().err


# --- `--write-reports`: the operator writes the report itself -------------------------------------------------


def test_operator_with_storage_access_writes_the_report_itself(tmp_path: Path) -> None:
    import shutil

    from lorasweep_operator.handlers import Pass, write_report

    output = tmp_path / "sweeps"
    shutil.copytree(REFERENCE / "trials", output / "research" / "phase1" / "trials")
    spec = spec_with(storage={"output": f"{output}/"})
    current = Pass(body={}, namespace="research", name="phase1", uid="u", generation=1, previous=LoraSweepStatus())
    done = finished("Succeeded", "Failed").model_copy(
        update={"outcomes": {"ref-baseline": TrialOutcome(phase="Succeeded"), "t1": TrialOutcome(phase="Failed")}}
    )
    written = write_report(
        current,
        spec,
        done,
    )
    uri = str(output / "research" / "phase1" / "report" / "report.md")
    assert written.status.report_uri == uri
    assert report_condition(written.status)[:2] == ("True", "ReportWritten")
    assert [(e.type, e.reason) for e in written.events] == [("Normal", "ReportWritten")]
    text = Path(uri).read_text()
    assert "**Trials:** 1 (1 configuration" in text and "t1 (InvalidConfig)" in text  # only this sweep's trials

    broken = write_report(current, spec_with(storage={"output": f"{tmp_path / 'empty'}/"}), done)
    assert broken.status.report_uri is None and report_condition(broken.status)[:2] == ("False", "ReportFailed")
    assert [(e.type, e.reason) for e in broken.events] == [("Warning", "ReportFailed")]
