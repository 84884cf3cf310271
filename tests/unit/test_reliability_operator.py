"""Mutations the unit suite must catch: trial ids and Job names pinned as literals (a per-process `hash()` or a
name without the sweep's hash fails here), `run_pass` against an in-memory API (the real `Kube` methods over a
fake transport: the owner filter, 409 versus 404), the lastState fallback of termination messages, and a
succeeded trial whose termination message is no result."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from lorasweep_operator import handlers, planning, rendering
from lorasweep_operator import policy as policies
from lorasweep_operator import status as statuses
from lorasweep_operator.kube import ApiError, Kube
from lorasweep_operator.spec import API_VERSION, KIND, LoraSweepStatus, TrainingConfig, parse_spec
from lorasweep_trainer.config import TERMINATION_MESSAGE_LIMIT, trial_output
from lorasweep_trainer.results import TerminationSummary
from reliability_cases import finished_status, trial_metrics
from reliability_cases import spec as _spec
from reliability_cases import succeeded as _succeeded

pytestmark = pytest.mark.reliability

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# --- names pinned -------------------------------------------------------------------------------------------


def test_trial_ids_are_pinned_literals() -> None:
    assert planning.trial_id(TrainingConfig(), 42) == "ff119a9a2f"
    assert planning.trial_id(TrainingConfig(learning_rate=1e-3), 7) == "416b016258"


def test_job_names_are_pinned_literals() -> None:
    assert planning.job_name("phase1", "ff119a9a2f") == "phase1-2568a-ff119a9a2f"
    assert planning.job_name("exp.1", "ff119a9a2f") == "exp-1-aaf09-ff119a9a2f"
    assert planning.job_name("exp-1", "ff119a9a2f") == "exp-1-6e20a-ff119a9a2f"
    assert rendering.report_job_name("phase1", "uid-123") == "phase1-2568a-report-23481502b4"
    assert planning.label_value("a" * 60 + "x" * 10) == "a" * 52 + "-dab7e5f264"


LONG = "a-very-long-sweep-name-that-teams-share-as-a-prefix-for-their-"


@pytest.mark.parametrize(
    ("first", "second"),
    [("exp.1", "exp-1"), (LONG + "run-1", LONG + "run-2"), ("x" * 253, "x" * 252 + "y"), ("a.b.c", "a-b.c")],
)
def test_two_sweeps_never_share_a_job_name(first: str, second: str) -> None:
    spec = parse_spec(_spec())
    ours = {trial.job_name for trial in planning.plan(spec, first)}
    theirs = {trial.job_name for trial in planning.plan(spec, second)}
    assert ours and not ours & theirs
    for name in ours | theirs:
        assert len(name) <= 63 and DNS_LABEL.match(name), name


# --- run_pass over an in-memory API -------------------------------------------------------------------------


class FakeApi(Kube):
    """The real `Kube` methods over an in-memory transport (`_request`): sweeps, Jobs, pods, Events."""

    def __init__(self) -> None:
        super().__init__(api=None)
        self.sweeps: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.creates: list[str] = []
        self.create_errors: list[int] = []  # codes the next creates answer with
        self.patches: list[tuple[str, dict[str, Any]]] = []  # (Job, merge patch) in order

    def add_sweep(self, name: str, spec: dict[str, Any], uid: str = "uid-1") -> None:
        metadata = {"name": name, "namespace": "ns", "uid": uid, "generation": 1}
        self.sweeps[name] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}

    def _request(
        self,
        verb: str,
        resource: str,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        name = path.rstrip("/").split("/")[-1]
        if resource == "lorasweeps" and method == "GET":
            if name not in self.sweeps:
                raise ApiError(verb, resource, 404, "NotFound")
            return copy.deepcopy(self.sweeps[name])
        if resource == "lorasweeps/status":
            self.sweeps[path.split("/")[-2]]["status"] = copy.deepcopy(body[0]["value"])
            return {}
        if method == "GET" and resource in ("jobs", "pods"):
            key, _, value = (query or {})["labelSelector"].partition("=")
            items = self.jobs.values() if resource == "jobs" else self.pods
            return {"items": [copy.deepcopy(i) for i in items if i["metadata"]["labels"].get(key) == value]}
        if resource == "jobs" and method == "POST":
            if self.create_errors:
                raise ApiError(verb, resource, self.create_errors.pop(0), "injected")
            if body["metadata"]["name"] in self.jobs:
                raise ApiError(verb, resource, 409, "AlreadyExists")
            self.creates.append(body["metadata"]["name"])
            self.jobs[body["metadata"]["name"]] = {**copy.deepcopy(body), "status": {}}
            return body
        if resource == "events":
            self.events.append(body)
            return body
        if resource == "jobs" and method == "PATCH":
            assert content_type == "application/merge-patch+json"
            self.patches.append((name, copy.deepcopy(body)))
            self.jobs[name] = _merge(self.jobs[name], body)
            return copy.deepcopy(self.jobs[name])
        raise AssertionError(f"unexpected request {method} {path}")

    def finish(self, job: str, message: str | None, phase: str = "Complete", last_state: bool = False) -> None:
        """The Job controller and kubelet: the Job's condition, and its pod with the termination message."""
        body = self.jobs[job]
        body["status"] = {"startTime": "2025-01-01T00:00:00Z", "conditions": [{"type": phase, "status": "True"}]}
        terminated = {"exitCode": 0, "finishedAt": "2025-01-01T00:01:00Z"}
        if message is not None:
            terminated["message"] = message
        states = (
            {"lastState": {"terminated": terminated}, "state": {"running": {}}}
            if last_state
            else {"state": {"terminated": terminated}}
        )
        labels = body["metadata"]["labels"]
        self.pods.append(
            {"metadata": {"labels": labels}, "status": {"containerStatuses": [{"name": "trainer", **states}]}}
        )


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


def settings(write_reports: bool = False) -> handlers.Settings:
    """The operator's settings with a policy that admits these sweeps' image and command."""
    policy = policies.JobPolicy(allowed_images=("trainer",), allow_command_override=True)
    return handlers.Settings(write_reports=write_reports, policy=policy)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    monkeypatch.setattr(handlers, "SETTINGS", settings())
    fake = FakeApi()
    fake.add_sweep("s", _spec())
    yield fake


def _status(api: FakeApi) -> LoraSweepStatus:
    return LoraSweepStatus.model_validate(api.sweeps["s"]["status"])


def _trials() -> list[planning.PlannedTrial]:
    return planning.plan(parse_spec(_spec()), "s")


def test_run_pass_launches_up_to_parallelism_once(api: FakeApi) -> None:
    first, second, third = _trials()
    handlers.run_pass(api, "ns", "s")
    assert api.creates == [first.job_name, second.job_name]
    handlers.run_pass(api, "ns", "s")
    assert api.creates == [first.job_name, second.job_name]  # idempotent: nothing new while both run
    assert [row.job for row in _status(api).trials] == [first.job_name, second.job_name, third.job_name]
    api.finish(first.job_name, _succeeded(first.id, 0.5))
    handlers.run_pass(api, "ns", "s")
    assert api.creates[-1] == third.job_name and _status(api).best is not None


def test_a_job_that_already_exists_is_not_an_error_but_404_is(api: FakeApi) -> None:
    first, second, _ = _trials()
    api.create_errors = [409]  # made by an operator killed before it wrote the status
    handlers.run_pass(api, "ns", "s")
    assert api.creates == [second.job_name]
    assert {row.id: row.phase for row in _status(api).trials}[first.id] == "Pending"

    other = FakeApi()
    other.add_sweep("s", _spec())
    other.create_errors = [404]  # the namespace is being deleted: no Job exists, so this is no success
    with pytest.raises(ApiError) as error:
        handlers.run_pass(other, "ns", "s")
    assert error.value.code == 404 and other.creates == []


def test_jobs_of_another_sweep_object_with_the_same_labels_are_ignored(api: FakeApi) -> None:
    first, _, _ = _trials()
    # A finished Job left by an earlier sweep of the same name (another uid), labelled like ours.
    stray = rendering.render_job(parse_spec(_spec()), "ns", "s", "uid-old", first)
    stray["metadata"]["name"] = "stray-" + first.id
    api.jobs[stray["metadata"]["name"]] = {**stray, "status": {}}
    api.finish(stray["metadata"]["name"], _succeeded(first.id, 0.9))
    handlers.run_pass(api, "ns", "s")
    status = _status(api)
    assert status.outcomes == {} and status.best is None
    assert first.job_name in api.creates  # our own trial still runs


def test_a_deleted_sweep_ends_the_pass(api: FakeApi) -> None:
    assert handlers.run_pass(api, "ns", "absent") is None and api.creates == []


# --- termination messages -------------------------------------------------------------------------------------


def test_the_termination_message_of_a_restarted_container_is_read_from_last_state(api: FakeApi) -> None:
    first, _, _ = _trials()
    handlers.run_pass(api, "ns", "s")
    api.finish(first.job_name, _succeeded(first.id, 0.75), last_state=True)
    handlers.run_pass(api, "ns", "s")
    assert _status(api).outcomes[first.id].objective == 0.75


def _truncated(trial: str) -> str:
    # What the kubelet keeps of a message past its limit: the first 4 KiB, no longer JSON.
    summary = TerminationSummary(trial=trial, status="Succeeded", metrics={"val_accuracy": 0.5}, message="x" * 5000)
    return summary.model_dump_json()[:TERMINATION_MESSAGE_LIMIT]


@pytest.mark.parametrize("message", [None, "{not json", "truncated"])
def test_a_succeeded_trial_without_a_readable_result_says_so(api: FakeApi, message: str | None) -> None:
    first, _, _ = _trials()
    handlers.run_pass(api, "ns", "s")
    api.finish(first.job_name, _truncated(first.id) if message == "truncated" else message)
    handlers.run_pass(api, "ns", "s")
    row = next(row for row in _status(api).trials if row.id == first.id)
    assert (row.phase, row.objective, row.reason) == ("Succeeded", None, statuses.RESULT_UNREADABLE)
    assert row.message is not None and "metrics.json" in row.message


def test_with_write_reports_an_unreadable_result_is_recovered_from_metrics_json(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_sweep("s", _spec(storage={"output": str(tmp_path) + "/"}))
    monkeypatch.setattr(handlers, "SETTINGS", settings(write_reports=True))
    first, second, _ = planning.plan(parse_spec(api.sweeps["s"]["spec"]), "s")
    handlers.run_pass(api, "ns", "s")
    folder = Path(trial_output(str(tmp_path) + "/", "ns", "s", first.id))
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(trial_metrics(first.id, 0.8).to_json())
    api.finish(first.job_name, _truncated(first.id))
    api.finish(second.job_name, None)  # no metrics.json either: stays unreadable
    handlers.run_pass(api, "ns", "s")
    status = _status(api)
    rows = {row.id: row for row in status.trials}
    assert (rows[first.id].objective, rows[first.id].reason) == (0.8, None)
    assert rows[first.id].metrics_uri == str(folder / "metrics.json")
    assert status.best is not None and status.best.trial == first.id
    assert rows[second.id].reason == statuses.RESULT_UNREADABLE
    assert json.loads(json.dumps(status.to_patch()))["outcomes"][first.id]["objective"] == 0.8


# --- bounded status, complete and frozen fromSweep ---------------------------------------------------------------


def test_a_10000_trial_status_stays_small_and_loses_no_trial() -> None:
    status, plan = finished_status(10_000)
    patch = status.to_patch()
    size = len(json.dumps(patch, separators=(",", ":")))
    assert size < 200_000, size  # the API server takes 1.5 MiB; the old map alone was ~730 KB here
    assert len(patch["outcomes"]) == 100  # the best keep their objective
    reread = LoraSweepStatus.model_validate(json.loads(json.dumps(patch)))
    assert set(reread.outcomes) == {t.id for t in plan}
    assert reread.best == status.best and reread.best is not None and reread.best.trial == plan[-1].id
    # Every Job deleted (ttlSecondsAfterFinished): nothing relaunched, the same status again.
    spec = parse_spec(_spec(search={"grid": {"learningRate": [round(1e-5 * (i + 1), 8) for i in range(100)],
                                             "weightDecay": [round(0.001 * (j + 1), 6) for j in range(100)]}}))  # fmt: skip
    assert statuses.launches(spec, plan, [], reread) == []
    again = statuses.aggregate(spec, plan, [], reread, 1, "2025-01-01T00:00:00Z").status
    assert again.to_patch() == patch


def test_a_status_written_by_an_older_operator_is_read_whole() -> None:
    old = {"phase": "Running", "outcomes": {"a": {"phase": "Succeeded", "objective": 0.5}, "b": {"phase": "Failed"}}}
    status = LoraSweepStatus.model_validate(old)
    assert status.outcomes["a"].objective == 0.5 and status.outcomes["b"].phase == "Failed"
    assert status.to_patch()["finished"] == {"failed": "b"}


def test_from_sweep_takes_its_top_from_complete_results_and_freezes_them(api: FakeApi) -> None:
    source, plan = finished_status(150, name="src")
    assert len(source.trials) < 50  # the source's table is cut past 100 trials
    api.add_sweep("src", _spec(search={"grid": {"learningRate": [round(1e-5 * (i + 1), 8) for i in range(100)],
                                                "weightDecay": [0.001, 0.002]}}), uid="uid-src")  # fmt: skip
    api.sweeps["src"]["status"] = source.to_patch()
    api.add_sweep("s", _spec(search={"fromSweep": {"name": "src", "top": 50}}))
    handlers.run_pass(api, "ns", "s")
    status = _status(api)
    best_first = sorted(plan, key=lambda t: -t.index)[:50]
    assert status.source_trials is not None and [t.id for t in status.source_trials] == [t.id for t in best_first]
    assert status.counts.total == 50 and len(api.creates) == 2
    del api.sweeps["src"]  # deleted (or edited) while the follow-up runs: it plans from what it froze
    handlers.run_pass(api, "ns", "s")
    after = _status(api)
    assert (after.counts.total, after.phase, after.source_trials) == (50, status.phase, status.source_trials)


def test_a_job_name_held_by_an_object_this_sweep_does_not_own_is_reported(api: FakeApi) -> None:
    first, _, _ = _trials()
    orphan = rendering.render_job(parse_spec(_spec()), "ns", "s", "uid-1", first)
    orphan["metadata"]["ownerReferences"] = []  # removed by hand: the garbage collector let it go
    api.jobs[first.job_name] = {**orphan, "status": {"active": 1}}
    handlers.run_pass(api, "ns", "s")
    row = next(row for row in _status(api).trials if row.id == first.id)
    assert (row.phase, row.reason) == ("Pending", handlers.JOB_NOT_OWNED)
    assert row.message is not None and f"Job {first.job_name} exists but is not owned by this sweep" in row.message


def test_a_trial_whose_pod_no_node_can_take_is_pending_with_the_schedulers_reason(api: FakeApi) -> None:
    first, _, _ = _trials()
    handlers.run_pass(api, "ns", "s")
    api.jobs[first.job_name]["status"] = {"active": 1, "startTime": "2025-01-01T00:00:00Z"}  # active, not running
    message = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    labels = api.jobs[first.job_name]["metadata"]["labels"]
    api.pods.append({"metadata": {"labels": labels}, "status": {"phase": "Pending", "conditions": [condition]}})
    handlers.run_pass(api, "ns", "s")
    status = _status(api)
    row = next(row for row in status.trials if row.id == first.id)
    assert (row.phase, row.reason, row.message) == ("Pending", "Unschedulable", message)
    assert status.counts.running == 0


# --- API faults: retried within the call --------------------------------------------------------------------------


class FlakyApi(Kube):
    """`Kube` whose transport answers the queued errors first (code, Retry-After), then succeeds."""

    def __init__(self, *errors: tuple[int, float | None]) -> None:
        super().__init__(api=None)
        self.errors = list(errors)
        self.calls: list[str] = []

    def _send(self, verb: str, resource: str, method: str, path: str, *rest: Any) -> Any:
        self.calls.append(verb)
        if self.errors:
            code, retry_after = self.errors.pop(0)
            raise ApiError(verb, resource, code, "injected", retry_after)
        return {"metadata": {"name": "s"}}


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    from lorasweep_operator import kube

    slept: list[float] = []
    monkeypatch.setattr(kube.time, "sleep", slept.append)
    return slept


def test_429_and_5xx_are_retried_with_backoff_honouring_retry_after(no_backoff: list[float]) -> None:
    api = FlakyApi((429, 3.0), (503, None), (500, None))
    assert api.get_sweep("ns", "s") == {"metadata": {"name": "s"}}
    assert api.calls == ["get"] * 4
    assert no_backoff[0] >= 3.0 and all(delay > 0 for delay in no_backoff)


def test_a_409_on_a_status_write_is_retried_but_not_on_a_create(no_backoff: list[float]) -> None:
    status = FlakyApi((409, None), (409, None))
    status.patch_status("ns", "s", {"phase": "Running"})
    assert status.calls == ["patch"] * 3
    create = FlakyApi((409, None))
    assert create.create_job({"metadata": {"namespace": "ns", "name": "j"}}) is False and create.calls == ["create"]


def test_a_burst_longer_than_the_attempts_reaches_the_caller(no_backoff: list[float]) -> None:
    from lorasweep_operator import kube

    api = FlakyApi(*[(503, None)] * kube.ATTEMPTS)
    with pytest.raises(ApiError) as error:
        api.get_sweep("ns", "s")
    assert error.value.transient and len(api.calls) == kube.ATTEMPTS
    gone = FlakyApi((404, None))
    assert gone.get_sweep("ns", "s") is None and gone.calls == ["get"]  # not retried


# --- Job conditions: FailureTarget before Failed -------------------------------------------------------------------

NOW = "2025-01-01T00:00:00Z"


def _failing_job(trial: planning.PlannedTrial, *conditions: str, terminating: int = 1) -> dict[str, Any]:
    """A trial Job as the Job controller leaves it when its deadline passed: FailureTarget at once (its pod told to
    stop), Failed only once the pod has stopped. `conditions` in the order the Job lists them."""
    found = {
        "FailureTarget": {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded",
                          "message": "Job was active longer than specified deadline"},
        "Failed": {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                   "message": "Job was active longer than specified deadline", "lastTransitionTime": NOW},
    }  # fmt: skip
    status: dict[str, Any] = {"startTime": NOW, "active": 0, "conditions": [found[kind] for kind in conditions]}
    if "Failed" not in conditions:
        status["terminating"] = terminating
    labels = {rendering.TRIAL_LABEL: trial.id}
    return {"metadata": {"name": trial.job_name, "labels": labels}, "spec": {}, "status": status}


@pytest.mark.parametrize("order", [("FailureTarget", "Failed"), ("Failed", "FailureTarget")])
def test_a_job_is_failed_only_once_failed_whatever_the_order_of_its_conditions(order: tuple[str, str]) -> None:
    (trial, *_) = _trials()
    observed = statuses.observe_job(_failing_job(trial, *order))
    assert (observed.phase, observed.reason, observed.terminal) == ("Failed", "DeadlineExceeded", True)


@pytest.mark.parametrize("terminating", [0, 1])
def test_failure_target_alone_does_not_finish_the_trial_or_the_sweep(terminating: int) -> None:
    spec = parse_spec(_spec(search={"list": [{"learningRate": 1e-4}]}, maxFailedTrials=0))
    (trial,) = planning.plan(spec, "s")
    failing = statuses.observe_job(_failing_job(trial, "FailureTarget", terminating=terminating))
    assert (failing.phase, failing.reason, failing.terminal) == ("Running", "FailureTarget", False)
    assert failing.message is not None and "DeadlineExceeded" in failing.message
    result = statuses.aggregate(spec, [trial], [failing], LoraSweepStatus(), 1, NOW)
    assert result.status.phase == "Running" and result.status.completion_time is None
    assert result.status.outcomes == {} and result.status.counts.failed == 0
    assert [event.reason for event in result.events] == []  # no TrialFailed, no TooManyFailedTrials yet
    assert statuses.launches(spec, [trial], [failing], result.status) == []  # and nothing launched in its place
    # Once the pod has stopped, Failed: now the trial and the sweep are finished.
    failed = statuses.observe_job(_failing_job(trial, "FailureTarget", "Failed"))
    done = statuses.aggregate(spec, [trial], [failed], result.status, 1, NOW)
    assert done.status.phase == "Failed" and done.status.outcomes[trial.id].phase == "Failed"
    assert done.status.trials[0].reason == "DeadlineExceeded"


# --- watches: the inactivity and server timeouts are the operator's flags ---------------------------------------


def test_the_watch_timeouts_are_flags_that_reach_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from lorasweep_operator import cli

    args = cli.build_parser().parse_args(
        ["operator", "--watch-inactivity-timeout", "7.5", "--watch-server-timeout", "120"]
    )
    assert (args.watch_inactivity_timeout, args.watch_server_timeout) == (7.5, 120)
    defaults = cli.build_parser().parse_args(["operator"])
    assert (defaults.watch_inactivity_timeout, defaults.watch_server_timeout) == (70, 600)
    for bad in (
        ["--watch-inactivity-timeout", "0"],
        ["--watch-server-timeout", "1.5"],
        ["--watch-server-timeout", "x"],
    ):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["operator", *bad])
    chosen = handlers.Settings(kube=FakeApi(), watch_inactivity_timeout=7.5, watch_server_timeout=120)
    monkeypatch.setattr(handlers, "SETTINGS", chosen)
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    assert (settings.watching.inactivity_timeout, settings.watching.server_timeout) == (7.5, 120)
    assert settings.watching.client_timeout is not None and settings.watching.client_timeout > 120


# --- spec.suspend suspends the running trial Jobs, and resuming unsuspends them --------------------------------


def _suspended(api: FakeApi, job: str) -> bool:
    return bool(api.jobs[job]["spec"].get("suspend"))


def _set_suspend(api: FakeApi, value: bool) -> None:
    api.sweeps["s"]["spec"] = {**api.sweeps["s"]["spec"], "suspend": value}
    api.sweeps["s"]["metadata"]["generation"] += 1


def test_suspend_suspends_the_running_trial_jobs_and_resume_unsuspends_them(api: FakeApi) -> None:
    first, second, third = _trials()
    handlers.run_pass(api, "ns", "s")
    api.finish(first.job_name, _succeeded(first.id, 0.5))
    handlers.run_pass(api, "ns", "s")  # the third trial is launched in the first one's place
    for name in (second.job_name, third.job_name):
        api.jobs[name]["status"] = {"startTime": NOW, "active": 1}
    recorded = _status(api).outcomes[first.id]

    _set_suspend(api, True)
    handlers.run_pass(api, "ns", "s")
    assert [job for job, _ in api.patches] == [second.job_name, third.job_name]  # not the finished one
    assert _suspended(api, second.job_name) and _suspended(api, third.job_name)
    assert not _suspended(api, first.job_name)
    for name in (second.job_name, third.job_name):  # the Job controller stops the pods
        api.jobs[name]["status"] = {"startTime": NOW, "active": 0}
    handlers.run_pass(api, "ns", "s")
    status = _status(api)
    assert status.phase == "Suspended" and status.condition(statuses.SUSPENDED).status == "True"
    rows = {row.id: row for row in status.trials}
    assert (rows[second.id].phase, rows[second.id].reason) == ("Pending", statuses.SUSPENDED)
    assert status.outcomes[first.id] == recorded and rows[first.id].objective == 0.5  # kept
    assert len(api.patches) == 2 and len(api.creates) == 3  # nothing patched twice, nothing new
    assert [e["reason"] for e in api.events].count("TrialsSuspended") == 1

    _set_suspend(api, False)
    handlers.run_pass(api, "ns", "s")
    assert not _suspended(api, second.job_name) and not _suspended(api, third.job_name)
    assert rendering.SUSPENDED_ANNOTATION not in api.jobs[second.job_name]["metadata"]["annotations"]
    assert api.creates == [first.job_name, second.job_name, third.job_name]  # no duplicate Job
    assert _status(api).phase == "Running" and _status(api).outcomes[first.id] == recorded


def test_resume_leaves_a_job_suspended_for_kueue_to_kueue() -> None:
    spec = parse_spec(_spec(queueName="gpu"))
    first, second, _ = planning.plan(spec, "s")
    waiting = rendering.render_job(spec, "ns", "s", "uid-1", first)  # created suspended, not admitted yet
    admitted = rendering.render_job(spec, "ns", "s", "uid-1", second)
    admitted["spec"]["suspend"] = False
    assert waiting["spec"]["suspend"] is True
    assert statuses.suspensions(False, [waiting, admitted]) == []
    (only,) = statuses.suspensions(True, [waiting, admitted])  # the waiting one is suspended already
    assert only[0] == second.job_name and only[1]["spec"] == {"suspend": True}
    admitted = _merge(admitted, only[1])
    # Resumed: the mark goes, but suspend stays for Kueue, which starts the Job when it admits it again.
    assert statuses.suspensions(False, [waiting, admitted]) == [
        (second.job_name, {"metadata": {"annotations": {rendering.SUSPENDED_ANNOTATION: None}}})
    ]


@pytest.mark.parametrize("decided", ["Complete", "Failed", "FailureTarget", "SuccessCriteriaMet"])
def test_a_finished_or_deciding_job_is_never_suspended(decided: str) -> None:
    (first, *_) = _trials()
    job = rendering.render_job(parse_spec(_spec()), "ns", "s", "uid-1", first)
    job["status"] = {"active": 1, "conditions": [{"type": decided, "status": "True"}]}
    assert statuses.suspensions(True, [job]) == []


# --- Job events: a Job that loses its ownerReference still wakes its former sweep -----------------------------


def test_a_job_losing_its_owner_reference_and_then_deleted_runs_passes_for_its_former_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes: list[tuple[str, str]] = []
    monkeypatch.setattr(handlers, "reconcile", lambda namespace, name, trigger: passes.append((namespace, name)))
    (first, *_) = _trials()
    job = rendering.render_job(parse_spec(_spec()), "ns", "s", "uid-1", first)
    job["metadata"]["uid"] = "job-uid"
    job["status"] = {"active": 1}
    disowned = {**job, "metadata": {**job["metadata"], "ownerReferences": []}}
    stranger = {**disowned, "metadata": {**disowned["metadata"], "uid": "other-uid"}}
    for body, kind in [(job, "MODIFIED"), (job, "MODIFIED"), (disowned, "MODIFIED"), (disowned, "MODIFIED"),
                       (disowned, "DELETED"), (stranger, "MODIFIED")]:  # fmt: skip
        handlers.job_event(body=body, type=kind)
    # seen running; no change; ownerReference gone; no change; deleted; a Job never seen owned: nothing
    assert passes == [("ns", "s"), ("ns", "s"), ("ns", "s")]
