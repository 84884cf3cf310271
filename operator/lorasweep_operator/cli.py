"""`lorasweep`: one entry point for users, CI and the operator image.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them. Subcommand modules keep heavy imports (kopf, kubernetes, boto3) inside
their functions, so `--help` stays fast and the operator image never imports what it does not ship.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lorasweep_operator.local.demo", "run a small sweep on synthetic clips, no cluster needed"),
    "run": ("lorasweep_operator.local.runner", "run a sweep's trials as local processes and write its report"),
    "validate": ("lorasweep_operator.commands.validate", "check a sweep file and print its trial table"),
    "report": ("lorasweep_operator.commands.report", "build a sweep report from its trials' metrics.json"),
    "status": ("lorasweep_operator.commands.status", "show a LoraSweep's status from the cluster"),
    "operator": ("lorasweep_operator.commands.operator", "run the kopf operator"),
    "dev": (
        "lorasweep_operator.devcluster.commands",
        "a local Kubernetes control plane (build, up, down, status, env)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorasweep", description="LoRA hyperparameter sweeps for video models.")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v info, -vv debug (default: warnings only; `operator` logs info, -v debug)",
    )
    parser.add_argument("--version", action="version", version=version_line("lorasweep"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, summary) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(module_name=module_name)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def version_line(program: str) -> str:
    """``lorasweep 0.1.0``: the installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{program} {version('lorasweep')}"
    except PackageNotFoundError:
        return f"{program} (not installed as a distribution)"


def log_level(module: object, verbose: int) -> int:
    """Warnings only for commands people watch, so log lines do not mix with their output; a service
    (the operator) declares its own ``LOG_LEVEL``. Each -v is one level more."""
    base = int(getattr(module, "LOG_LEVEL", logging.WARNING))
    return max(logging.DEBUG, base - 10 * verbose)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args.module_name)
    logging.basicConfig(
        level=log_level(module, args.verbose),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
