"""`lorasweep status NAME [-n NS]`: a LoraSweep's status as the operator keeps it.

Reads the custom resource through the operator's own API module (in-cluster account, else KUBECONFIG).
Exit codes: 0 shown, 1 no such sweep, 3 the cluster could not be reached or refused the read.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lorasweep_operator.commands import aligned

if TYPE_CHECKING:
    from lorasweep_operator.spec import LoraSweepStatus, TrialStatus

EXIT_SHOWN = 0
EXIT_NOT_FOUND = 1
EXIT_UNREACHABLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit codes: 0 shown, 1 no such sweep, 3 the cluster is unreachable or refused the read"
    parser.add_argument("name", metavar="NAME", help="the LoraSweep's name")
    parser.add_argument("-n", "--namespace", default="default", help="the sweep's namespace (default: default)")


def run(args: argparse.Namespace) -> int:
    from kubernetes.config.config_exception import ConfigException

    from lorasweep_operator.kube import ApiError, Kube
    from lorasweep_operator.spec import LoraSweepStatus

    try:
        sweep = Kube.from_environment().get_sweep(args.namespace, args.name)
    except ConfigException as error:
        print(f"lorasweep status: no cluster configuration ({error}); set KUBECONFIG", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as error:
        print(f"lorasweep status: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if sweep is None:
        print(f"lorasweep status: no LoraSweep {args.name!r} in namespace {args.namespace!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    status = LoraSweepStatus.model_validate(sweep.get("status") or {})
    print("\n".join(describe(f"{args.namespace}/{args.name}", status)))
    return EXIT_SHOWN


def _stopped(trial: TrialStatus) -> str:
    accuracy = trial.metrics.get("val_accuracy")
    shown = f", val_accuracy {accuracy:.4f}" if accuracy is not None else ""
    return f"{trial.reason or 'EarlyStopped'} after epoch {trial.epochs_completed or '?'}{shown}"


def describe(name: str, status: LoraSweepStatus) -> list[str]:
    counts = status.counts
    lines = [
        f"LoraSweep {name}: {status.phase}" + (f" ({status.message})" if status.message else ""),
        f"trials: {counts.total} total, {counts.running} running, {counts.pending} pending, "
        f"{counts.succeeded} succeeded, {counts.failed} failed"
        + (f", {counts.stopped} stopped early" if counts.stopped else ""),
    ]
    if status.best is not None:
        best = status.best
        lines.append(
            f"best: {best.trial} {best.metric}={best.objective:.4f} ({best.variant or best.group or 'baseline'})"
            + (f" metrics {best.metrics_uri}" if best.metrics_uri else "")
        )
        if best.adapter_uri:
            lines.append(f"best adapter: {best.adapter_uri} (lorasweep-trainer predict --adapter URI --clips PATH)")
    from lorasweep_operator.status import REPORT_WRITTEN

    report = status.condition(REPORT_WRITTEN)
    if status.report_uri:
        lines.append(f"report: {status.report_uri}")
    elif report is not None:  # on its way (a report Job runs), skipped, or failed: say which
        lines.append(f"report: none yet ({report.reason}: {report.message})")
    for condition in status.conditions:
        if condition.status == "True" and condition.message:
            lines.append(f"{condition.type}: {condition.reason}: {condition.message}")
    if status.trials:
        rows = [("TRIAL", "PHASE", "GROUP", "VARIANT", "SEED", "OBJECTIVE", "TEST", "REASON")]
        for t in status.trials:
            rows.append(
                (
                    t.id,
                    t.phase,
                    t.group or "-",
                    t.variant or "-",
                    str(t.seed),
                    f"{t.objective:.4f}" if t.objective is not None else "-",
                    f"{t.metrics['test_accuracy']:.4f}" if "test_accuracy" in t.metrics else "-",
                    _stopped(t) if t.phase == "Stopped" else t.reason or "",
                )
            )
        lines.append("")
        lines += aligned(rows)
        if status.trials_truncated:
            lines.append(f"(the table keeps the top {len(status.trials)}; {counts.total} trials in all)")
    return lines
