"""The sweep report: a pure builder (trial metrics -> `Report`), renderers (markdown, PNG figures),
and storage (read metrics.json from a folder or an s3:// prefix, publish the report next to them).

`publish_sweep_report` is the one call the operator makes when a sweep finishes (the local runner builds and
publishes apart, to say which adapter is the best).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from lorasweep_operator.report.builder import build_report
from lorasweep_operator.report.model import Report
from lorasweep_trainer.config import Goal, ObjectiveMetric
from lorasweep_trainer.results import TrialMetrics

REPORT_FILE = "report.md"

log = logging.getLogger(__name__)

__all__ = [
    "REPORT_FILE",
    "Report",
    "build_report",
    "build_sweep_report",
    "publish_report",
    "publish_sweep_report",
    "render",
]


def render(report: Report) -> dict[str, bytes]:
    """The report's files, name -> bytes: the figures, then report.md."""
    from lorasweep_operator.report.figures import render_figures
    from lorasweep_operator.report.markdown import render_markdown

    figures = render_figures(report)
    return {**figures, REPORT_FILE: render_markdown(report, list(figures)).encode()}


def publish_report(report: Report, destination: str) -> str:
    """Write report.md and its figures under ``destination`` (a folder or s3:// prefix); returns report.md's URI."""
    from lorasweep_operator.report.storage import write_files

    uris = write_files(destination, render(report))
    log.info("report published uri=%s sweep=%s", uris[REPORT_FILE], report.sweep)
    return uris[REPORT_FILE]


def build_sweep_report(
    metrics_source: str,
    objective: ObjectiveMetric = "val_accuracy",
    goal: Goal | None = None,
    *,
    sweep: str | None = None,
    failed: Mapping[str, str] | None = None,
    trials: Sequence[str] | None = None,
    stopped: Mapping[str, str] | None = None,
    class_actions: Mapping[str, Sequence[int] | str] | None = None,
) -> Report:
    """Read every metrics.json under ``metrics_source`` and build the report.

    ``trials`` limits the report to those trial ids (the sweep's current plan) when given; ``failed``
    (trial -> reason) lists trials that left no metrics; unreadable metrics.json files are listed with them.
    ``stopped`` (trial -> reason) lists trials stopped early, apart from the failed; ``class_actions`` is the
    sweep's dataset.classes, for the class balance of every split.
    Raises FileNotFoundError when ``metrics_source`` is not a folder or prefix, ValueError when no usable
    metrics exist (saying what was found and why none is usable), and the trainer's StorageError when object
    storage cannot be read.
    """
    from lorasweep_operator.report.storage import read_metrics

    loaded = read_metrics(metrics_source)
    wanted = None if trials is None else set(trials)
    selected: list[TrialMetrics] = [t for t in loaded.trials if wanted is None or t.trial in wanted]
    problems = dict(failed or {})
    problems.update({location: f"unreadable metrics: {why}" for location, why in loaded.unreadable.items()})
    if not selected:
        raise ValueError(_nothing_usable(metrics_source, loaded.found, len(loaded.trials), loaded.unreadable))
    return build_report(
        selected,
        objective=objective,
        goal=goal,
        sweep=sweep,
        failed=problems,
        stopped=stopped,
        class_actions=class_actions,
        notes=loaded.notes,
    )


def _nothing_usable(source: str, found: int, readable: int, unreadable: Mapping[str, str]) -> str:
    if not found:
        return f"no trial results to report on: no metrics.json was found under {source}"
    why = "; ".join(f"{location}: {reason}" for location, reason in sorted(unreadable.items()))
    if readable:
        return (
            f"no trial results to report on: {found} metrics.json found under {source}, but none belongs to the "
            "trials asked for" + (f" (and some were unusable: {why})" if why else "")
        )
    return f"no trial results to report on: {found} metrics.json found under {source}, none usable: {why}"


def publish_sweep_report(
    metrics_source: str,
    destination: str,
    objective: ObjectiveMetric = "val_accuracy",
    goal: Goal | None = None,
    *,
    sweep: str | None = None,
    failed: Mapping[str, str] | None = None,
    trials: Sequence[str] | None = None,
    stopped: Mapping[str, str] | None = None,
    class_actions: Mapping[str, Sequence[int] | str] | None = None,
) -> str:
    """`build_sweep_report`, published to ``destination``; returns the URI of report.md."""
    report = build_sweep_report(
        metrics_source,
        objective,
        goal,
        sweep=sweep,
        failed=failed,
        trials=trials,
        stopped=stopped,
        class_actions=class_actions,
    )
    return publish_report(report, destination)
