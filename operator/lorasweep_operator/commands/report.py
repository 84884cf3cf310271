"""`lorasweep report SOURCE --out DIR`: the sweep report from trials' metrics.json files.

SOURCE is a folder or an s3:// prefix holding ``<trial>/metrics.json`` (a sweep's ``trials/``);
DIR a folder or s3:// prefix for report.md and its figures. Exit codes: 0 written, 1 nothing to report
(no metrics found, or none readable), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import get_args

EXIT_WRITTEN = 0
EXIT_NOTHING = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit codes: 0 written, 1 no readable metrics.json under SOURCE, 2 usage"
    from lorasweep_trainer.config import ObjectiveMetric

    parser.add_argument("source", metavar="SOURCE", help="folder or s3:// prefix holding <trial>/metrics.json files")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder or s3:// prefix for report.md and figures")
    parser.add_argument(
        "--objective", choices=get_args(ObjectiveMetric), default="val_accuracy", help="metric to rank by"
    )
    parser.add_argument("--goal", choices=("maximize", "minimize"), default=None, help="default: by the metric")
    parser.add_argument("--sweep", default=None, help="name in the title (default: the trials' sweep)")


def run(args: argparse.Namespace) -> int:
    from lorasweep_operator.report import publish_report
    from lorasweep_operator.report.builder import build_report
    from lorasweep_operator.report.storage import load_metrics

    try:
        trials, problems = load_metrics(args.source)
    except FileNotFoundError as error:
        print(f"lorasweep report: {error}", file=sys.stderr)
        return EXIT_NOTHING
    for location, why in problems.items():
        print(f"lorasweep report: skipped {location}: {why}", file=sys.stderr)
    if not trials:
        print(f"lorasweep report: no readable metrics.json under {args.source}", file=sys.stderr)
        return EXIT_NOTHING
    failed = {location: f"unreadable metrics: {why}" for location, why in problems.items()}
    report = build_report(trials, objective=args.objective, goal=args.goal, sweep=args.sweep, failed=failed)
    uri = publish_report(report, args.out)
    print(f"report of {len(trials)} trials: {uri}")
    print(f"best by {report.objective}: {report.best.label} (trials {', '.join(report.best.trials)})")
    return EXIT_WRITTEN
