"""Lay a `Report` out as markdown, in the reference report's order of sections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lorasweep_operator.report import formatting as fmt
from lorasweep_operator.report.builder import OBJECTIVE_NAMES
from lorasweep_operator.report.model import Configuration, GroupTable, ParamValue, Report

CONFUSION_FIGURE = "confusion-matrix.png"
CURVES_FIGURE = "training-curves.png"


def group_figure(group: str) -> str:
    return f"group-{group}.png"


def render_markdown(report: Report, figures: Sequence[str] = ()) -> str:
    """The report as markdown; ``figures`` are the file names written beside it (see `figures.render_figures`)."""
    parts = [
        _header(report),
        _summary(report),
        _methodology(report),
        _data(report),
        _top(report),
        _top_three(report),
        _groups(report, figures),
        _dynamics(report, figures),
        _efficiency(report),
        _recommendations(report),
        _reproducibility(report),
        _checks(report),
        _confusion(report, figures),
    ]
    return "\n\n".join(part.rstrip() for part in parts) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fixed(report: Report, name: str) -> str | None:
    value = report.methodology.fixed.get(name)
    return None if value is None else fmt.param_value(name, value)


def _header(report: Report) -> str:
    r = report.reproducibility
    config = ", ".join(
        f"{label} {value}"
        for label, name in (("frames per clip", "frames_per_clip"), ("epochs", "epochs"), ("batch size", "batch_size"))
        if (value := _fixed(report, name)) is not None
    )
    lines = [
        f"# Sweep report: {report.sweep}",
        "",
        f"**Generated:** {report.generated_at}  ",
        f"**Dataset:** {', '.join(report.classes)}; {r.videos_per_class} videos per class "
        f"({r.train} train, {r.val} val, {r.test} test)  ",
        f"**Model:** {report.model} with LoRA fine-tuning  ",
    ]
    if config:
        lines.append(f"**Configuration:** {config}  ")
    lines += [
        f"**Objective:** {OBJECTIVE_NAMES.get(report.objective, report.objective)} ({report.goal}), "
        "measured on the validation split only",
        "",
        "---",
    ]
    return "\n".join(lines)


def _summary(report: Report) -> str:
    return "## Executive summary\n\n" + "\n".join(f"- {line}" for line in report.summary)


def _methodology(report: Report) -> str:
    m, r = report.methodology, report.reproducibility
    fixed = [f"- {fmt.param_label(k)}: {fmt.param_value(k, v)}" for k, v in m.fixed.items()]
    fixed.append(f"- Videos per class: {r.videos_per_class} ({r.train} train, {r.val} val, {r.test} test)")
    search = []
    for index, (group, labels) in enumerate(m.search.items(), start=1):
        search.append(f"{index}. **{group}** ({fmt.plural(len(labels), 'configuration')}): {'; '.join(labels)}")
    if report.baseline is not None:
        baseline = "; ".join(
            f"{fmt.param_label(k)}={fmt.param_value(k, report.baseline.params[k])}"
            for k in m.varied
            if k in report.baseline.params
        )
        search.append(f"\nThe baseline: {baseline}.")
    seeds = ", ".join(map(str, m.seeds))
    failed = (
        "; ".join(f"{trial} ({why})" for trial, why in sorted(m.failed_trials.items())) if m.failed_trials else "none"
    )
    stopped = (
        "; ".join(f"{trial} ({why})" for trial, why in sorted(m.stopped_trials.items())) if m.stopped_trials else None
    )
    wall = f"; wall clock, first start to last finish: {m.wall_seconds / 60:.1f} minutes" if m.wall_seconds else ""
    return "\n".join(
        [
            "## Methodology",
            "",
            "### Fixed parameters",
            "",
            *fixed,
            "",
            "### Search space",
            "",
            *search,
            "",
            f"**Trials:** {m.trials} ({fmt.plural(m.configurations, 'configuration')} × "
            f"{fmt.plural(len(m.seeds), 'seed')}: {seeds})  ",
            f"**Failed trials:** {failed}  ",
            *([f"**Stopped early (not ranked):** {stopped}  "] if stopped else []),
            f"**Training time:** {m.total_train_seconds / 60:.1f} minutes in total, "
            f"{m.mean_train_seconds / 60:.1f} minutes per trial on average{wall}",
        ]
    )


def _param_columns(report: Report) -> list[str]:
    preferred = ["learning_rate", "lora_rank", "lora_alpha", "lora_dropout"]
    varied = [k for k in report.methodology.varied if k != "seed"]
    return preferred + [k for k in varied if k not in preferred]


def _cells(c: Configuration, columns: Sequence[str]) -> list[str]:
    return [fmt.param_value(k, c.params.get(k)) for k in columns]


def _top(report: Report) -> str:
    columns = _param_columns(report)
    show_objective = report.objective != "val_accuracy"
    header = ["#"] + (["Objective"] if show_objective else []) + ["Val acc (95% CI)", "Test acc (95% CI)"]
    header += [fmt.param_label(k) for k in columns] + ["Configuration"]
    rows = []
    for index, c in enumerate(report.top, start=1):
        objective = [f"{c.objective:.4f}" if c.objective is not None else "n/a"] if show_objective else []
        label = f"**{c.label}**" if c.is_baseline else c.label
        rows.append([str(index), *objective, fmt.accuracy(c.val), fmt.accuracy(c.test), *_cells(c, columns), label])
    name = OBJECTIVE_NAMES.get(report.objective, report.objective)
    return (
        "## Results\n\n"
        + (f"### Top {len(report.top)} configurations\n\n" if len(report.top) > 1 else "### The configuration\n\n")
        + f"Ranked by {name}; test accuracy is shown beside it and plays no part in the ranking. "
        f"Intervals are 95% Wilson intervals for {report.reproducibility.val} validation and "
        f"{report.reproducibility.test} test clips.\n\n" + _table(header, rows)
    )


def _epochs(c: Configuration) -> str:
    return ", ".join(f"{e}/{c.epochs}" for e in c.best_epochs)


def _top_three(report: Report) -> str:
    shown = len(report.ranked[:3])
    sections = [f"## Top {shown} configurations" if shown > 1 else "## The configuration in detail"]
    for index, c in enumerate(report.ranked[:3], start=1):
        params = "; ".join(
            f"{fmt.param_label(k)}={fmt.param_value(k, c.params.get(k))}" for k in _param_columns(report)
        )
        share = c.trainable_parameters / c.total_parameters if c.total_parameters else 0.0
        lines = [
            f"### {index}. {c.label}{' (best by validation)' if index == 1 and shown > 1 else ''}",
            "",
            f"- **Validation accuracy:** {fmt.accuracy(c.val)}",
            f"- **Test accuracy:** {fmt.accuracy(c.test)}",
            f"- **Train accuracy:** {fmt.accuracy(c.train)}",
            f"- **Parameters:** {params}",
            f"- **Trainable parameters:** {fmt.count(c.trainable_parameters)} ({100 * share:.2f}% of the model)",
            f"- **Best epoch:** {_epochs(c)}",
            f"- **Inference:** {c.inference_ms_per_video:.1f} ms per video",
            f"- **Trials:** {', '.join(c.trials)}",
            *_adapters(c),
            "",
            f"Per-class performance (test split{', averaged over seeds' if len(c.seeds) > 1 else ''}):",
            "",
            _table(
                ["Class", "Precision", "Recall", "F1", "Support"],
                [
                    [name, f"{m.precision:.2f}", f"{m.recall:.2f}", f"{m.f1:.2f}", str(m.support)]
                    for name, m in c.per_class.items()
                ],
            ),
        ]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _adapters(c: Configuration) -> list[str]:
    if len(c.adapter_uris) == 1:
        return [f"- **Adapter:** `{next(iter(c.adapter_uris.values()))}`"]
    return [f"- **Adapter of {trial}:** `{uri}`" for trial, uri in c.adapter_uris.items()]


def _delta(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}"


def _noise(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def _group(index: int, group: GroupTable, configurations: Mapping[str, Configuration], figures: Sequence[str]) -> str:
    ratio = "lora_alpha" in group.varied or "lora_rank" in group.varied
    header = [fmt.param_label(k) for k in group.varied] + (["Alpha/Rank"] if ratio else [])
    header += ["Val acc (95% CI)", "Test acc (95% CI)", "Δ val", "Δ test", "Val within noise", "Trainable params"]
    rows = []
    for row in group.rows:
        values = [fmt.param_value(k, v) for k, v in row.values.items()]
        if row.is_baseline:
            values = [f"**{v}** (baseline)" for v in values]
        if ratio:
            values.append(_ratio(configurations[row.configuration].params))
        rows.append(
            [
                *values,
                fmt.accuracy(row.val),
                fmt.accuracy(row.test),
                _delta(row.delta_val),
                _delta(row.delta_test),
                "—" if row.is_baseline else _noise(row.val_within_noise),
                fmt.count(row.trainable_parameters),
            ]
        )
    figure = group_figure(group.name)
    parts = [f"### {index}. {group.name}", _table(header, rows), f"{group.finding} {group.noise}"]
    if figure in figures:
        parts.append(f"![{group.name}: accuracy per value with 95% intervals]({figure})")
    return "\n\n".join(parts)


def _ratio(params: Mapping[str, ParamValue]) -> str:
    rank, alpha = params.get("lora_rank"), params.get("lora_alpha")
    if isinstance(rank, int | float) and isinstance(alpha, int | float) and rank:
        return f"{alpha / rank:g}"
    return "—"


def _groups(report: Report, figures: Sequence[str]) -> str:
    if not report.groups:
        return "## Effect of each search group\n\nThis sweep has no one-factor groups; see the ranking above."
    intro = (
        "## Effect of each search group\n\nEach group changes one thing against the baseline, ordered by the "
        "spread of validation accuracy it causes. Δ columns are percentage points against the baseline; "
        "'within noise' means the validation interval overlaps the baseline's."
    )
    configurations = {c.key: c for c in report.ranked}
    tables = (_group(i, g, configurations, figures) for i, g in enumerate(report.groups, start=1))
    return "\n\n".join([intro, *tables])


def _efficiency(report: Report) -> str:
    rows = [
        [
            e.label,
            fmt.count(e.trainable_parameters),
            f"{100 * e.fraction_of_model:.2f}%",
            fmt.accuracy(e.val) if e.val else "not run",
            fmt.accuracy(e.test) if e.test else "not run",
        ]
        for e in report.efficiency
    ]
    best = report.best
    factor = best.total_parameters / best.trainable_parameters if best.trainable_parameters else 0.0
    return (
        "## Parameter efficiency\n\n"
        + _table(["Configuration", "Trainable params", "% of model", "Val acc", "Test acc"], rows)
        + f"\n\nThe best configuration trains {fmt.count(best.trainable_parameters)} parameters, "
        f"{factor:,.0f}× fewer than full fine-tuning of {fmt.count(best.total_parameters)}."
    )


def _recommendations(report: Report) -> str:
    lines = [f"{i}. {line}" for i, line in enumerate(report.recommendations, start=1)]
    return "## Recommendations\n\n" + "\n".join(lines)


def _reproducibility(report: Report) -> str:
    r = report.reproducibility
    if r.same_split is None:
        split = "not recorded by the trials"
    elif r.same_split:
        split = f"identical across all trials (digest `{r.split_digest}`)"
    else:
        split = "**differs between trials**"
    lines = [
        f"- Git commit{'s' if len(r.git_commits) > 1 else ''}: {', '.join(f'`{c}`' for c in r.git_commits)}",
        f"- Seeds: {', '.join(map(str, r.seeds))}",
        f"- Model: {', '.join(r.models)}; device: {', '.join(r.devices)}",
        f"- Classes: {', '.join(r.classes)}",
        f"- Dataset: {r.videos_per_class} videos per class; {r.train} train, {r.val} validation, {r.test} test clips",
        f"- Train/val/test split: {split}",
        f"- Trials ran from {r.started_at} to {r.finished_at}",
        "- Every trial's full metrics, confusion matrix and adapter: `trials/<trial>/` next to this report",
    ]
    return "## Reproducibility\n\n" + "\n".join(lines)


def _checks(report: Report) -> str:
    if not report.warnings:
        return "## Data checks\n\nEvery trial's confusion matrix, accuracy and split sizes agree with each other."
    return "## Data checks\n\nThese numbers do not add up; treat them with care:\n\n" + "\n".join(
        f"- {w}" for w in report.warnings
    )


def _confusion(report: Report, figures: Sequence[str]) -> str:
    best = report.best
    rows = [[name, *(str(v) for v in row)] for name, row in zip(report.classes, best.confusion_matrix, strict=False)]
    seeds = f", summed over {len(best.seeds)} seeds" if len(best.seeds) > 1 else ""
    if not any(best.confusion_matrix):
        return (
            "## Appendix: confusion matrix of the best configuration\n\n"
            f"{best.label}: no confusion matrix was recorded (see Data checks)."
        )
    parts = [
        "## Appendix: confusion matrix of the best configuration",
        f"{best.label}, test split{seeds}; rows are actual classes, columns predicted.",
        _table(["Actual \\ Predicted", *report.classes], rows),
    ]
    if CONFUSION_FIGURE in figures:
        parts.append(f"![confusion matrix]({CONFUSION_FIGURE})")
    return "\n\n".join(parts)


def _dynamics(report: Report, figures: Sequence[str]) -> str:
    d = report.dynamics
    if d is None:
        return ""
    header = ["Configuration", "Best epoch", "Val acc by epoch (%)", "Train acc by epoch (%)", "Train loss", "Trend"]
    rows = []
    for row in d.rows[: len(report.top)]:
        val = " → ".join(f"{100 * e.val_accuracy:.0f}" for e in row.epochs) or "—"
        train = " → ".join(f"{100 * e.train_accuracy:.0f}" for e in row.epochs) or "—"
        losses = [e.train_loss for e in row.epochs]
        loss = f"{_loss(losses[0])} → {_loss(losses[-1])}" if len(losses) > 1 else (_loss(losses[0]) if losses else "—")
        best = f"{row.best_epoch}/{row.planned_epochs}" if row.epochs else "—"
        rows.append([row.label, best, val, train, loss, row.trend])
    parts = [
        "## Training dynamics",
        "Per-epoch history from each trial's metrics.json (its first seed where it has several); the adapter "
        "kept is the best epoch's by validation accuracy.",
        _table(header, rows),
    ]
    if CURVES_FIGURE in figures:
        parts.append(f"![validation and train accuracy per epoch of the top configurations]({CURVES_FIGURE})")
    notes = [
        f"- **{row.label}:** {row.note}." for row in d.rows[: len(report.top)] if row.trend != "peaked near the end"
    ]
    parts += ["\n".join(f"- {line}" for line in d.findings)] if d.findings else []
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


def _loss(value: float | None) -> str:
    return "NaN" if value is None else f"{value:.3f}"


def _data(report: Report) -> str:
    d = report.data
    if d is None:
        return ""
    by = {"class": "class", "action": "NTU action (the sweep's class map was not given)", "test only": "class"}
    names = sorted({name for split in d.splits for name in split.by_class})
    header = ["Split", "Clips", "Corrupt, skipped", *names]
    rows = [
        [
            split.name,
            str(split.clips),
            str(split.corrupt),
            *(str(split.by_class[n]) if n in split.by_class else "—" for n in names),
        ]
        for split in d.splits
    ]
    parts = [
        "## Data",
        f"{', '.join(d.classes)}: {d.videos_per_class} videos per class selected; clips per split and per "
        f"{by[d.balance_by]}"
        + (" (train and val balance not recorded: the trials left no split)" if d.balance_by == "test only" else "")
        + ".",
        _table(header, rows),
        "\n".join(f"- {line}" for line in d.findings),
    ]
    if d.corrupt_clips:
        parts.append("Corrupt clips skipped:\n\n" + "\n".join(f"- `{uri}`" for uri in d.corrupt_clips))
    return "\n\n".join(parts)
