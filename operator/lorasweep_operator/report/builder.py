"""Build the sweep report from its trials' metrics: pure, no I/O.

Selection uses the objective on the validation split only; test accuracy is carried beside it and
never used to rank, pick or recommend. Trials that differ only in their seed are one configuration:
their accuracies are averaged and their spread reported.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from lorasweep_operator.report import formatting as fmt
from lorasweep_operator.report.model import (
    Accuracy,
    AdapterRef,
    ClassResult,
    Configuration,
    DataSummary,
    Dynamics,
    EfficiencyRow,
    EpochPoint,
    GroupRow,
    GroupTable,
    Methodology,
    ParamValue,
    Report,
    Reproducibility,
    SplitData,
    TrainingDynamics,
    Trend,
)
from lorasweep_operator.report.stats import mean_std, points_per_sample, wilson_interval
from lorasweep_trainer.config import Goal, ObjectiveMetric, default_goal
from lorasweep_trainer.data import parse_ntu_name
from lorasweep_trainer.results import TrialMetrics

BASELINE = "baseline"
TOP_K = 10
MAX_GROUP_ROWS = 12
OBJECTIVE_NAMES = {
    "val_accuracy": "validation accuracy",
    "val_macro_f1": "validation macro F1",
    "val_loss": "validation loss",
}
TOP_CURVES = 5  # configurations drawn in the training-dynamics figure
EARLY_PEAK_EPOCHS = 2  # validation peaked this many epochs or more before the last: said to have peaked early
RISING_MARGIN = 1e-9
STOPPED = ("stopped", "Stopped")
PRIMARY_PARAMS = ("learning_rate", "lora_rank", "lora_alpha", "lora_dropout")
PER_CLASS_TOLERANCE = 0.0051  # per-class figures are often rounded to two decimals


def build_report(
    trials: Sequence[TrialMetrics],
    *,
    objective: ObjectiveMetric = "val_accuracy",
    goal: Goal | None = None,
    sweep: str | None = None,
    failed: Mapping[str, str] | None = None,
    generated_at: datetime | None = None,
    top_k: int = TOP_K,
    stopped: Mapping[str, str] | None = None,
    class_actions: Mapping[str, Sequence[int] | str] | None = None,
    notes: Sequence[str] = (),
) -> Report:
    """The whole report for ``trials`` (any order); ``failed`` names trials that left no metrics, with why;
    ``stopped`` names trials stopped early (early stopping), listed apart and never ranked, as is a trial
    whose metrics.json says it stopped. ``class_actions`` (the sweep's dataset.classes) counts the classes
    of every split; ``notes`` are warnings found before (unreadable files, missing fields)."""
    stopped = dict(stopped or {})
    warnings_before = list(notes)
    usable = []
    for t in trials:
        if t.trial in stopped or _says_stopped(t):
            stopped.setdefault(t.trial, _stopped_reason(t))
            continue
        impossible = impossible_values(t)
        if impossible:
            warnings_before += [f"trial {t.trial}: {why}; left out of the report" for why in impossible]
            continue
        usable.append(t)
    if not usable:
        found = f"{fmt.plural(len(trials), 'trial')} had metrics" if trials else "no metrics.json was found"
        why = "; ".join([*warnings_before, *(f"{t}: stopped early" for t in stopped)]) or "none was readable"
        raise ValueError(f"no trial results to report on: {found}, none usable ({why})")
    trials = usable
    goal = goal or default_goal(objective)
    failed = dict(failed or {})
    first = trials[0]
    baseline_key = _baseline_key(trials)
    baseline_params = _params(_by_key(trials)[baseline_key][0]) if baseline_key else None

    configurations = [
        _configuration(members, objective, baseline_key == key, baseline_params)
        for key, members in _by_key(trials).items()
    ]
    ranked = sorted(configurations, key=lambda c: _rank_key(c, goal))
    best = ranked[0]
    best_adapter = _best_adapter([t for t in trials if t.trial in best.trials], objective, goal)
    baseline = next((c for c in configurations if c.is_baseline), None)
    groups = sorted(_group_tables(ranked, baseline), key=lambda g: (-g.spread, g.name))
    seeds = sorted({t.params.seed for t in trials})
    methodology = _methodology(trials, ranked, groups, seeds, failed).model_copy(update={"stopped_trials": stopped})
    dynamics = _dynamics(ranked, _by_key(trials))

    return Report(
        sweep=sweep or first.sweep,
        generated_at=(generated_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        model=model_label(first),
        objective=objective,
        goal=goal,
        classes=list(first.classes),
        summary=_summary(trials, ranked, baseline, groups, objective, methodology) + _adapter_line(best_adapter),
        methodology=methodology,
        ranked=ranked,
        top=ranked[:top_k],
        best=best,
        best_adapter=best_adapter,
        baseline=baseline,
        groups=groups,
        efficiency=_efficiency(ranked),
        recommendations=_recommendations(ranked, baseline, objective, methodology, dynamics),
        reproducibility=_reproducibility(trials, seeds),
        warnings=warnings_before + _warnings(trials, objective),
        dynamics=dynamics,
        data=_data(trials, class_actions),
    )


def _says_stopped(trial: TrialMetrics) -> bool:
    extra = trial.model_extra or {}
    return extra.get("status") in STOPPED or extra.get("phase") in STOPPED


def _stopped_reason(trial: TrialMetrics) -> str:
    extra = trial.model_extra or {}
    reason = extra.get("reason") or extra.get("message")
    ran = f"after {fmt.plural(len(trial.epochs), 'epoch')} of {trial.params.epochs}"
    best = f", best validation accuracy {fmt.percent(trial.val_accuracy)}" if _fraction(trial.val_accuracy) else ""
    return f"stopped early {ran}{best}" + (f": {reason}" if isinstance(reason, str) and reason else "")


ACCURACY_FIELDS = ("train_accuracy", "val_accuracy", "test_accuracy", "val_macro_f1")


def _fraction(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0


def impossible_values(trial: TrialMetrics) -> list[str]:
    """Accuracies that cannot be (NaN, infinite, outside [0, 1]), each named by its field: a trial with
    one is not ranked, since its numbers cannot be trusted. A NaN loss is a real outcome, not listed."""
    found = []

    def check(where: str, value: float | None) -> None:
        if value is not None and not _fraction(value):
            found.append(f"{where} is {value!r}, not a fraction in [0, 1]")

    for name in ACCURACY_FIELDS:
        check(name, getattr(trial, name))
    for index, epoch in enumerate(trial.epochs):
        for name in ("train_accuracy", "val_accuracy", "val_macro_f1"):
            check(f"epochs[{index}].{name}", getattr(epoch, name, None))
    for name, row in trial.per_class.items():
        for part in ("precision", "recall", "f1"):
            check(f"per_class.{name}.{part}", getattr(row, part))
    if trial.confusion_matrix and any(v < 0 for row in trial.confusion_matrix for v in row):
        found.append("confusion_matrix has negative counts")
    return found


def _params(trial: TrialMetrics) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = trial.params.model_dump()
    params.pop("seed", None)
    return params


def _param_key(trial: TrialMetrics) -> str:
    return json.dumps(_params(trial), sort_keys=True)


def _by_key(trials: Sequence[TrialMetrics]) -> dict[str, list[TrialMetrics]]:
    """Trials grouped into configurations (same params but the seed), each sorted by seed then id."""
    grouped: dict[str, list[TrialMetrics]] = {}
    for trial in sorted(trials, key=lambda t: (t.params.seed, t.trial)):
        grouped.setdefault(_param_key(trial), []).append(trial)
    return dict(sorted(grouped.items(), key=lambda item: item[1][0].trial))


def _baseline_key(trials: Sequence[TrialMetrics]) -> str | None:
    """The configuration the planner marked as baseline; with none marked, the one ungrouped configuration."""
    for marker in (BASELINE, None):
        keys = {_param_key(t) for t in trials if t.group == marker}
        # An unmarked configuration is a baseline only where there is something to compare it with.
        if len(keys) == 1 and (marker == BASELINE or len({_param_key(t) for t in trials}) > 1):
            return keys.pop()
    return None


def _accuracy(values: Sequence[float], n: int) -> Accuracy:
    mean, std = mean_std(values)
    return Accuracy(mean=mean, std=std, n=n, interval=wilson_interval(mean, n), seeds=len(values))


def _label(trial: TrialMetrics, is_baseline: bool, baseline_params: Mapping[str, ParamValue] | None) -> str:
    if is_baseline:
        return BASELINE
    if baseline_params is not None:
        changed = _describe({k: v for k, v in _params(trial).items() if baseline_params.get(k) != v})
        if changed:
            return changed
    return trial.variant or trial.group or trial.trial


def _describe(params: Mapping[str, ParamValue]) -> str:
    return ", ".join(f"{fmt.param_label(k)}={fmt.param_value(k, v)}" for k, v in params.items())


def _configuration(
    members: Sequence[TrialMetrics],
    objective: ObjectiveMetric,
    is_baseline: bool,
    baseline_params: Mapping[str, ParamValue] | None,
) -> Configuration:
    first = members[0]
    objectives = [value for t in members if (value := t.objective(objective)) is not None]
    objective_mean, objective_std = mean_std(objectives) if objectives else (None, None)
    per_class = {}
    for name in first.classes:
        rows = [t.per_class[name] for t in members if name in t.per_class]
        if rows:
            per_class[name] = ClassResult(
                precision=mean_std([r.precision for r in rows])[0],
                recall=mean_std([r.recall for r in rows])[0],
                f1=mean_std([r.f1 for r in rows])[0],
                support=rows[0].support,
            )
    return Configuration(
        key=first.trial,
        trials=[t.trial for t in members],
        label=_label(first, is_baseline, baseline_params),
        group=first.group,
        variant=first.variant,
        is_baseline=is_baseline,
        params=_params(first),
        seeds=[t.params.seed for t in members],
        objective=objective_mean,
        objective_std=objective_std,
        train=_accuracy([t.train_accuracy for t in members], first.dataset.train),
        val=_accuracy([t.val_accuracy for t in members], first.dataset.val),
        test=_accuracy([t.test_accuracy for t in members], first.dataset.test),
        best_epochs=[t.best_epoch for t in members],
        epochs=first.params.epochs,
        trainable_parameters=first.trainable_parameters,
        total_parameters=first.total_parameters,
        per_class=per_class,
        confusion_matrix=_summed([t.confusion_matrix for t in members]),
        inference_ms_per_video=mean_std([t.inference_ms_per_video for t in members])[0],
        train_seconds=mean_std([t.train_seconds for t in members])[0],
        adapter_uris={t.trial: t.adapter_uri for t in members if t.adapter_uri},
    )


def _best_adapter(members: Sequence[TrialMetrics], objective: ObjectiveMetric, goal: Goal) -> AdapterRef | None:
    """The adapter of the best configuration's best seed (the first on a tie), where one was found."""
    sign = -1.0 if goal == "maximize" else 1.0
    scored = [
        (sign * value, i, t)
        for i, t in enumerate(members)
        if t.adapter_uri and (value := t.objective(objective)) is not None
    ]
    if not scored:
        return None
    _, _, chosen = min(scored, key=lambda item: item[:2])
    assert chosen.adapter_uri is not None
    return AdapterRef(trial=chosen.trial, uri=chosen.adapter_uri)


def _adapter_line(adapter: AdapterRef | None) -> list[str]:
    if adapter is None:
        return []
    return [
        f"The best configuration's adapter (trial {adapter.trial}): `{adapter.uri}`; "
        f"`lorasweep-trainer predict --adapter {adapter.uri} --clips <clips>` classifies clips with it and "
        "`lorasweep-trainer merge` writes it as one model for `from_pretrained`."
    ]


def _summed(matrices: Sequence[list[list[int]]]) -> list[list[int]]:
    shaped = [m for m in matrices if [len(r) for r in m] == [len(r) for r in matrices[0]]]
    return [[sum(m[i][j] for m in shaped) for j in range(len(row))] for i, row in enumerate(matrices[0])]


def _rank_key(configuration: Configuration, goal: Goal) -> tuple[bool, float, int, bool, str, str, str]:
    """Best objective first; ties go to fewer trainable parameters, then the baseline, then by name."""
    value = configuration.objective
    signed = 0.0 if value is None else round(-value if goal == "maximize" else value, 9)
    return (
        value is None,
        signed,
        configuration.trainable_parameters,
        not configuration.is_baseline,
        configuration.group or "",
        configuration.label,
        configuration.key,
    )


def _group_tables(configurations: Sequence[Configuration], baseline: Configuration | None) -> list[GroupTable]:
    names = list(
        dict.fromkeys(c.group for c in configurations if not c.is_baseline and c.group not in (None, BASELINE))
    )
    tables = []
    for name in names:
        # `configurations` is ranked: a large grid or random group shows its best, the ranking has the rest.
        members = [c for c in configurations if c.group == name and not c.is_baseline]
        rows_of = ([baseline] if baseline else []) + members[:MAX_GROUP_ROWS]
        varied = [k for k in rows_of[0].params if len({json.dumps(c.params.get(k)) for c in rows_of}) > 1]
        rows_of.sort(key=lambda c: tuple(_sortable(c.params.get(k)) for k in varied))
        rows = [_group_row(c, baseline, varied) for c in rows_of]
        spread = max(r.val.mean for r in rows) - min(r.val.mean for r in rows)
        tables.append(
            GroupTable(
                name=name,
                varied=varied,
                rows=rows,
                spread=spread,
                finding=_group_finding(rows)
                + (
                    f" The table shows the {MAX_GROUP_ROWS} best of this group's {len(members)} configurations."
                    if len(members) > MAX_GROUP_ROWS
                    else ""
                ),
                noise=_group_noise(rows, baseline),
            )
        )
    return tables


def _sortable(value: ParamValue) -> tuple[int, float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _group_row(c: Configuration, baseline: Configuration | None, varied: Sequence[str]) -> GroupRow:
    return GroupRow(
        configuration=c.key,
        label=c.label,
        is_baseline=c.is_baseline,
        values={k: c.params.get(k) for k in varied},
        val=c.val,
        test=c.test,
        delta_val=c.val.mean - baseline.val.mean if baseline else None,
        delta_test=c.test.mean - baseline.test.mean if baseline else None,
        val_within_noise=c.val.interval.overlaps(baseline.val.interval) if baseline else None,
        trainable_parameters=c.trainable_parameters,
    )


def _group_finding(rows: Sequence[GroupRow]) -> str:
    low = min(rows, key=lambda r: r.val.mean)
    high = max(rows, key=lambda r: r.val.mean)
    if high.val.mean - low.val.mean < 1e-9:
        return f"Validation accuracy is the same, {fmt.percent(high.val.mean)}, for every value in this group."
    text = (
        f"Validation accuracy ranges from {fmt.percent(low.val.mean)} ({low.label}) "
        f"to {fmt.percent(high.val.mean)} ({high.label})."
    )
    variants = [r for r in rows if not r.is_baseline]
    if variants and any(r.is_baseline for r in rows):
        top = max(variants, key=lambda r: r.val.mean)
        assert top.delta_val is not None and top.delta_test is not None
        text += (
            f" The best variant, {top.label}, is {fmt.points(top.delta_val)} on validation "
            f"and {fmt.points(top.delta_test)} on test against the baseline."
        )
    return text


def _group_noise(rows: Sequence[GroupRow], baseline: Configuration | None) -> str:
    n = rows[0].val.n
    clip = f"one clip is {points_per_sample(n):.1f} points on {n} validation clips"
    if baseline is None:
        top = max(rows, key=lambda r: r.val.mean)
        if all(r.val.interval.overlaps(top.val.interval) for r in rows):
            return f"All rows' validation intervals overlap, so their differences are within noise ({clip})."
        return f"Some rows' validation intervals do not overlap the best row's ({clip})."
    outside = [r.label for r in rows if r.val_within_noise is False]
    if not outside:
        return f"Every variant's validation interval overlaps the baseline's, so these differences are within noise ({clip})."
    return (
        f"{', '.join(outside)}: validation interval clear of the baseline's, a difference beyond noise; "
        f"the other rows are within noise ({clip})."
    )


def _efficiency(ranked: Sequence[Configuration]) -> list[EfficiencyRow]:
    """One row per adapter size: the baseline where it has that size, else the best configuration of that size."""
    rows = []
    for size in sorted({c.trainable_parameters for c in ranked}):
        sized = [c for c in ranked if c.trainable_parameters == size]
        pick = next((c for c in sized if c.is_baseline), sized[0])
        rank = pick.params.get("lora_rank")
        label = f"Rank {rank}" if rank is not None else pick.label
        if pick.is_baseline:
            label += " (baseline)"
        elif len(sized) > 1:
            label += f" ({pick.label})"
        rows.append(
            EfficiencyRow(
                label=label,
                trainable_parameters=size,
                fraction_of_model=size / pick.total_parameters if pick.total_parameters else 0.0,
                val=pick.val,
                test=pick.test,
            )
        )
    total = ranked[0].total_parameters
    rows.append(
        EfficiencyRow(label="Full fine-tuning", trainable_parameters=total, fraction_of_model=1.0, val=None, test=None)
    )
    return rows


def _methodology(
    trials: Sequence[TrialMetrics],
    configurations: Sequence[Configuration],
    groups: Sequence[GroupTable],
    seeds: Sequence[int],
    failed: Mapping[str, str],
) -> Methodology:
    all_params = [t.params.model_dump() for t in trials]
    fixed = {k: v for k, v in all_params[0].items() if all(p.get(k) == v for p in all_params)}
    varied = [k for k in all_params[0] if k not in fixed]
    search = {BASELINE: [BASELINE]} if any(c.is_baseline for c in configurations) else {}
    search.update({g.name: [r.label for r in g.rows if not r.is_baseline] for g in groups})
    grouped = {label for labels in search.values() for label in labels}
    for c in configurations:
        if c.label not in grouped:
            search.setdefault(c.group or "trials", []).append(c.label)
    seconds = [t.train_seconds for t in trials]
    return Methodology(
        fixed=fixed,
        varied=varied,
        search=search,
        trials=len(trials),
        configurations=len(configurations),
        seeds=list(seeds),
        failed_trials=dict(failed),
        total_train_seconds=sum(seconds),
        mean_train_seconds=sum(seconds) / len(seconds),
        wall_seconds=_wall_seconds(trials),
    )


def _wall_seconds(trials: Sequence[TrialMetrics]) -> float | None:
    try:
        starts = [datetime.fromisoformat(t.started_at) for t in trials]
        ends = [datetime.fromisoformat(t.finished_at) for t in trials]
        return (max(ends) - min(starts)).total_seconds()
    except (TypeError, ValueError):
        return None


def _summary(
    trials: Sequence[TrialMetrics],
    ranked: Sequence[Configuration],
    baseline: Configuration | None,
    groups: Sequence[GroupTable],
    objective: ObjectiveMetric,
    methodology: Methodology,
) -> list[str]:
    first, best = trials[0], ranked[0]
    size = first.dataset
    lines = [
        f"The sweep ran {fmt.plural(len(trials), 'trial')} ({fmt.plural(methodology.configurations, 'configuration')}"
        f" × {fmt.plural(len(methodology.seeds), 'seed')}) of {model_label(first)} on "
        f"{len(first.classes)} classes, {size.videos_per_class} videos per class "
        f"({size.train} train, {size.val} validation, {size.test} test clips).",
        (
            f"**Best configuration, chosen on {OBJECTIVE_NAMES[objective]} only: {best.label}** with "
            if len(ranked) > 1
            else f"**The one configuration, {best.label},** reached "
        )
        + f"{fmt.accuracy(best.val)} validation accuracy and {fmt.accuracy(best.test)} test accuracy "
        "(95% Wilson intervals in brackets; test accuracy is reported, never used to choose).",
    ]
    if baseline is not None and not best.is_baseline:
        within = best.val.interval.overlaps(baseline.val.interval)
        lines.append(
            f"Baseline: {fmt.accuracy(baseline.val)} validation, {fmt.accuracy(baseline.test)} test. "
            f"The best configuration is {fmt.points(best.val.mean - baseline.val.mean)} on validation and "
            f"{fmt.points(best.test.mean - baseline.test.mean)} on test; "
            + (
                f"its validation interval overlaps the baseline's, so the lead is within noise "
                f"(one clip is {points_per_sample(best.val.n):.1f} points on {best.val.n} validation clips)."
                if within
                else "its validation interval is clear of the baseline's."
            )
        )
    if groups and len(groups[0].rows) > 1:
        top = groups[0]
        lines.append(
            f"The largest effect comes from the {top.name} group: validation accuracy spans "
            f"{100 * top.spread:.1f} points across its values."
        )
    test_best = max(ranked, key=lambda c: c.test.mean)
    if test_best.test.mean > best.test.mean:
        lines.append(
            f"{test_best.label} has the highest test accuracy ({fmt.percent(test_best.test.mean)}) but not the best "
            f"validation score; choosing it would select on the test split and overstate its accuracy."
        )
    if methodology.failed_trials:
        count = len(methodology.failed_trials)
        lines.append(f"{fmt.plural(count, 'trial')} failed and {'is' if count == 1 else 'are'} not in the tables.")
    if methodology.stopped_trials:
        count = len(methodology.stopped_trials)
        lines.append(
            f"{fmt.plural(count, 'trial')} stopped early (early stopping) and {'is' if count == 1 else 'are'} "
            "listed apart, not ranked."
        )
    return lines


def _recommendations(
    ranked: Sequence[Configuration],
    baseline: Configuration | None,
    objective: ObjectiveMetric,
    methodology: Methodology,
    dynamics: TrainingDynamics | None = None,
) -> list[str]:
    best = ranked[0]
    searched = [k for k in methodology.varied if k in best.params]
    described = _describe({k: best.params[k] for k in searched}) or (
        "the baseline" if best.is_baseline else _describe({k: best.params[k] for k in PRIMARY_PARAMS})
    )
    lines = [
        f"Use **{best.label}** ({described}): "
        + (f"best {OBJECTIVE_NAMES[objective]}; " if len(ranked) > 1 else "the only configuration run; ")
        + f"validation accuracy {fmt.accuracy(best.val)}, test accuracy {fmt.accuracy(best.test)}."
    ]
    close = [c for c in ranked[1:] if c.val.interval.overlaps(best.val.interval)]
    if close:
        shown = "; ".join(c.label for c in close[:4]) + (f"; and {len(close) - 4} more" if len(close) > 4 else "")
        lines.append(
            f"{fmt.plural(len(close), 'other configuration')} ({shown}) "
            f"{'has a validation interval' if len(close) == 1 else 'have validation intervals'} overlapping the best's: "
            f"{best.val.n} validation clips cannot separate them. Re-run the top configurations with more videos "
            "per class (a follow-up sweep with search.fromSweep) before committing to one."
        )
    if not best.test.interval.overlaps(best.val.interval):
        lines.append(
            f"The best configuration's test accuracy ({fmt.percent(best.test.mean)}) falls outside its validation "
            + (
                f"interval: picking the best of {len(ranked)} on validation makes its validation score optimistic; "
                if len(ranked) > 1
                else "interval: the validation split is small or unlike the test split; "
            )
            + "expect the test figure."
        )
    changed = {k: v for k, v in best.params.items() if baseline is not None and baseline.params.get(k) != v}
    edges = []
    for name, value in changed.items():
        tried = sorted({c.params.get(name) for c in ranked if c.params.get(name) is not None}, key=_sortable)
        if len(tried) > 2 and value in (tried[0], tried[-1]):
            edge = "largest" if value == tried[-1] else "smallest"
            edges.append(f"{fmt.param_label(name)}={fmt.param_value(name, value)} is the {edge} value tried")
    if edges:
        lines.append(
            f"The best configuration sits at the edge of the search space ({'; '.join(edges)}): "
            "extend the search beyond it."
        )
    curve = next((d for d in dynamics.rows if d.configuration == best.key), None) if dynamics else None
    who = "The best configuration" if len(ranked) > 1 else "The configuration"
    if curve is not None and curve.trend == "still rising":
        before, last = curve.epochs[-2], curve.epochs[-1]
        lines.append(
            f"{who}'s validation accuracy was still rising at its last epoch ({fmt.percent(before.val_accuracy)} → "
            f"{fmt.percent(last.val_accuracy)}): train it longer (more epochs)."
        )
    elif best.best_epochs and all(e >= best.epochs for e in best.best_epochs):
        lines.append(f"{who} peaked at its last epoch ({best.epochs}/{best.epochs}): train it longer.")
    elif curve is not None and curve.trend == "peaked early":
        lines.append(f"{who}'s {curve.note}: fewer epochs would give the same result sooner.")
    if len(methodology.seeds) == 1:
        who = "Every configuration" if len(ranked) > 1 else "The configuration"
        lines.append(
            f"{who} ran with one seed ({methodology.seeds[0]}): repeat "
            + ("the top configurations" if len(ranked) > 1 else "it")
            + " over three or more seeds to tell configuration effects from seed noise."
        )
    if methodology.failed_trials:
        failed = methodology.failed_trials
        lines.append(
            f"Investigate the failed {'trial' if len(failed) == 1 else 'trials'} ({', '.join(sorted(failed))}) "
            "before trusting the ranking."
        )
    return lines


def _split_digest(trial: TrialMetrics) -> str | None:
    if not trial.split:
        return None
    return hashlib.sha256(json.dumps(trial.split, sort_keys=True).encode()).hexdigest()[:12]


def model_label(trial: TrialMetrics) -> str:
    """The model as the report names it: its source and, where the sweep pinned one, the revision it resolved (a
    hub commit, or sha256:<digest> of a folder's files), so a reader can load the very weights again."""
    return f"{trial.model} at revision {trial.model_revision}" if trial.model_revision else trial.model


def _reproducibility(trials: Sequence[TrialMetrics], seeds: Sequence[int]) -> Reproducibility:
    first = trials[0]
    digests = {_split_digest(t) for t in trials}
    recorded = {d for d in digests if d is not None}
    return Reproducibility(
        git_commits=sorted({t.git_commit for t in trials}),
        seeds=list(seeds),
        models=sorted({model_label(t) for t in trials}),
        devices=sorted({t.device for t in trials}),
        classes=list(first.classes),
        videos_per_class=first.dataset.videos_per_class,
        train=first.dataset.train,
        val=first.dataset.val,
        test=first.dataset.test,
        same_split=(len(digests) == 1) if recorded else None,
        split_digest=recorded.pop() if len(digests) == 1 and recorded else None,
        started_at=min(t.started_at for t in trials),
        finished_at=max(t.finished_at for t in trials),
    )


def _warnings(trials: Sequence[TrialMetrics], objective: ObjectiveMetric) -> list[str]:
    """Inconsistencies that make a number in the report untrustworthy, said plainly."""
    first = trials[0]
    warnings = []
    for t in trials:
        if t.classes != first.classes:
            warnings.append(f"trial {t.trial}: classes {t.classes} differ from {first.classes}")
        if t.dataset != first.dataset:
            warnings.append(f"trial {t.trial}: dataset sizes differ from trial {first.trial}'s")
        if t.objective(objective) is None:
            warnings.append(f"trial {t.trial}: no {objective} recorded; ranked last")
        counted = sum(map(sum, t.confusion_matrix))
        if not any(t.confusion_matrix):
            warnings.append(f"trial {t.trial}: no confusion matrix recorded")
        elif [len(row) for row in t.confusion_matrix] != [len(t.classes)] * len(t.classes):
            warnings.append(
                f"trial {t.trial}: the confusion matrix is not {len(t.classes)}x{len(t.classes)} (one row and "
                "column per class); its per-class checks are skipped"
            )
        else:
            warnings += _per_class_contradictions(t)
        if t.confusion_matrix and counted != t.dataset.test:
            warnings.append(
                f"trial {t.trial}: the confusion matrix counts {counted} clips but the test split has {t.dataset.test}"
            )
        if counted:
            correct = sum(row[i] for i, row in enumerate(t.confusion_matrix[: len(t.classes)]) if i < len(row))
            if abs(correct / counted - t.test_accuracy) > 0.5 / counted:
                warnings.append(
                    f"trial {t.trial}: the confusion matrix gives test accuracy {fmt.percent(correct / counted)} "
                    f"but test_accuracy is {fmt.percent(t.test_accuracy)}"
                )
    seen: dict[tuple[str, int], str] = {}
    for t in trials:
        twin = seen.setdefault((_param_key(t), t.params.seed), t.trial)
        if twin != t.trial:
            warnings.append(f"trials {twin} and {t.trial} ran the same parameters and seed; both count in the means")
    if len({_split_digest(t) for t in trials}) > 1:
        warnings.append("the trials did not all use the same train/val/test split; their accuracies are not comparable")
    return warnings


def _trend(history: Sequence[EpochPoint], planned: int) -> tuple[Trend, int]:
    """Where validation accuracy peaked in the history, and what that says about the epoch budget."""
    if not history:
        return "no history", 0
    best = max(history, key=lambda e: e.val_accuracy)  # the first epoch with the highest, as the trainer picks
    last = history[-1]
    previous = history[-2] if len(history) > 1 else None
    if len(history) >= planned and previous is not None and last.val_accuracy > previous.val_accuracy + RISING_MARGIN:
        return "still rising", best.epoch
    if last.epoch - best.epoch >= EARLY_PEAK_EPOCHS:
        return "peaked early", best.epoch
    return "peaked near the end", best.epoch


def _note(trend: Trend, best_epoch: int, history: Sequence[EpochPoint]) -> str:
    if trend == "no history":
        return "no per-epoch history recorded"
    last = history[-1]
    best = next(e for e in history if e.epoch == best_epoch)
    if trend == "still rising":
        before = history[-2]
        return (
            f"validation accuracy was still rising at the last epoch ({fmt.percent(before.val_accuracy)} → "
            f"{fmt.percent(last.val_accuracy)}): more epochs would likely help"
        )
    if trend == "peaked early":
        return (
            f"validation peaked at epoch {best_epoch} of {last.epoch} ({fmt.percent(best.val_accuracy)}) and ended "
            f"at {fmt.percent(last.val_accuracy)}: later epochs did not help"
            + (
                f" while train accuracy rose to {fmt.percent(last.train_accuracy)} (overfitting)"
                if last.train_accuracy > best.train_accuracy
                else ""
            )
        )
    return f"best at epoch {best_epoch} of {last.epoch} ({fmt.percent(best.val_accuracy)})"


def _curve(trial: TrialMetrics) -> list[EpochPoint]:
    return [
        EpochPoint(
            epoch=e.epoch,
            train_loss=e.train_loss if math.isfinite(e.train_loss) else None,
            train_accuracy=e.train_accuracy,
            val_accuracy=e.val_accuracy,
        )
        for e in sorted(trial.epochs, key=lambda e: e.epoch)
    ]


def _dynamics(ranked: Sequence[Configuration], by_key: Mapping[str, Sequence[TrialMetrics]]) -> TrainingDynamics:
    """Each configuration's per-epoch curve and what it says: train longer, or stop sooner."""
    members = {members[0].trial: members for members in by_key.values()}
    rows = []
    for c in ranked:
        first = members[c.key][0]
        history = _curve(first)
        trend, best_epoch = _trend(history, c.epochs)
        rows.append(
            Dynamics(
                configuration=c.key,
                label=c.label,
                trial=first.trial,
                epochs=history,
                planned_epochs=c.epochs,
                best_epoch=best_epoch or first.best_epoch,
                trend=trend,
                note=_note(trend, best_epoch, history),
            )
        )
    findings = []
    with_history = [r for r in rows if r.trend != "no history"]
    rising = [r for r in with_history if r.trend == "still rising"]
    early = [r for r in with_history if r.trend == "peaked early"]
    if rising:
        best_rising = ", the best among them," if rising[0] is with_history[0] else ""
        findings.append(
            f"{len(rising)} of {fmt.plural(len(with_history), 'configuration')}{best_rising} "
            f"{'was' if len(rising) == 1 else 'were'} still improving on validation at the last epoch "
            f"({rising[0].planned_epochs}): train longer (more epochs) before reading the ranking as final."
        )
    if early:
        findings.append(
            f"{fmt.plural(len(early), 'configuration')} peaked on validation {EARLY_PEAK_EPOCHS} or more epochs "
            "before the last: fewer epochs (or early stopping) would have cost nothing."
        )
    if with_history and not rising and not early:
        findings.append("Validation accuracy peaked at or near the last epoch everywhere: the epoch budget fits.")
    losses = [r for r in with_history if any(e.train_loss is None for e in r.epochs)]
    if losses:
        findings.append(
            f"Training loss was NaN in {', '.join(r.label for r in losses)}: the learning rate is likely too high."
        )
    missing = [r.label for r in rows if r.trend == "no history"]
    if missing:
        findings.append(f"No per-epoch history was recorded for {', '.join(missing)}.")
    plotted = [r.configuration for r in with_history[:TOP_CURVES]]
    return TrainingDynamics(rows=rows, plotted=plotted, findings=findings)


SPLITS = ("train", "val", "test")


def _actions(uri: str) -> int | None:
    name = parse_ntu_name(uri.rsplit("/", 1)[-1])
    return None if name is None else name.action


def _class_of(action: int | None, class_actions: Mapping[str, Sequence[int] | str]) -> str:
    if action is None:
        return "unrecognised name"
    for name, actions in class_actions.items():
        if not isinstance(actions, str) and action in actions:
            return name
    return next((name for name, actions in class_actions.items() if isinstance(actions, str)), f"action {action}")


def _data(trials: Sequence[TrialMetrics], class_actions: Mapping[str, Sequence[int] | str] | None) -> DataSummary:
    """Clips per split, the corrupt ones skipped, and how the classes are balanced in each split."""
    first = trials[0]
    corrupt = sorted({uri for t in trials for uri in t.corrupt_clips})
    recorded = next((t.split for t in trials if t.split), {})
    if recorded and class_actions:
        balance_by = "class"
    elif recorded:
        balance_by = "action"
    else:
        balance_by = "test only"
    splits = []
    for name in SPLITS:
        uris = recorded.get(name, [])
        if balance_by == "class":
            assert class_actions is not None
            by_class = Counter(_class_of(_actions(u), class_actions) for u in uris)
        elif balance_by == "action":
            by_class = Counter(
                f"A{action:03d}" if (action := _actions(u)) is not None else "unrecognised name" for u in uris
            )
        elif name == "test" and first.confusion_matrix:
            by_class = Counter(dict(zip(first.classes, map(sum, first.confusion_matrix), strict=False)))
        else:
            by_class = Counter()
        size = getattr(first.dataset, name)
        skipped = sum(u in corrupt for u in uris) if uris else 0
        splits.append(SplitData(name=name, clips=size, corrupt=skipped, by_class=dict(sorted(by_class.items()))))
    findings = []
    selected = sum(sp.clips for sp in splits)
    if corrupt:
        findings.append(
            f"{fmt.plural(len(corrupt), 'corrupt clip')} of {selected} selected {'was' if len(corrupt) == 1 else 'were'}"
            " skipped (listed below); the accuracies count the clips that decoded."
        )
    else:
        findings.append(f"Every one of the {selected} selected clips decoded; none was skipped.")
    for sp in splits if balance_by != "action" else ():  # a class (say, other) may hold many actions
        counts = [v for v in sp.by_class.values() if v]
        if len(counts) > 1 and max(counts) > 1.5 * min(counts):
            findings.append(
                f"The {sp.name} split is unbalanced: {max(counts)} clips of its largest class "
                f"against {min(counts)} of its smallest."
            )
    return DataSummary(
        classes=list(first.classes),
        videos_per_class=first.dataset.videos_per_class,
        splits=splits,
        corrupt_clips=corrupt,
        balance_by=balance_by,
        findings=findings,
    )


def _per_class_contradictions(trial: TrialMetrics) -> list[str]:
    """Per-class precision, recall and support that the confusion matrix (rows actual) does not give."""
    matrix, found = trial.confusion_matrix, []
    for i, name in enumerate(trial.classes):
        row = trial.per_class.get(name)
        if row is None:
            continue
        actual = sum(matrix[i])
        predicted = sum(r[i] for r in matrix)
        expected = {
            "recall": matrix[i][i] / actual if actual else 0.0,
            "precision": matrix[i][i] / predicted if predicted else 0.0,
        }
        for part, value in expected.items():
            recorded = getattr(row, part)
            if abs(recorded - value) > PER_CLASS_TOLERANCE:
                found.append(
                    f"trial {trial.trial}: per_class.{name}.{part} is {recorded:.2f} but the confusion matrix "
                    f"gives {value:.2f}"
                )
        if row.support != actual:
            found.append(
                f"trial {trial.trial}: per_class.{name}.support is {row.support} but the confusion matrix has "
                f"{actual} {name} clips"
            )
    return found
