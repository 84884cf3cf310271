"""`lorasweep validate SWEEP.yaml`: the spec checks and planning the operator does, without a cluster.

Exit codes: 0 valid (the trial table is printed), 1 the file is not a valid sweep (every problem is
listed with its field path), 2 usage.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lorasweep_operator.commands import aligned

if TYPE_CHECKING:
    from lorasweep_operator.planning import PlannedTrial
    from lorasweep_operator.spec import SweepManifest

EXIT_VALID = 0
EXIT_INVALID = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit codes: 0 valid (prints the trial table), 1 invalid (prints every problem), 2 usage"
    parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="a LoraSweep manifest")
    parser.add_argument("-n", "--namespace", default="default", help="namespace when the file names none")


def run(args: argparse.Namespace) -> int:
    from lorasweep_operator.planning import plan
    from lorasweep_operator.spec import SpecError, load_sweep_file

    try:
        manifest = load_sweep_file(args.sweep_file, default_namespace=args.namespace)
        if manifest.spec.search.from_sweep is not None:
            print(
                f"{args.sweep_file}: valid; search.fromSweep takes the top {manifest.spec.search.from_sweep.top} "
                f"trials of sweep {manifest.spec.search.from_sweep.name!r}, so its trials are planned on the cluster"
            )
            return EXIT_VALID
        trials = plan(manifest.spec, manifest.name)  # search.optimize: its first proposals (nothing recorded yet)
    except FileNotFoundError:
        print(f"lorasweep validate: {args.sweep_file}: no such file", file=sys.stderr)
        return EXIT_INVALID
    except SpecError as error:
        print(f"lorasweep validate: {args.sweep_file} is not a valid sweep:", file=sys.stderr)
        # SpecError joins one "spec.<field>: <problem>" per field with "; "; a problem's own text may hold "; ".
        text = str(error).removeprefix(f"{args.sweep_file}: ")
        for problem in re.split(r"; (?=spec\b)", text):
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    print("\n".join(describe(manifest, trials)))
    return EXIT_VALID


def describe(manifest: SweepManifest, trials: Sequence[PlannedTrial]) -> list[str]:
    spec = manifest.spec
    objective = spec.objective
    optimize = spec.search.optimize
    count = f"{optimize.trials} trials" if optimize is not None else f"{len(trials)} trials"
    lines = [
        f"LoraSweep {manifest.namespace}/{manifest.name} is valid: {count} "
        f"({spec.search.kind} search, seeds {', '.join(map(str, spec.search.seeds))}), "
        f"parallelism {spec.parallelism}, objective {objective.metric} ({objective.resolved_goal})",
    ]
    if optimize is not None:
        lines.append(
            f"{optimize.algorithm.upper()} proposes each next trial from the results so far (seed {optimize.seed}, "
            f"{optimize.resolved_startup_trials} random start-up trials); the first {len(trials)} proposals:"
        )
    from lorasweep_operator.early_stopping import rungs
    from lorasweep_operator.status import stopping_rule

    rule = stopping_rule(spec)
    if rule is not None:
        at = ", ".join(map(str, rungs(rule, spec.training.epochs))) or "none"
        lines.append(
            f"early stopping: ASHA on {rule.metric} ({rule.goal}), reduction factor {rule.reduction_factor}: at epochs "
            f"{at} of {spec.training.epochs}, a trial outside the best 1/{rule.reduction_factor} there is stopped"
        )
    lines.append("")
    rows = [("#", "TRIAL", "GROUP", "SEED", "LR", "RANK", "ALPHA", "DROPOUT", "EPOCHS", "VARIANT")]
    for t in trials:
        lora = t.training.lora
        rows.append(
            (
                str(t.index + 1),
                t.id,
                t.group,
                str(t.seed),
                f"{t.training.learning_rate:g}",
                str(lora.rank),
                f"{lora.alpha:g}",
                f"{lora.dropout:g}",
                str(t.training.epochs),
                t.variant or "-",
            )
        )
    lines += aligned(rows)
    return lines
