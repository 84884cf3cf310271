"""kopf handlers: thin adapters from events to one reconcile pass.

Every trigger (a sweep created, resumed or edited; a trial Job changing phase; a timer) runs the same
level-triggered pass for that sweep: read the sweep and its Jobs, plan (pure), launch what is missing
(idempotent: deterministic Job names, 409 means done; a name held by a Job this sweep does not own is
reported on the trial as JobNotOwned), aggregate the status (pure), write it when it changed. A trial Job
deleted before it finished is created again; one deleted after is not (its outcome is recorded). spec.suspend
suspends the unfinished Jobs and resuming unsuspends those it suspended (statuses.suspensions). A Job that loses
its ownerReference wakes its former sweep at once (its trial shows JobNotOwned) and again when it is deleted.
Passes for one sweep never overlap, and a burst of triggers collapses into one pass.

Once the sweep has finished, the same pass sees to its report: written by the operator itself when it was
started with `--write-reports` (its pod can reach spec.storage.output), else by one report Job that runs
`lorasweep report` with the trials' storage access; later passes read that Job's termination message into
status.reportUri and the ReportWritten condition. A failed report never changes the sweep's phase.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import kopf
from pydantic import ValidationError

from lorasweep_operator import early_stopping, planning, rendering, telemetry
from lorasweep_operator import policy as policies
from lorasweep_operator import preparation as preparations
from lorasweep_operator import status as statuses
from lorasweep_operator import tracking as trackings
from lorasweep_operator.kube import ApiError, Kube, ObjectMeta, now
from lorasweep_operator.report import REPORT_FILE
from lorasweep_operator.spec import (
    GROUP,
    KIND,
    PLURAL,
    TERMINAL_SWEEP_PHASES,
    VERSION,
    LoraSweepSpec,
    LoraSweepStatus,
    Objective,
    PreparationStatus,
    SourceTrial,
    SpecError,
    parse_spec,
)
from lorasweep_operator.watching import DEFAULT_WATCH_INACTIVITY_TIMEOUT, DEFAULT_WATCH_SERVER_TIMEOUT
from lorasweep_trainer.config import Goal, ModelWeights, trial_output
from lorasweep_trainer.results import TerminationSummary

log = logging.getLogger(__name__)

TIMER_INTERVAL = 60.0
JOB_NOT_OWNED = "JobNotOwned"
SOURCE_RETRY_DELAY = 30.0
ANNOTATION_PREFIX = "lorasweep.dev"


@dataclass
class Settings:
    """What `lorasweep operator` decides at start-up."""

    kube: Kube | None = None
    write_reports: bool = False
    # What the operator may put in a Job on a sweep author's behalf (the chart's policy.* values).
    policy: policies.JobPolicy = field(default_factory=policies.JobPolicy)
    # Where trial pods reach the progress endpoint (spec.earlyStopping); None: no early stopping.
    progress_url: str | None = None
    # kopf's watches (--watch-inactivity-timeout, --watch-server-timeout): a stream silent for the first is
    # reopened from its last resourceVersion; the API server ends each one after the second.
    watch_inactivity_timeout: float = DEFAULT_WATCH_INACTIVITY_TIMEOUT
    watch_server_timeout: int = DEFAULT_WATCH_SERVER_TIMEOUT  # whole seconds: the API's timeoutSeconds


SETTINGS = Settings()


class Coalescer:
    """One pass per key at a time; triggers arriving while a pass waits to start ride along with it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._queued: set[tuple[str, str]] = set()

    def run(self, key: tuple[str, str], work: Callable[[], None]) -> bool:
        with self._guard:
            if key in self._queued:
                return False  # the queued pass starts later and reads fresh state
            self._queued.add(key)
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                self._queued.discard(key)
            work()
        return True

    def forget(self, key: tuple[str, str]) -> None:
        with self._guard:
            self._locks.pop(key, None)


COALESCER = Coalescer()
# Job uid -> the trial phase last seen; only a phase change (or a deletion) needs a pass.
_job_phases: dict[str, str] = {}
# Job uid -> (namespace, sweep) of the owner it had when last seen: a Job whose ownerReference is then removed
# names no sweep, yet its former owner must learn at once that the trial's Job is no longer its own (JobNotOwned).
_job_owners: dict[str, tuple[str, str]] = {}


class Invalid(Exception):
    """The sweep cannot run as written (already recorded in its status)."""


class Waiting(Exception):
    """The sweep waits for something outside it (the fromSweep source)."""


def _kube() -> Kube:
    if SETTINGS.kube is None:
        SETTINGS.kube = Kube.from_environment()
    return SETTINGS.kube


def kube() -> Kube:
    """The operator's API client (made on first use)."""
    return _kube()


def reconcile_progress(namespace: str, name: str) -> None:
    """The pass after a progress report, in the endpoint's request thread: its rung decisions are the answer."""
    reconcile(namespace, name, "progress")


# --- kopf wiring --------------------------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress in annotations, not status.kopf: the CRD's structural schema would prune it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    # No cluster-wide CRD or namespace listing: RBAC stays to what deploy/rbac grants.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    settings.watching.inactivity_timeout = SETTINGS.watch_inactivity_timeout
    settings.watching.server_timeout = SETTINGS.watch_server_timeout
    # The client gives up a little after the server should have ended the stream.
    settings.watching.client_timeout = SETTINGS.watch_server_timeout + 60
    _kube()


@kopf.on.create(GROUP, VERSION, PLURAL)
def sweep_created(namespace: str | None, name: str, **_: Any) -> None:
    _sweep_pass(str(namespace), name, "create")


@kopf.on.resume(GROUP, VERSION, PLURAL)
def sweep_resumed(namespace: str | None, name: str, **_: Any) -> None:
    _sweep_pass(str(namespace), name, "resume")


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def sweep_updated(namespace: str | None, name: str, **_: Any) -> None:
    _sweep_pass(str(namespace), name, "update")


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_INTERVAL, initial_delay=TIMER_INTERVAL)
def sweep_timer(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    current = _previous_status(body)
    settled = current.phase in TERMINAL_SWEEP_PHASES and current.completion_time and not statuses.report_due(current)
    if settled and current.observed_generation == ObjectMeta.of(body).generation:
        return  # nothing left to watch (report included); a spec edit or Job event wakes it again
    reconcile(str(namespace), name, "timer")


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def sweep_deleted(namespace: str | None, name: str, **_: Any) -> None:
    # optional=True: no finalizer; the garbage collector deletes the Jobs through their owner references.
    telemetry.forget_sweep(str(namespace), name)
    COALESCER.forget((str(namespace), name))


@kopf.on.event("batch", "v1", "jobs", labels={rendering.SWEEP_LABEL: kopf.PRESENT})
def job_event(body: kopf.Body, type: str | None, **_: Any) -> None:  # noqa: A002 - kopf's keyword
    metadata = ObjectMeta.of(body)
    owner = metadata.owner(KIND)
    sweep = (metadata.namespace, owner.name) if owner is not None else _job_owners.get(metadata.uid)
    if sweep is None:
        return  # never this operator's sweep's (or disowned before this operator started: the timer sees to it)
    _job_owners[metadata.uid] = sweep
    # Losing the ownerReference counts as a change: the former owner reports the trial JobNotOwned at once, and
    # launches it again when that Job is deleted.
    phase = statuses.observe_job(body).phase + ("" if owner is not None else "/disowned")
    if type == "DELETED":
        _job_phases.pop(metadata.uid, None)
        _job_owners.pop(metadata.uid, None)
    elif _job_phases.get(metadata.uid) == phase:
        return
    else:
        _job_phases[metadata.uid] = phase
    reconcile(*sweep, "job")


def _sweep_pass(namespace: str, name: str, trigger: str) -> None:
    """For the sweep's own handlers: kopf retries TemporaryError and records PermanentError."""
    try:
        reconcile(namespace, name, trigger, raise_errors=True)
    except Invalid as error:
        raise kopf.PermanentError(str(error)) from None
    except Waiting as error:
        raise kopf.TemporaryError(str(error), delay=SOURCE_RETRY_DELAY) from None
    except ApiError as error:
        raise kopf.TemporaryError(f"{error}; retrying", delay=10 if error.transient else 60) from None


# --- the pass -----------------------------------------------------------------------------------------------


def reconcile(namespace: str, name: str, trigger: str, raise_errors: bool = False) -> None:
    """Run one pass for the sweep (or join the one already queued)."""
    outcome: list[BaseException] = []

    def work() -> None:
        started = time.perf_counter()
        result = "ok"
        try:
            run_pass(_kube(), namespace, name)
        except Invalid as error:
            result = "invalid"
            outcome.append(error)
        except Waiting as error:
            result = "waiting"
            outcome.append(error)
        except ApiError as error:
            result = "error"
            log.warning("reconcile failed namespace=%s sweep=%s trigger=%s error=%s", namespace, name, trigger, error)
            outcome.append(error)
        finally:
            telemetry.RECONCILE_DURATION.labels(trigger=trigger).observe(time.perf_counter() - started)
            telemetry.RECONCILES.labels(trigger=trigger, result=result).inc()

    COALESCER.run((namespace, name), work)
    if raise_errors and outcome:
        raise outcome[0]


def _previous_status(body: Mapping[str, Any]) -> LoraSweepStatus:
    try:
        return LoraSweepStatus.model_validate(body.get("status") or {})
    except ValidationError as error:
        # A hand-edited or foreign status: rebuild from the Jobs rather than stop.
        log.warning("status unreadable, rebuilding sweep=%s error=%s", ObjectMeta.of(body).name, error)
        return LoraSweepStatus()


@dataclass
class Pass:
    """One pass's inputs, read from the API."""

    body: dict[str, Any]
    namespace: str
    name: str
    uid: str
    generation: int | None
    previous: LoraSweepStatus
    events: list[statuses.Event] = field(default_factory=list)


def run_pass(kube: Kube, namespace: str, name: str) -> LoraSweepStatus | None:
    body = kube.get_sweep(namespace, name)
    if body is None:
        return None  # deleted meanwhile
    metadata = ObjectMeta.of(body)
    current = Pass(
        body=body,
        namespace=namespace,
        name=name,
        uid=metadata.uid,
        generation=metadata.generation,
        previous=_previous_status(body),
    )
    try:
        spec = parse_spec(body.get("spec") or {})
        policies.check(spec, SETTINGS.policy)  # every Job of this pass is rendered from this spec
        source = _source_trials(kube, current, spec)
        # search.optimize plans from its recorded trials: after the Jobs are read, below.
        plan = planning.plan(spec, name, source) if spec.search.optimize is None else []
    except SpecError as error:
        reason = "NotAllowedByPolicy" if isinstance(error, policies.PolicyError) else "InvalidSpec"
        _write(kube, current, statuses.invalid(current.previous, str(error), current.generation, now(), reason))
        if current.previous.observed_generation != current.generation:
            kube.emit_event(body, "Warning", reason, str(error))
        log.warning("invalid sweep namespace=%s sweep=%s problem=%s", namespace, name, error)
        raise Invalid(str(error)) from None

    if spec.search.from_sweep is not None and current.previous.source_trials is None:
        # Frozen before any Job exists: later passes plan from it, whatever becomes of the source.
        # refine compares with the source's baseline and runners-up: it keeps them all (at most FROM_SWEEP_TOP_MAX).
        taken = source if spec.search.from_sweep.refine else source[: spec.search.from_sweep.top]
        current.previous = current.previous.model_copy(update={"source_trials": taken})
        kube.patch_status(namespace, name, current.previous.to_patch())

    jobs: list[statuses.ObservedJob] = []
    others: dict[str, statuses.ObservedJob] = {}  # the report and preparation Jobs, by name
    bodies: list[dict[str, Any]] = []  # the trial Jobs as the API returned them (search.optimize's history)
    children: list[dict[str, Any]] = []  # the Jobs spec.suspend applies to: trials and the preparation
    for job in kube.list_jobs(namespace, rendering.sweep_selector(name)):
        if ObjectMeta.of(job).owned_by(current.uid):
            if rendering.component(job) in (rendering.REPORT_COMPONENT, preparations.COMPONENT):
                observed = statuses.observe_job(job)
                others[observed.name] = observed
            else:
                jobs.extend(statuses.observe_jobs(job))
                bodies.append(job)
            if rendering.component(job) != rendering.REPORT_COMPONENT:
                children.append(job)
    report_job = others.get(rendering.report_job_name(name, current.uid))
    _suspend(kube, current, spec.suspend, children)
    pods = _Pods(kube, namespace, rendering.sweep_selector(name))
    if any(job.terminal and job.trial not in current.previous.outcomes for job in jobs):
        jobs = statuses.with_summaries(jobs, statuses.summaries_by_trial(pods.get()))
        if SETTINGS.write_reports:
            jobs = statuses.with_summaries(jobs, recover_results(spec, current, jobs))
    if any(not job.terminal for job in jobs):
        jobs = statuses.with_pending_reasons(jobs, statuses.unschedulable(pods.get()))
    if spec.search.optimize is not None:
        try:
            plan = planning.plan(spec, name, history=statuses.recorded(spec, bodies, jobs, current.previous))
        except SpecError as error:
            _write(kube, current, statuses.invalid(current.previous, str(error), current.generation, now()))
            raise Invalid(str(error)) from None
    if spec.early_stopping is not None:
        jobs = _stop_early(kube, current, spec, plan, jobs)

    # No preparation for a preset's random weights with a command of the user's own, nor once every trial has
    # finished (a sweep from before preparation steps existed).
    needed = preparations.needed(spec) and any(trial.id not in current.previous.outcomes for trial in plan)
    preparation = _prepare(kube, current, spec, plan, others, pods) if needed else None
    launched = []
    ready = preparation is None or preparation.phase == "Succeeded"
    weights = preparation.weights if preparation is not None else None  # pinned: the same for every trial
    parent_run_id = preparation.mlflow_parent_run_id if preparation is not None else None
    for trial in statuses.launches(spec, plan, jobs, current.previous) if ready else []:
        packed = spec.packing > 1
        if any(job.name == trial.job_name for job in jobs):  # a pack's earlier member created it in this pass
            jobs.append(statuses.ObservedJob(trial.job_name, trial.id, "Pending", packed=packed))
        elif kube.create_job(_render_trial_job(spec, current, plan, trial, weights, parent_run_id)):
            telemetry.JOBS_CREATED.labels(namespace=namespace, sweep=name).inc()
            launched.append(trial)
            jobs.append(statuses.ObservedJob(trial.job_name, trial.id, "Pending", packed=packed))
        else:
            # 409, yet not among this sweep's Jobs: another object holds the name (its ownerReference removed,
            # or left by someone else). Say so rather than wait for it forever.
            problem = (
                f"Job {trial.job_name} exists but is not owned by this sweep; delete it (or restore its "
                "ownerReference) and the trial is launched"
            )
            jobs.append(
                statuses.ObservedJob(
                    trial.job_name, trial.id, "Pending", reason=JOB_NOT_OWNED, message=problem, packed=packed
                )
            )
    if launched and spec.early_stopping is not None and not SETTINGS.progress_url:
        message = "spec.earlyStopping is set but this operator has no --progress-url: trials run every epoch"
        current.events.append(statuses.Event("Warning", "EarlyStoppingUnavailable", message))
    if launched:
        log.info("trial jobs created namespace=%s sweep=%s count=%d", namespace, name, len(launched))
        current.events.append(
            statuses.Event(
                "Normal",
                "TrialsLaunched",
                f"created {len(launched)} trial Jobs: "
                + ", ".join(t.job_name for t in launched[:10])
                + (" ..." if len(launched) > 10 else ""),
            )
        )

    total = spec.search.optimize.trials if spec.search.optimize is not None else None
    result = statuses.aggregate(spec, plan, jobs, current.previous, current.generation, now(), total=total)
    if preparation is None:  # what the preparation left is kept, as the trials' outcomes are
        new = result.status.model_copy(update={"preparation": current.previous.preparation})
    else:
        new = preparations.apply(result.status, preparation, now())
    current.events.extend(result.events)
    if statuses.report_due(new):
        new = _report(kube, current, spec, new, report_job, pods)
    written = _write(kube, current, new)
    for event in current.events:
        kube.emit_event(body, event.type, event.reason, event.message)
    telemetry.record_sweep(
        namespace,
        name,
        new.phase,
        new.counts.by_phase(),
        spec.objective.metric,
        new.best.objective if new.best else None,
        written,
    )
    return new


def _suspend(kube: Kube, current: Pass, suspend: bool, jobs: list[dict[str, Any]]) -> None:
    """spec.suspend on the unfinished Jobs (statuses.suspensions). A Job that finished or went away meanwhile is
    no error: the next pass sees it as it is."""
    patches = statuses.suspensions(suspend, jobs)
    for job, patch in patches:
        try:
            kube.patch_job(current.namespace, job, patch)
        except ApiError as error:
            if error.transient:
                raise
            log.warning("job not suspended namespace=%s job=%s error=%s", current.namespace, job, error)
            continue
        log.info("job %s namespace=%s sweep=%s job=%s", "suspended" if suspend else "resumed",
                 current.namespace, current.name, job)  # fmt: skip
    if patches:
        names = ", ".join(job for job, _ in patches[:10]) + (" ..." if len(patches) > 10 else "")
        what, reason = ("suspended", "TrialsSuspended") if suspend else ("resumed", "TrialsResumed")
        current.events.append(statuses.Event("Normal", reason, f"{what} {len(patches)} Jobs: {names}"))


def _render_trial_job(
    spec: LoraSweepSpec,
    current: Pass,
    plan: list[planning.PlannedTrial],
    trial: planning.PlannedTrial,
    weights: ModelWeights | None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """The Job of ``trial``: its own, or with spec.packing > 1 its pack's (every plan member of that Job);
    ``parent_run_id``: the sweep's MLflow parent run, from its preparation (spec.tracking)."""
    if spec.packing == 1:
        return rendering.render_job(
            spec, current.namespace, current.name, current.uid, trial, SETTINGS.progress_url, weights, parent_run_id
        )
    members = [member for member in plan if member.job_name == trial.job_name]
    return rendering.render_pack_job(
        spec, current.namespace, current.name, current.uid, members, weights, parent_run_id
    )


def _prepare(
    kube: Kube,
    current: Pass,
    spec: LoraSweepSpec,
    plan: list[planning.PlannedTrial],
    jobs: Mapping[str, statuses.ObservedJob],
    pods: _Pods,
) -> PreparationStatus:
    """The preparation's state; its Job is created when the cache is not ready and no Job works on it."""
    tracking = trackings.for_sweep(spec, current.namespace, current.name, current.uid)
    preparation = preparations.plan_preparation(spec, current.namespace, current.name, plan, tracking=tracking)
    job = jobs.get(preparation.job_name)
    summary = None
    if job is not None and job.terminal:
        found = statuses.termination_message_of(pods.get(), preparation.job_name, preparations.CONTAINER)
        summary = preparations.summary_of(found)
    state = preparations.observe(
        preparation,
        current.previous.preparation,
        job.phase if job is not None else None,
        job.reason if job is not None else None,
        job.message if job is not None else None,
        summary,
    )
    before = current.previous.preparation
    if state.phase in ("Succeeded", "Failed") and (before is None or before.phase != state.phase):
        if state.phase == "Failed":
            why = f"preparation Job {state.job} failed: {state.reason}: {state.message}"
            current.events.append(statuses.Event("Warning", "PreparationFailed", why))
        else:
            current.events.append(statuses.Event("Normal", "Prepared", f"cache ready at {state.cache_uri}"))
    if state.phase == "Pending" and job is None and not spec.suspend:
        body = rendering.render_prepare_job(spec, current.namespace, current.name, current.uid, preparation)
        if kube.create_job(body):
            log.info(
                "preparation job created namespace=%s sweep=%s job=%s",
                current.namespace,
                current.name,
                body["metadata"]["name"],
            )
            current.events.append(
                statuses.Event("Normal", "Preparing", f"created preparation Job {preparation.job_name}")
            )
    return state


def recover_results(
    spec: LoraSweepSpec, current: Pass, jobs: list[statuses.ObservedJob]
) -> dict[str, TerminationSummary]:
    """For an operator that can read spec.storage.output (`--write-reports`): the results of succeeded trials
    whose termination message held none, read from their metrics.json. A file that is absent or broken leaves
    the trial ResultUnreadable."""
    from lorasweep_trainer import storage
    from lorasweep_trainer.results import METRICS_FILE, TrialMetrics, summarize

    recovered = {}
    for job in statuses.unreadable_results(jobs, current.previous):
        uri = trial_output(spec.storage.output, current.namespace, current.name, job.trial) + METRICS_FILE
        try:
            metrics = TrialMetrics.model_validate_json(storage.read_bytes(uri))
        except Exception as error:  # absent, unreadable or invalid: the trial keeps its ResultUnreadable reason
            log.warning(
                "result not recovered namespace=%s trial=%s uri=%s error=%s", current.namespace, job.trial, uri, error
            )
            continue
        log.info(
            "result recovered namespace=%s sweep=%s trial=%s uri=%s", current.namespace, current.name, job.trial, uri
        )
        recovered[job.trial] = summarize(metrics, uri)
    return recovered


def _stop_early(
    kube: Kube, current: Pass, spec: LoraSweepSpec, plan: list[planning.PlannedTrial], jobs: list[statuses.ObservedJob]
) -> list[statuses.ObservedJob]:
    """Make the rung decisions due (pure), record them on the trial Jobs, and end the Jobs of stopped trials: their
    deadline cut to 1 s, so the Job controller fails them and deletes their pods (the GPU is freed at once)."""
    rule = statuses.stopping_rule(spec)
    assert rule is not None
    decisions = early_stopping.decide(rule, statuses.histories(spec, plan, jobs, current.previous))
    if not decisions:
        return jobs
    by_trial = {job.trial: job for job in jobs}
    changed: dict[str, statuses.ObservedJob] = {}
    for decision in decisions:
        job = changed.get(decision.trial) or by_trial[decision.trial]
        changed[decision.trial] = replace(job, decisions={**job.decisions, decision.rung: decision.to_json()})
    for trial, job in changed.items():
        text = json.dumps({str(rung): value for rung, value in sorted(job.decisions.items())}, separators=(",", ":"))
        patch: dict[str, Any] = {"metadata": {"annotations": {rendering.EARLY_STOPPING_ANNOTATION: text}}}
        if job.stop_decision is not None:
            patch["spec"] = {"activeDeadlineSeconds": 1}
        kube.patch_job(current.namespace, job.name, patch)
        if (stopped := job.stop_decision) is not None:
            log.info(
                "trial stopped namespace=%s sweep=%s trial=%s rung=%d cutoff=%s compared=%s",
                current.namespace, current.name, trial, stopped[0], stopped[1]["cutoff"], stopped[1]["compared"],
            )  # fmt: skip
    return [changed.get(job.trial, job) for job in jobs]


def _source_trials(kube: Kube, current: Pass, spec: LoraSweepSpec) -> list[SourceTrial]:
    """The fromSweep source's results, best first: frozen in status.sourceTrials once taken, so a source edited
    or deleted afterwards changes nothing; until then read from the source, `Waiting` until it has finished."""
    source = spec.search.from_sweep
    if source is None:
        return []
    if current.previous.source_trials is not None:
        return current.previous.source_trials
    body = kube.get_sweep(current.namespace, source.name)
    status = _previous_status(body) if body is not None else None
    if body is None or status is None or status.phase not in TERMINAL_SWEEP_PHASES:
        problem = (
            f"search.fromSweep: sweep {source.name!r} not found in namespace {current.namespace}"
            if status is None
            else f"search.fromSweep: waiting for sweep {source.name!r} to finish (phase {status.phase})"
        )
        if current.previous.phase in TERMINAL_SWEEP_PHASES:
            raise Waiting(problem)  # finished long ago; its source may be gone: keep the status as it is
        _write(
            kube, current, statuses.waiting(current.previous, "WaitingForSource", problem, current.generation, now())
        )
        raise Waiting(problem)
    goal, plan = _source_plan(current.namespace, source.name, body, status)
    return statuses.source_results(goal, status, plan)


def _source_plan(
    namespace: str, name: str, body: Mapping[str, Any], status: LoraSweepStatus
) -> tuple[Goal, list[planning.PlannedTrial]]:
    """The source's goal and plan (its parameters for every trial, beyond its cut trial table). A source whose
    spec no longer plans (a newer operator's fields, say) still offers the trials its table holds."""
    try:
        spec = parse_spec(body.get("spec") or {})
        return spec.objective.resolved_goal, planning.plan(spec, name, status.source_trials or ())
    except SpecError as error:
        log.warning("source not planned namespace=%s sweep=%s problem=%s", namespace, name, error)
    try:
        objective = Objective.model_validate((body.get("spec") or {}).get("objective") or {})
    except ValidationError:
        objective = Objective()
    return objective.resolved_goal, []


def _write(kube: Kube, current: Pass, new: LoraSweepStatus) -> int:
    """Patch the status when it changed; returns its size in bytes."""
    patch = new.to_patch()
    size = len(json.dumps(patch, separators=(",", ":")))
    if patch != current.previous.to_patch():
        kube.patch_status(current.namespace, current.name, patch)
    return size


class _Pods:
    """The sweep's pods, listed at most once per pass and only when a finished child's message is needed."""

    def __init__(self, kube: Kube, namespace: str, selector: str) -> None:
        self._kube, self._namespace, self._selector = kube, namespace, selector
        self._pods: list[dict[str, Any]] | None = None

    def get(self) -> list[dict[str, Any]]:
        if self._pods is None:
            self._pods = self._kube.list_pods(self._namespace, self._selector)
        return self._pods


def _report(
    kube: Kube,
    current: Pass,
    spec: LoraSweepSpec,
    status: LoraSweepStatus,
    job: statuses.ObservedJob | None,
    pods: _Pods,
) -> LoraSweepStatus:
    """The report's part of a pass over a finished sweep whose report is due."""
    if SETTINGS.write_reports:
        done = statuses.nothing_to_report(status, now()) or write_report(current, spec, status)
        current.events.extend(done.events)
        return done.status
    name = rendering.report_job_name(current.name, current.uid)
    summary = statuses.report_summary(pods.get(), name) if job is not None and job.terminal else None
    _, destination = rendering.report_prefixes(spec, current.namespace, current.name)
    step = statuses.report_step(status, job, summary, f"{destination}{REPORT_FILE}", now())
    if step.launch:
        trials, failed = statuses.report_inputs(status)
        parent = status.preparation.mlflow_parent_run_id if status.preparation is not None else None
        body = rendering.render_report_job(spec, current.namespace, current.name, current.uid, trials, failed, parent)
        try:
            created = kube.create_job(body)
        except ApiError as error:
            if error.transient:
                raise
            # Rejected as written (too large, denied): trying again each pass cannot help.
            log.warning("report job rejected namespace=%s sweep=%s error=%s", current.namespace, current.name, error)
            rejected = statuses.report_failed(status, "ReportJobRejected", str(error), now())
            current.events.extend(rejected.events)
            return rejected.status
        if created:  # lorasweep_operator_jobs_created_total counts trial Jobs only
            log.info("report job created namespace=%s sweep=%s job=%s", current.namespace, current.name, name)
    current.events.extend(step.events)
    return step.status


def write_report(current: Pass, spec: LoraSweepSpec, status: LoraSweepStatus) -> statuses.Reconciled:
    """The report written by the operator itself (`--write-reports`: its pod can read and write
    spec.storage.output). Any failure is recorded in the ReportWritten condition, never raised."""
    from lorasweep_operator.report import publish_sweep_report

    source, destination = rendering.report_prefixes(spec, current.namespace, current.name)
    trials, failed = statuses.report_inputs(status)
    try:
        uri = publish_sweep_report(
            source,
            destination,
            spec.objective.metric,
            spec.objective.resolved_goal,
            sweep=current.name,
            failed=failed,
            trials=trials,
            class_actions=spec.dataset.classes,
        )
    except Exception as error:  # a report failure must never fail the sweep
        log.warning("report failed namespace=%s sweep=%s error=%s", current.namespace, current.name, error)
        return statuses.report_failed(status, "ReportFailed", f"the sweep report could not be written: {error}", now())
    return statuses.report_written(status, uri, "", now())
