"""`lorasweep report SOURCE --out DIR`: the sweep report from trials' metrics.json files.

SOURCE is a folder or an s3:// prefix holding ``<trial>/metrics.json`` (a sweep's ``trials/``);
DIR a folder or s3:// prefix for report.md and its figures.

The operator's report Job runs this command too. For it, ``--trials`` keeps only the sweep's own trials
(SOURCE may still hold those of an earlier sweep of the same name), ``--failed`` lists trials that left no
metrics, and a JSON `ReportSummary` (report.md's URI, or why there is none) goes to the termination log
(``--termination-log``, default ``$LORASWEEP_TERMINATION_LOG``), where the operator reads it back.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

if TYPE_CHECKING:
    from lorasweep_operator.report.model import Report
    from lorasweep_trainer.config import MlflowTracking

EXIT_WRITTEN = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3
# What a report Job must not retry: the same inputs fail the same way.
PERMANENT_EXIT_CODES = (EXIT_NOTHING, EXIT_USAGE)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "exit codes: 0 written, 1 no readable metrics.json under SOURCE (for the chosen trials), 2 usage, "
        "3 object storage could not be read or written (trying again may help)"
    )
    from lorasweep_trainer.config import TERMINATION_LOG_ENV, ObjectiveMetric

    parser.add_argument("source", metavar="SOURCE", help="folder or s3:// prefix holding <trial>/metrics.json files")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder or s3:// prefix for report.md and figures")
    parser.add_argument(
        "--objective", choices=get_args(ObjectiveMetric), default="val_accuracy", help="metric to rank by"
    )
    parser.add_argument("--goal", choices=("maximize", "minimize"), default=None, help="default: by the metric")
    parser.add_argument("--sweep", default=None, help="name in the title (default: the trials' sweep)")
    parser.add_argument(
        "--trials",
        type=_trial_ids,
        default=None,
        metavar="ID,ID,...",
        help="report only these trial ids (default: every metrics.json under SOURCE)",
    )
    parser.add_argument(
        "--failed",
        type=_failed_trial,
        action="append",
        default=[],
        metavar="ID=WHY",
        help="a trial that failed without metrics, listed in the report with why (repeatable)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=os.environ.get(TERMINATION_LOG_ENV) or None,
        metavar="PATH",
        help=f"write a JSON summary (report URI or the failure) here; default ${TERMINATION_LOG_ENV} when set",
    )


def _trial_ids(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("give at least one trial id, comma-separated")
    return ids


def _failed_trial(text: str) -> tuple[str, str]:
    trial, separator, why = text.partition("=")
    if not separator or not trial.strip():
        raise argparse.ArgumentTypeError(f"expected ID=WHY, got {text!r}")
    return trial.strip(), why.strip() or "failed"


def run(args: argparse.Namespace) -> int:
    from lorasweep_operator.report import build_sweep_report, publish_report
    from lorasweep_operator.report.model import ReportSummary

    def finish(code: int, summary: ReportSummary) -> int:
        if summary.status == "Failed":
            print(f"lorasweep report: {summary.message}", file=sys.stderr)
        if args.termination_log is not None:
            try:
                args.termination_log.write_text(summary.encode())
            except OSError as error:
                log.warning("termination message not written path=%s error=%s", args.termination_log, error)
        return code

    try:
        report = build_sweep_report(
            args.source,
            args.objective,
            args.goal,
            sweep=args.sweep,
            failed=dict(args.failed),
            trials=args.trials,
        )
        uri = publish_report(report, args.out)
    except FileNotFoundError as error:
        return finish(EXIT_NOTHING, ReportSummary(status="Failed", reason="NothingToReport", message=str(error)))
    except ValueError as error:
        scope = f" for the {len(args.trials)} trials asked for" if args.trials else ""
        why = f"no readable metrics.json under {args.source}{scope}: {error}"
        return finish(EXIT_NOTHING, ReportSummary(status="Failed", reason="NothingToReport", message=why))
    except Exception as error:
        if not _storage_error(error):
            raise
        why = f"object storage failed: {type(error).__name__}: {error}"
        return finish(EXIT_STORAGE, ReportSummary(status="Failed", reason="StorageError", message=why))
    finish_parent_run(report, uri)
    print(f"report of {report.methodology.trials} trials: {uri}")
    print(f"best by {report.objective}: {report.best.label} (trials {', '.join(report.best.trials)})")
    return finish(
        EXIT_WRITTEN,
        ReportSummary(status="Written", report_uri=uri, trials=report.methodology.trials, best=report.best.label),
    )


def finish_parent_run(report: Report, report_uri: str, tracking: MlflowTracking | None = None) -> None:
    """spec.tracking: the sweep's MLflow parent run gets the best configuration, its objective and the report's
    URI, and ends (the contract from ``$LORASWEEP_TRACKING``, which the report Job has, when not given). Never
    fails the report: the trainer's `finish_sweep` counts and logs what did not reach MLflow."""
    from pydantic import ValidationError

    from lorasweep_trainer.config import TRACKING_ENV, MlflowTracking

    if tracking is None:
        text = os.environ.get(TRACKING_ENV)
        if not text:
            return
        try:
            tracking = MlflowTracking.model_validate_json(text)
        except ValidationError as error:
            log.warning("tracking contract unreadable env=%s error=%s", TRACKING_ENV, error.errors()[0]["msg"])
            return
    try:
        from lorasweep_trainer.tracking import finish_sweep
    except ImportError as error:  # an image without the MLflow client: the report stands on its own
        log.warning("mlflow parent run not finished reason=no_client error=%s", error)
        return
    best = report.best
    summary = {
        "lorasweep.best_trial": best.trials[0],
        "lorasweep.best": best.label,
        "lorasweep.objective": f"{report.objective} ({report.goal})",
        "lorasweep.report": report_uri,
    }
    if report.best_adapter is not None:
        summary["lorasweep.best_adapter"] = report.best_adapter.uri
    metrics: dict[str, float] = {"trials": float(report.methodology.trials), "best_test_accuracy": best.test.mean}
    if best.objective is not None:
        metrics[f"best_{report.objective}"] = best.objective
    run = finish_sweep(tracking, summary, metrics)
    if run is not None:
        log.info("mlflow parent run finished run=%s best=%s", run, best.trials[0])


def _storage_error(error: Exception) -> bool:
    """The trainer's StorageError (retries exhausted, a write that did not verify) or botocore's own errors
    (no credentials, access denied, endpoint unreachable)."""
    from lorasweep_trainer.storage import StorageError

    if isinstance(error, StorageError | OSError):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return False
    return isinstance(error, BotoCoreError | ClientError)
