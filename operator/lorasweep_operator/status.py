"""Status aggregation: the sweep's status rebuilt from its Jobs, its pods' termination messages and what the
previous status already recorded. Pure; the handler passes the clock in.

Every pass starts from the children, so a restarted operator (or one that missed events) converges to the
same status. A finished trial's outcome is written to ``status.outcomes`` the first time it is seen and
is never taken back, so deleting its Job (ttlSecondsAfterFinished, or by hand) loses nothing and never
relaunches it.

The trial table is best first: succeeded trials by the objective (ties: plan order), then running,
failed and pending ones. Up to `FULL_TABLE_LIMIT` trials it holds every trial; beyond, the top
`TOP_K` succeeded plus up to `TOP_K` running and failed ones, so a 10,000-trial sweep stays far below
the API server's object size limit (every metrics.json is in object storage anyway). status.outcomes is
bounded the same way (`bounded_outcomes`): every finished trial is kept, but only the best
`FROM_SWEEP_TOP_MAX` keep their objective; on the wire the others are bare ids (LoraSweepStatus.to_patch),
about 125 KB for a 10,000-trial status in all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import ValidationError

from lorasweep_operator import early_stopping
from lorasweep_operator.planning import PlannedTrial, Recorded
from lorasweep_operator.rendering import (
    CONTAINER,
    EARLY_STOPPING_ANNOTATION,
    INDEX_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    PROGRESS_ANNOTATION,
    REPORT_CONTAINER,
    SUSPENDED_ANNOTATION,
    TRIAL_LABEL,
    TRIALS_ANNOTATION,
    is_report,
)
from lorasweep_operator.report.model import ReportSummary
from lorasweep_operator.spec import (
    FROM_SWEEP_TOP_MAX,
    TERMINAL_SWEEP_PHASES,
    TERMINAL_TRIAL_PHASES,
    BestTrial,
    Condition,
    LoraSweepSpec,
    LoraSweepStatus,
    SourceTrial,
    SweepPhase,
    TrainingConfig,
    TrialCounts,
    TrialOutcome,
    TrialPhase,
    TrialStatus,
)
from lorasweep_trainer.config import TRIAL_ENV, Goal, TrialConfig
from lorasweep_trainer.results import PackSummary, TerminationSummary, adapter_uri_beside

# A succeeded trial whose result could not be read from its termination message.
RESULT_UNREADABLE = "ResultUnreadable"

FULL_TABLE_LIMIT = 100
TOP_K = 20
MESSAGE_LIMIT = 512

# Condition types
SPEC_VALID = "SpecValid"
SUSPENDED = "Suspended"
COMPLETE = "Complete"
FAILED = "Failed"
REPORT_WRITTEN = "ReportWritten"
SUSPENDED_MESSAGE = "the trial's Job is suspended (spec.suspend, or a queue that has not admitted it yet)"


@dataclass(frozen=True)
class ObservedJob:
    """What a trial Job says about its trial, plus the termination summary of its finished pod."""

    name: str
    trial: str
    phase: TrialPhase
    reason: str | None = None
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    summary: TerminationSummary | None = None
    packed: bool = False  # one member of a pack Job (spec.packing > 1): its phase comes from its own summary
    # spec.earlyStopping: the metrics each epoch reported (epoch -> metrics) and the rung decisions recorded
    progress: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    decisions: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_TRIAL_PHASES

    @property
    def stop_decision(self) -> tuple[int, Mapping[str, Any]] | None:
        """(rung, decision) of the rung that stopped this trial, if one did."""
        return next(((rung, d) for rung, d in sorted(self.decisions.items()) if d.get("stop")), None)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Reconciled:
    status: LoraSweepStatus
    events: list[Event] = field(default_factory=list)


# --- reading children ---------------------------------------------------------------------------------------


def _condition(job_status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in job_status.get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def observe_job(job: Mapping[str, Any]) -> ObservedJob:
    """A batch/v1 Job (as the API returns it, camelCase) to the trial's phase."""
    metadata = job.get("metadata") or {}
    status = job.get("status") or {}
    name = str(metadata.get("name", ""))
    trial = str((metadata.get("labels") or {}).get(TRIAL_LABEL, ""))
    started = status.get("startTime")
    annotations = metadata.get("annotations") or {}
    progress, decisions = (
        _epochs(annotations.get(PROGRESS_ANNOTATION)),
        _epochs(annotations.get(EARLY_STOPPING_ANNOTATION)),
    )
    seen = ObservedJob(name, trial, "Pending", start_time=started, progress=progress, decisions=decisions)
    if (done := _condition(status, "Complete")) is not None:
        finished = status.get("completionTime") or done.get("lastTransitionTime")
        return replace(seen, phase="Succeeded", completion_time=finished)
    if (failed := _condition(status, "Failed")) is not None:
        return replace(
            seen,
            # Ended by the operator's rung decision (its deadline cut to 1 s), not by a failure of its own.
            phase="Stopped" if seen.stop_decision else "Failed",
            reason=failed.get("reason") or "Failed",
            message=_clip(failed.get("message")),
            completion_time=failed.get("lastTransitionTime"),
        )
    if (job.get("spec") or {}).get("suspend"):
        return replace(seen, phase="Pending", reason=SUSPENDED, message=SUSPENDED_MESSAGE)
    # FailureTarget (or SuccessCriteriaMet): the Job controller has decided, but Failed (Complete) waits until
    # the pods have stopped, and a pod that is still stopping may yet leave its termination message. Until then
    # the trial is not finished; it runs, as do pods that are terminating (`active` no longer counts them).
    if (deciding := _condition(status, "FailureTarget") or _condition(status, "SuccessCriteriaMet")) is not None:
        why = f"the Job controller ended the Job ({deciding.get('reason') or deciding.get('type')}); its pods are stopping"
        return replace(seen, phase="Running", reason=str(deciding.get("type")), message=_clip(why))
    running = (status.get("active") or 0) > 0 or (status.get("terminating") or 0) > 0
    return replace(seen, phase="Running" if running else "Pending")


def _epochs(text: str | None) -> dict[int, dict[str, Any]]:
    """An annotation holding ``{"<epoch>": {...}}``; anything unreadable is no record (the trainer reports again)."""
    try:
        value = json.loads(text) if text else {}
        return {int(epoch): dict(item) for epoch, item in value.items() if isinstance(item, dict)}
    except (ValueError, TypeError, AttributeError):
        return {}


def observe_jobs(job: Mapping[str, Any]) -> list[ObservedJob]:
    """A trial Job to its trial, or a pack Job to each of its members (`rendering.TRIALS_ANNOTATION`)."""
    observed = observe_job(job)
    members = ((job.get("metadata") or {}).get("annotations") or {}).get(TRIALS_ANNOTATION)
    if not members:
        return [observed]
    return [replace(observed, trial=trial, packed=True) for trial in str(members).split(",")]


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:MESSAGE_LIMIT]


def termination_message(pod: Mapping[str, Any], name: str = CONTAINER) -> tuple[str, str] | None:
    """(finishedAt, message) of the named container's last termination, if it left a message."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") != name:
            continue
        for state in (container.get("state") or {}, container.get("lastState") or {}):
            terminated = state.get("terminated")
            if terminated and terminated.get("message"):
                return str(terminated.get("finishedAt") or ""), str(terminated["message"])
    return None


# What stands for a termination message that is not the program's JSON summary. Its text is never shown: it
# may be anything the container wrote there (or, under another terminationMessagePolicy, its log tail), and the
# status and Events are readable by everyone with the view role, while the Secrets the trial held are not.
UNSTRUCTURED_MESSAGE = (
    "the container exited without its JSON summary; its own output is not copied here (it may hold secrets): "
    "read it with kubectl logs, if you may"
)


def parse_summary(trial: str, message: str) -> TerminationSummary:
    """The trainer's JSON summary, or (a crash) a Failed summary that says there was none, never its text."""
    try:
        return TerminationSummary.decode(message)
    except (ValidationError, json.JSONDecodeError, TypeError):
        return TerminationSummary(trial=trial, status="Failed", reason="NoSummary", message=UNSTRUCTURED_MESSAGE)


def summaries_by_trial(pods: Sequence[Mapping[str, Any]]) -> dict[str, TerminationSummary]:
    """The latest termination summary per trial, from the sweep's pods."""
    latest: dict[str, tuple[str, str]] = {}
    for pod in pods:
        trial = ((pod.get("metadata") or {}).get("labels") or {}).get(TRIAL_LABEL)
        found = termination_message(pod)
        if trial and found and (trial not in latest or found[0] >= latest[trial][0]):
            latest[trial] = found
    summaries: dict[str, TerminationSummary] = {}
    for trial, (_, message) in latest.items():
        try:
            summaries.update({member.trial: member for member in PackSummary.model_validate_json(message).pack})
        except ValidationError:
            summaries[trial] = parse_summary(trial, message)
    return summaries


def with_summaries(jobs: Sequence[ObservedJob], summaries: Mapping[str, TerminationSummary]) -> list[ObservedJob]:
    """Each Job with its trial's summary; a finished pack's member takes its phase from its own summary (a pack
    Job fails as a whole when one member failed for good, yet its other members succeeded)."""
    out = []
    for job in jobs:
        summary = summaries.get(job.trial, job.summary)
        phase = job.phase
        if job.packed and job.terminal and summary is not None:
            phase = summary.status
        out.append(replace(job, summary=summary, phase=phase))
    return out


def unschedulable(pods: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """trial -> (reason, message) of its pod the scheduler cannot place (no node has the GPUs it asks for, say)."""
    found = {}
    for pod in pods:
        trial = ((pod.get("metadata") or {}).get("labels") or {}).get(TRIAL_LABEL)
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and trial:
                found[trial] = (str(condition.get("reason") or "Unschedulable"), _clip(condition.get("message")) or "")
    return found


def with_pending_reasons(jobs: Sequence[ObservedJob], reasons: Mapping[str, tuple[str, str]]) -> list[ObservedJob]:
    """Unfinished Jobs whose pod waits for a node: Pending (not Running, though the Job counts it active), and why."""
    return [
        replace(job, phase="Pending", reason=reasons[job.trial][0], message=reasons[job.trial][1])
        if not job.terminal and job.trial in reasons
        else job
        for job in jobs
    ]


def unreadable_results(jobs: Sequence[ObservedJob], previous: LoraSweepStatus) -> list[ObservedJob]:
    """Succeeded Jobs, not yet recorded, whose termination message holds no result (`RESULT_UNREADABLE`)."""
    return [
        job
        for job in jobs
        if job.phase == "Succeeded"
        and job.trial not in previous.outcomes
        and (job.summary is None or job.summary.status != "Succeeded")
    ]


# --- launching ----------------------------------------------------------------------------------------------

# The Job controller's conditions that end a Job or decide its end; a Job with one of them is left alone.
_DECIDED = ("Complete", "Failed", "FailureTarget", "SuccessCriteriaMet")


def suspensions(suspend: bool, jobs: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """spec.suspend applied to the sweep's unfinished Jobs (trials, preparation), as (Job name, merge patch).

    Suspended: every unfinished Job that is not suspended yet; the Job controller then stops its pods (not counted
    as failures) and the trial restarts from its beginning on resume. Each is marked (`SUSPENDED_ANNOTATION`), so
    resuming unsuspends only what the sweep suspended: a Job created suspended for Kueue stays Kueue's to admit,
    and a queued Job the sweep suspended goes back to Kueue suspended (Kueue starts it when it admits it again).
    Finished Jobs are never touched: their results are recorded."""
    patches = []
    for job in jobs:
        status = job.get("status") or {}
        if any(_condition(status, kind) for kind in _DECIDED):
            continue
        metadata = job.get("metadata") or {}
        name = str(metadata.get("name", ""))
        suspended = bool((job.get("spec") or {}).get("suspend"))
        ours = SUSPENDED_ANNOTATION in (metadata.get("annotations") or {})
        if suspend and not suspended:
            patches.append(
                (name, {"metadata": {"annotations": {SUSPENDED_ANNOTATION: "true"}}, "spec": {"suspend": True}})
            )
        elif not suspend and ours:
            patch: dict[str, Any] = {"metadata": {"annotations": {SUSPENDED_ANNOTATION: None}}}
            if KUEUE_QUEUE_LABEL not in (metadata.get("labels") or {}):
                patch["spec"] = {"suspend": False}
            patches.append((name, patch))
    return patches


def launches(
    spec: LoraSweepSpec,
    plan: Sequence[PlannedTrial],
    jobs: Sequence[ObservedJob],
    previous: LoraSweepStatus,
) -> list[PlannedTrial]:
    """The next trials to create: plan order, never more than `parallelism` unfinished Jobs at once."""
    if spec.suspend:
        return []
    finished = _finished(jobs, previous)
    failed = sum(1 for phase, _ in finished.values() if phase == "Failed")
    if failed > spec.max_failed_trials:
        return []
    existing = {job.trial for job in jobs}
    # parallelism counts Jobs (pods): a pack's members share one.
    active = len({job.name for job in jobs if not job.terminal and job.trial not in finished})
    room = spec.parallelism - active
    if room <= 0:
        return []
    waiting = [trial for trial in plan if trial.id not in existing and trial.id not in finished]
    chosen: list[PlannedTrial] = []
    names: set[str] = set()
    for trial in waiting:
        if trial.job_name not in names and len(names) == room:
            break
        names.add(trial.job_name)
        chosen.append(trial)
    return chosen


def _finished(jobs: Sequence[ObservedJob], previous: LoraSweepStatus) -> dict[str, tuple[TrialPhase, float | None]]:
    finished: dict[str, tuple[TrialPhase, float | None]] = {
        trial: (outcome.phase, outcome.objective) for trial, outcome in previous.outcomes.items()
    }
    for job in jobs:
        if job.terminal and job.trial not in finished:
            finished[job.trial] = (job.phase, None)
    return finished


# --- aggregation --------------------------------------------------------------------------------------------


def _row(
    trial: PlannedTrial,
    job: ObservedJob | None,
    recorded: TrialStatus | None,
    outcome: TrialOutcome | None,
    spec: LoraSweepSpec,
) -> TrialStatus:
    base = {
        "id": trial.id,
        "job": trial.job_name,
        "group": trial.group,
        "variant": trial.variant,
        "seed": trial.seed,
        "params": trial.training,
    }
    if outcome is not None:
        # Recorded once, never rewritten: the Job and its pods may be gone.
        if recorded is not None and recorded.phase == outcome.phase:
            return recorded
        return TrialStatus(**base, phase=outcome.phase, objective=outcome.objective)
    if job is None:
        return TrialStatus(**base, phase="Pending")
    row = TrialStatus(**base, phase=job.phase, start_time=job.start_time, completion_time=job.completion_time)
    if not job.terminal:
        return row.model_copy(update={"reason": job.reason, "message": job.message}) if job.reason else row
    summary = job.summary
    if job.phase == "Succeeded":
        if summary is None or summary.status != "Succeeded":
            return row.model_copy(update={"reason": RESULT_UNREADABLE, "message": _unreadable(summary)})
        metrics = dict(summary.metrics)
        return row.model_copy(
            update={
                "objective": metrics.get(spec.objective.metric),
                "metrics": metrics,
                "best_epoch": summary.best_epoch,
                "metrics_uri": summary.metrics_uri,
            }
        )
    if job.phase == "Stopped":
        return _stopped_row(row, job, spec)
    reason = job.reason
    message = job.message
    if summary is not None and summary.status == "Failed":
        reason = summary.reason or reason
        message = _clip(summary.message) or message
    return row.model_copy(update={"reason": reason, "message": message})


def _unreadable(summary: TerminationSummary | None) -> str:
    what = (
        "left no termination message"
        if summary is None
        else "left a termination message that is no result (truncated past the kubelet's 4 KiB, or malformed)"
    )
    return (
        f"the trial succeeded but {what}, so its objective is not known here; the sweep report reads its "
        "metrics.json, and an operator started with --write-reports recovers it from there"
    )


def _stopped_row(row: TrialStatus, job: ObservedJob, spec: LoraSweepSpec) -> TrialStatus:
    """A trial stopped at a rung: its last epoch's metrics and why it was stopped (no objective: it is not
    comparable with trials that ran every epoch)."""
    last = max(job.progress, default=None)
    metrics = {k: v for k, raw in (job.progress[last] if last else {}).items() if (v := _finite(raw)) is not None}
    found = job.stop_decision
    assert found is not None
    rung, decision = found
    rule = spec.early_stopping_rule()
    metric = rule[0] if rule else spec.objective.metric
    value = job.progress.get(rung, {}).get(metric)
    shown = "unknown" if value is None else f"{value:.4g}"
    message = (
        f"stopped at epoch {rung}: {metric}={shown} below the rung's cutoff {float(decision.get('cutoff', 0)):.4g} "
        f"(best 1/{spec.early_stopping.reduction_factor if spec.early_stopping else '?'} of "
        f"{decision.get('compared', '?')} results)"
    )
    return row.model_copy(
        update={"metrics": metrics, "epochs_completed": last, "reason": "EarlyStopped", "message": _clip(message)}
    )


def _sort_key(row: TrialStatus, index: int, sign: float) -> tuple[int, float, int]:
    if row.phase == "Succeeded" and row.objective is not None:
        return (0, sign * row.objective, index)
    order = {"Succeeded": 1, "Running": 2, "Stopped": 3, "Failed": 4, "Pending": 5}
    return (order[row.phase], 0.0, index)


def _table(rows: list[tuple[int, TrialStatus]], sign: float) -> tuple[list[TrialStatus], bool]:
    ranked = sorted(rows, key=lambda item: _sort_key(item[1], item[0], sign))
    if len(ranked) <= FULL_TABLE_LIMIT:
        return [row for _, row in ranked], False
    kept: list[TrialStatus] = []
    for phase in ("Succeeded", "Running", "Stopped", "Failed"):
        kept.extend([row for _, row in ranked if row.phase == phase][:TOP_K])
    return kept, True


def _best(rows: Sequence[tuple[int, TrialStatus]], spec: LoraSweepSpec, sign: float) -> BestTrial | None:
    candidates = [(i, r) for i, r in rows if r.phase == "Succeeded" and r.objective is not None]
    if not candidates:
        return None
    _, row = min(candidates, key=lambda item: _sort_key(item[1], item[0], sign))
    assert row.objective is not None
    return BestTrial(
        trial=row.id,
        job=row.job,
        group=row.group,
        variant=row.variant,
        seed=row.seed,
        params=row.params,
        metric=spec.objective.metric,
        objective=row.objective,
        metrics_uri=row.metrics_uri,
        adapter_uri=adapter_uri_beside(row.metrics_uri) if row.metrics_uri else None,
        summary=f"{row.objective:.4g} {row.variant or row.id}",
    )


def set_condition(conditions: Sequence[Condition], new: Condition, now: str) -> list[Condition]:
    """Replace the condition of `new.type`, keeping lastTransitionTime when the status did not change."""
    kept = [c for c in conditions if c.type != new.type]
    old = next((c for c in conditions if c.type == new.type), None)
    since = old.last_transition_time if old is not None and old.status == new.status else now
    return [*kept, new.model_copy(update={"last_transition_time": since})]


def aggregate(
    spec: LoraSweepSpec,
    plan: Sequence[PlannedTrial],
    jobs: Sequence[ObservedJob],
    previous: LoraSweepStatus,
    generation: int | None,
    now: str,
    total: int | None = None,
) -> Reconciled:
    """The sweep's status after this pass (`jobs` already includes any Job created in it). `total`: the trials the
    sweep will have when more than `plan` holds yet (search.optimize proposes them as it goes)."""
    by_trial = {job.trial: job for job in jobs}
    recorded = {row.id: row for row in previous.trials}
    sign = -1.0 if spec.objective.resolved_goal == "maximize" else 1.0

    rows: list[tuple[int, TrialStatus]] = []
    outcomes: dict[str, TrialOutcome] = {}
    events: list[Event] = []
    for trial in plan:
        outcome = previous.outcomes.get(trial.id)
        row = _row(trial, by_trial.get(trial.id), recorded.get(trial.id), outcome, spec)
        rows.append((trial.index, row))
        if row.phase in TERMINAL_TRIAL_PHASES:
            assert row.phase == "Succeeded" or row.phase == "Failed" or row.phase == "Stopped"
            outcomes[trial.id] = outcome or _outcome(spec, trial, row, by_trial.get(trial.id))
            if outcome is None:
                events.append(_trial_event(row, spec))
    # Outcomes of trials no longer planned (spec.training edited) are kept: they happened.
    for trial_id, outcome in previous.outcomes.items():
        outcomes.setdefault(trial_id, outcome)
    outcomes = bounded_outcomes(outcomes, {trial.id: trial.index for trial in plan}, sign)

    counts = TrialCounts(total=max(len(plan), total or 0))
    counts.pending = counts.total - len(plan)  # not proposed yet
    for _, row in rows:
        setattr(counts, row.phase.lower(), getattr(counts, row.phase.lower()) + 1)
    table, truncated = _table(rows, sign)
    best = _best(rows, spec, sign)
    if best is not None and (previous.best is None or previous.best.trial != best.trial):
        events.append(
            Event(
                "Normal",
                "NewBest",
                f"trial {best.trial} leads with {best.metric}={best.objective:.4g} ({best.variant})",
            )
        )

    phase, reason, message = _phase(spec, counts)
    conditions = set_condition(previous.conditions, Condition(type=SPEC_VALID, status="True", reason="Valid"), now)
    conditions = set_condition(
        conditions,
        Condition(
            type=SUSPENDED,
            status="True" if spec.suspend and phase not in TERMINAL_SWEEP_PHASES else "False",
            reason="SuspendedBySpec" if spec.suspend else "NotSuspended",
        ),
        now,
    )
    conditions = set_condition(
        conditions,
        Condition(type=COMPLETE, status="True" if phase == "Succeeded" else "False", reason=reason, message=message),
        now,
    )
    conditions = set_condition(
        conditions,
        Condition(type=FAILED, status="True" if phase == "Failed" else "False", reason=reason, message=message),
        now,
    )
    if phase != previous.phase and phase in TERMINAL_SWEEP_PHASES:
        events.append(Event("Normal" if phase == "Succeeded" else "Warning", reason, message))

    started = previous.start_time or (now if jobs or outcomes else None)
    completion = previous.completion_time
    if phase in TERMINAL_SWEEP_PHASES and counts.running == 0 and not any(not j.terminal for j in jobs):
        completion = completion or now
    else:
        completion = None
    status = LoraSweepStatus(
        phase=phase,
        message=message,
        conditions=conditions,
        observed_generation=generation,
        counts=counts,
        best=best,
        trials=table,
        trials_truncated=truncated,
        outcomes=outcomes,
        start_time=started,
        completion_time=completion,
        report_uri=previous.report_uri,
        source_trials=previous.source_trials,
    )
    return Reconciled(status=status, events=events)


def bounded_outcomes(
    outcomes: Mapping[str, TrialOutcome], order: Mapping[str, int], sign: float
) -> dict[str, TrialOutcome]:
    """Every finished trial stays (it is never relaunched, and counts), but only the best `FROM_SWEEP_TOP_MAX`
    keep their objective: the trial table and status.best hold fewer, search.fromSweep takes at most that many,
    and a trial outside them can never re-enter (recorded objectives do not change). Ties: plan order."""
    scored = sorted(
        (trial for trial, outcome in outcomes.items() if outcome.objective is not None),
        key=lambda trial: (sign * (outcomes[trial].objective or 0.0), order.get(trial, len(order)), trial),
    )
    kept = set(scored[:FROM_SWEEP_TOP_MAX])
    return {
        # search.optimize's proposals keep theirs: the next proposals are made from every result.
        trial: outcome
        if outcome.objective is None or trial in kept or outcome.params is not None
        else outcome.model_copy(update={"objective": None})
        for trial, outcome in outcomes.items()
    }


def source_results(goal: Goal, status: LoraSweepStatus, plan: Sequence[PlannedTrial]) -> list[SourceTrial]:
    """A finished sweep's succeeded trials with an objective, best first (ties: plan order), from its complete
    results: the objectives in status.outcomes, the parameters from its plan (`plan`, planned from its spec)
    or its trial table, so a table cut to the top rows past FULL_TABLE_LIMIT trials takes nothing away."""
    configurations: dict[str, tuple[str | None, TrainingConfig]] = {t.id: (t.group, t.training) for t in plan}
    for row in status.trials:
        configurations.setdefault(row.id, (row.group, row.params))
    order = {trial: index for index, trial in enumerate(configurations)}
    sign = -1.0 if goal == "maximize" else 1.0
    found = [
        (trial, outcome.objective)
        for trial, outcome in status.outcomes.items()
        if outcome.phase == "Succeeded" and outcome.objective is not None and trial in configurations
    ]
    found.sort(key=lambda item: (sign * item[1], order[item[0]]))
    return [
        SourceTrial(id=trial, group=configurations[trial][0], params=configurations[trial][1], objective=objective)
        for trial, objective in found[:FROM_SWEEP_TOP_MAX]
    ]


def _outcome(spec: LoraSweepSpec, trial: PlannedTrial, row: TrialStatus, job: ObservedJob | None) -> TrialOutcome:
    """What is kept of a finished trial: what later rung decisions and proposals need besides phase and objective."""
    rule = stopping_rule(spec)
    rungs = None
    if rule is not None and job is not None and job.progress:
        reported = _reported(job, rule.metric)
        rungs = {
            epoch: reported[epoch] for epoch in early_stopping.rungs(rule, trial.training.epochs) if epoch in reported
        }
    optimize = spec.search.optimize is not None
    return TrialOutcome(
        phase=row.phase,
        objective=row.objective,
        rungs=rungs,
        params=trial.training if optimize else None,
        index=trial.index if optimize else None,
    )


def recorded(
    spec: LoraSweepSpec, jobs: Sequence[Mapping[str, Any]], observed: Sequence[ObservedJob], previous: LoraSweepStatus
) -> list[Recorded]:
    """search.optimize's proposals so far: every trial Job (its configuration from its ``LORASWEEP_TRIAL``), and the
    recorded outcomes of those whose Jobs are gone. Results are the outcome's, else the Job's summary."""
    by_name = {job.name: job for job in observed}
    rows = {row.id: row for row in previous.trials}
    found: dict[str, Recorded] = {}
    for trial_id, outcome in previous.outcomes.items():
        if outcome.params is not None and outcome.index is not None:
            seed = rows[trial_id].seed if trial_id in rows else spec.search.seeds[0]
            found[trial_id] = Recorded(
                outcome.index, trial_id, outcome.params, seed, outcome.phase, outcome.objective,
                dict(outcome.rungs or {}),
            )  # fmt: skip
    for body in jobs:
        metadata = body.get("metadata") or {}
        seen = by_name.get(str(metadata.get("name")))
        if seen is None or seen.trial in found:
            continue
        config = _trial_config(body)
        index = (metadata.get("annotations") or {}).get(INDEX_ANNOTATION)
        if config is None or index is None or not str(index).isdigit():
            continue  # not a Job this operator rendered
        objective = None
        if seen.phase == "Succeeded" and seen.summary is not None and seen.summary.status == "Succeeded":
            objective = seen.summary.metrics.get(spec.objective.metric)
        rule = spec.early_stopping_rule()
        values = _reported(seen, rule[0]) if rule else {}
        found[seen.trial] = Recorded(
            int(index), seen.trial, config.training, config.seed, seen.phase, objective, values
        )
    return sorted(found.values(), key=lambda item: item.index)


def _reported(job: ObservedJob, metric: str) -> dict[int, float]:
    """`metric` of each epoch the Job's trial reported (finite values only)."""
    return {epoch: v for epoch, m in job.progress.items() if (v := _finite(m.get(metric))) is not None}


def _finite(value: Any) -> float | None:
    """A reported number fit for the status (JSON has no NaN); else None."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def stopping_rule(spec: LoraSweepSpec) -> early_stopping.Rule | None:
    resolved = spec.early_stopping_rule()
    if resolved is None or spec.early_stopping is None:
        return None
    return early_stopping.Rule(
        resolved[0], resolved[1], spec.early_stopping.reduction_factor, spec.early_stopping.min_epochs
    )


def histories(
    spec: LoraSweepSpec, plan: Sequence[PlannedTrial], jobs: Sequence[ObservedJob], previous: LoraSweepStatus
) -> dict[str, early_stopping.History]:
    """What ASHA knows of each trial: its Job's reported epochs and recorded decisions, or (Job gone) its outcome."""
    rule = stopping_rule(spec)
    assert rule is not None
    by_trial = {job.trial: job for job in jobs}
    found: dict[str, early_stopping.History] = {}
    for trial in plan:
        job = by_trial.get(trial.id)
        outcome = previous.outcomes.get(trial.id)
        if job is not None:
            values = _reported(job, rule.metric)
            decided = {rung: bool(d.get("stop")) for rung, d in job.decisions.items()}
            finished = job.phase in ("Succeeded", "Failed") or outcome is not None
            found[trial.id] = early_stopping.History(trial.training.epochs, values, decided, finished)
        elif outcome is not None:
            values = dict(outcome.rungs or {})
            found[trial.id] = early_stopping.History(trial.training.epochs, values, {}, finished=True)
    return found


def _trial_config(job: Mapping[str, Any]) -> TrialConfig | None:
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for container in containers:
        for variable in container.get("env") or []:
            if variable.get("name") == TRIAL_ENV:
                try:
                    return TrialConfig.model_validate_json(variable.get("value") or "")
                except ValidationError:
                    return None
    return None


def _phase(spec: LoraSweepSpec, counts: TrialCounts) -> tuple[SweepPhase, str, str]:
    tally = f"{counts.total} trials: {counts.succeeded} succeeded, {counts.failed} failed"
    if counts.stopped:
        tally += f", {counts.stopped} stopped early"
    if counts.failed > spec.max_failed_trials:
        return (
            "Failed",
            "TooManyFailedTrials",
            f"{tally}, more than maxFailedTrials={spec.max_failed_trials}; no new trials are launched",
        )
    if counts.succeeded + counts.failed + counts.stopped == counts.total:
        return "Succeeded", "AllTrialsFinished", tally
    if spec.suspend:
        return (
            "Suspended",
            "SuspendedBySpec",
            f"{tally}, {counts.running} running; no trial is launched and the unfinished trials' Jobs are suspended "
            "(spec.suspend); they run again from their start when it is set to false",
        )
    detail = f"{tally}, {counts.running} running, {counts.pending} pending"
    if counts.running or counts.succeeded or counts.failed or counts.stopped:
        return "Running", "TrialsRunning", detail
    return "Pending", "TrialsPending", detail


def _trial_event(row: TrialStatus, spec: LoraSweepSpec) -> Event:
    if row.phase == "Stopped":
        return Event("Normal", "TrialStopped", f"trial {row.id} ({row.variant}) {row.message or 'stopped early'}")
    if row.phase == "Succeeded":
        objective = "unknown" if row.objective is None else f"{row.objective:.4g}"
        return Event("Normal", "TrialSucceeded", f"trial {row.id} ({row.variant}) {spec.objective.metric}={objective}")
    return Event(
        "Warning", "TrialFailed", f"trial {row.id} ({row.variant}) failed: {row.reason}: {row.message or ''}".strip()
    )


def invalid(
    previous: LoraSweepStatus, problem: str, generation: int | None, now: str, reason: str = "InvalidSpec"
) -> LoraSweepStatus:
    """The status of a sweep whose spec cannot run: phase Failed, SpecValid False with what to fix (`reason`:
    InvalidSpec, or NotAllowedByPolicy for a spec the operator's policy refuses)."""
    condition = Condition(type=SPEC_VALID, status="False", reason=reason, message=_clip(problem) or "")
    failed = Condition(type=FAILED, status="True", reason=reason, message=condition.message)
    conditions = set_condition(set_condition(previous.conditions, condition, now), failed, now)
    return previous.model_copy(
        update={
            "phase": "Failed",
            "message": condition.message,
            "conditions": conditions,
            "observed_generation": generation,
        }
    )


def waiting(previous: LoraSweepStatus, reason: str, problem: str, generation: int | None, now: str) -> LoraSweepStatus:
    """Planning must wait (fromSweep's source is not finished): Pending with the reason."""
    condition = Condition(type=SPEC_VALID, status="Unknown", reason=reason, message=_clip(problem) or "")
    return previous.model_copy(
        update={
            "phase": "Pending",
            "message": condition.message,
            "conditions": set_condition(previous.conditions, condition, now),
            "observed_generation": generation,
        }
    )


# --- the report ---------------------------------------------------------------------------------------------
#
# Once a sweep has finished, its report is written once: by the operator itself (`--write-reports`) or by a
# report Job. The ReportWritten condition is the memory: Unknown while a Job works on it, True with
# status.reportUri once written, False when it failed or there was nothing to report. True and False are
# final, so a report Job deleted afterwards (ttlSecondsAfterFinished, by hand) is not launched again.

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def report_due(status: LoraSweepStatus) -> bool:
    """The sweep has finished and its report is neither written nor given up on."""
    if status.phase not in TERMINAL_SWEEP_PHASES or not status.completion_time or status.report_uri:
        return False
    condition = status.condition(REPORT_WRITTEN)
    return condition is None or condition.status == "Unknown"


def report_inputs(status: LoraSweepStatus) -> tuple[list[str], dict[str, str]]:
    """The trials a report covers (every finished trial of this sweep object, so metrics.json files left
    under the same prefix by an earlier sweep of the same name stay out) and the failed ones with why."""
    rows = {row.id: row for row in status.trials}
    failed = {}
    for trial, outcome in sorted(status.outcomes.items()):
        if outcome.phase == "Failed":
            row = rows.get(trial)
            why = " ".join(part for part in (row.reason, row.message) if part) if row else ""
            failed[trial] = why or "Failed"
    return sorted(status.outcomes), failed


def termination_message_of(pods: Sequence[Mapping[str, Any]], job: str, container: str) -> str | None:
    """The latest termination message of Job `job`'s pods (its container ``container``)."""
    found = [
        message
        for pod in pods
        if ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL) == job
        and (message := termination_message(pod, container)) is not None
    ]
    return max(found)[1] if found else None


def report_summary(pods: Sequence[Mapping[str, Any]], job: str) -> ReportSummary | None:
    """The latest termination summary of report Job `job`'s pods; a crash as a Failed one (never its text)."""
    message = termination_message_of([pod for pod in pods if is_report(pod)], job, REPORT_CONTAINER)
    if message is None:
        return None
    try:
        return ReportSummary.decode(message)
    except ValidationError:
        return ReportSummary(status="Failed", reason="NoSummary", message=UNSTRUCTURED_MESSAGE)


def _report_condition(
    status: LoraSweepStatus, state: Literal["True", "False", "Unknown"], reason: str, message: str, now: str
) -> tuple[LoraSweepStatus, bool]:
    """The status with ReportWritten set; True when the condition's reason changed (an Event is due)."""
    old = status.condition(REPORT_WRITTEN)
    condition = Condition(type=REPORT_WRITTEN, status=state, reason=reason, message=_clip(message) or "")
    changed = old is None or (old.status, old.reason) != (state, reason)
    return status.model_copy(update={"conditions": set_condition(status.conditions, condition, now)}), changed


def report_written(status: LoraSweepStatus, uri: str, detail: str, now: str) -> Reconciled:
    message = f"report at {uri}{detail}"
    new, changed = _report_condition(status, "True", "ReportWritten", message, now)
    new = new.model_copy(update={"report_uri": uri})
    return Reconciled(new, [Event("Normal", "ReportWritten", message)] if changed else [])


def report_failed(status: LoraSweepStatus, reason: str, message: str, now: str) -> Reconciled:
    """Final: the report is not tried again. The sweep's phase stays what its trials made it."""
    new, changed = _report_condition(status, "False", reason, message, now)
    return Reconciled(new, [Event("Warning", "ReportFailed", f"{reason}: {message}")] if changed else [])


def nothing_to_report(status: LoraSweepStatus, now: str) -> Reconciled | None:
    """No trial succeeded: a report would be empty, so none is written (and no Job started)."""
    if any(outcome.phase == "Succeeded" for outcome in status.outcomes.values()):
        return None
    message = "no trial succeeded, so there is no report; the trial table says why each failed"
    new, changed = _report_condition(status, "False", "NoResults", message, now)
    return Reconciled(new, [Event("Normal", "ReportSkipped", message)] if changed else [])


@dataclass
class ReportStep:
    """Where the report Job leaves the sweep after this pass; `launch`: create the Job now."""

    status: LoraSweepStatus
    events: list[Event]
    launch: bool = False


def report_step(
    status: LoraSweepStatus,
    job: ObservedJob | None,
    summary: ReportSummary | None,
    expected_uri: str,
    now: str,
) -> ReportStep:
    """The report Job's part of the pass, for a sweep whose report is due (`report_due`)."""
    if job is None:
        skipped = nothing_to_report(status, now)
        if skipped is not None:
            return ReportStep(skipped.status, skipped.events)
        message = f"a report Job writes {expected_uri}"
        new, changed = _report_condition(status, "Unknown", "ReportJobCreated", message, now)
        return ReportStep(new, [Event("Normal", "ReportJobCreated", message)] if changed else [], launch=True)
    if not job.terminal:
        new, _ = _report_condition(status, "Unknown", "ReportJobRunning", f"report Job {job.name} is running", now)
        return ReportStep(new, [])
    if job.phase == "Succeeded":
        if summary is not None and summary.status == "Written" and summary.report_uri:
            best = f"; best: {summary.best}" if summary.best else ""
            done = report_written(status, summary.report_uri, f" ({summary.trials} trials{best})", now)
        else:
            # The Job succeeded, so the report is where the Job was told to write it (its pod may be gone).
            done = report_written(status, expected_uri, "", now)
        return ReportStep(done.status, done.events)
    why = summary.message if summary is not None and summary.status == "Failed" and summary.message else None
    why = why or f"{job.reason or 'Failed'}: {job.message or 'no message'}"
    failed = report_failed(status, "ReportJobFailed", f"report Job {job.name} failed: {why}", now)
    return ReportStep(failed.status, failed.events)
