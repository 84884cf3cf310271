"""`lorasweep demo`: a whole sweep on this machine in a few minutes, no cluster, no downloads.

It writes small synthetic NTU-like clips (``lorasweep-trainer synth``), fills the embedded demo sweep
(demo-sweep.yaml: a tiny V-JEPA2-shaped model, baseline plus two one-factor groups, 4 trials) with
their location, runs it through the same runner as `lorasweep run` on the CPU, and says where the
report is. Running it again resumes: finished trials are skipped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_SWEEP = "demo-sweep.yaml"
DEMO_ACTIONS = "8,9,23,1,2"  # sit_down, stand_up, waving, and two actions for "other"
CLIPS_PER_ACTION = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit codes as for `lorasweep run`; run it again to resume an interrupted demo"
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("lorasweep-demo"),
        help="folder for clips, trials and report (default: ./lorasweep-demo)",
    )
    parser.add_argument("-p", "--parallel", type=int, default=2, help="trials at once (default: 2)")
    parser.add_argument("--fresh", action="store_true", help="delete the folder's earlier trials and report first")


def demo_manifest(clips: Path, output: Path) -> dict[str, Any]:
    """The embedded demo sweep with its dataset and output pointed at ``clips`` and ``output``."""
    import yaml

    document: dict[str, Any] = yaml.safe_load(
        resources.files("lorasweep_operator.local").joinpath(DEMO_SWEEP).read_text()
    )
    document["spec"]["dataset"]["source"] = f"{clips}/"
    document["spec"]["storage"]["output"] = f"{output}/"
    return document


def make_clips(clips: Path) -> None:
    from lorasweep_operator.local.runner import trainer_command

    if any(clips.glob("*.avi")):
        return
    command = [
        *trainer_command("synth"),
        str(clips),
        "--actions",
        DEMO_ACTIONS,
        "--clips-per-action",
        str(CLIPS_PER_ACTION),
        "--seed",
        "0",
    ]
    print(f"writing synthetic clips to {clips}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def run(args: argparse.Namespace) -> int:
    import yaml

    from lorasweep_operator.local.runner import EXIT_BAD_INPUT, EXIT_OK, LocalSweep, RunOptions, program
    from lorasweep_operator.planning import plan
    from lorasweep_operator.report import REPORT_FILE
    from lorasweep_operator.spec import load_sweep_file

    if args.parallel < 1:
        print("lorasweep demo: --parallel must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    folder: Path = args.dir.resolve()
    if args.fresh:
        for part in ("trials", "report"):
            shutil.rmtree(folder / part, ignore_errors=True)
    clips = folder / "clips"
    try:
        make_clips(clips)
    except subprocess.CalledProcessError as error:
        print(f"lorasweep demo: writing synthetic clips failed (exit code {error.returncode})", file=sys.stderr)
        return error.returncode or 1
    sweep_file = folder / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(demo_manifest(clips, folder), sort_keys=False))
    manifest = load_sweep_file(sweep_file)
    options = RunOptions(
        results=str(folder),
        state=folder,
        parallel=args.parallel,
        device="cpu",
        resume_command=[program(), "demo", "--dir", str(args.dir), "--parallel", str(args.parallel)],
    )
    sweep = LocalSweep(manifest, plan(manifest.spec, manifest.name), options)
    code = sweep.run()
    if code == EXIT_OK:
        print(
            f"\nThe demo's report: {folder / 'report' / REPORT_FILE}\n"
            f"Its sweep file: {sweep_file} (run it again with: lorasweep run {sweep_file} --out {folder})"
        )
        if sweep.best_adapter is not None:
            print(
                f"Its best adapter on the clips: lorasweep-trainer predict --adapter {sweep.best_adapter} --clips {clips}"
            )
    return code
