"""Early-stopping benchmark: `python -m lorasweep_operator.bench_adaptive [--clips-per-action 12] [--parallel 2]`.

Runs the reference's sweep shape (its 11 configurations, 5 epochs, batch 1 x 4 accumulation steps) twice with
`lorasweep run`'s own runner, on synthetic NTU-like clips and the tiny V-JEPA2-shaped model on the CPU: once as
written, once with ASHA (spec.earlyStopping: val_loss, reduction factor 3, first rung after epoch 1). For each
it prints the trainer processes' CPU time (user + system, all trials), the wall time, the trials stopped, the
epochs trained and the best validation accuracy found (the best trial's best epoch, as the report picks it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lorasweep_operator.local.progress import State
from lorasweep_operator.local.runner import LocalSweep, RunOptions, trainer_command
from lorasweep_operator.planning import plan
from lorasweep_operator.spec import parse_manifest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "deploy" / "samples" / "phase1-sweep.yaml"
ACTIONS = "8,9,23,1,2"  # the reference's three classes and two for "other"
ASHA = {"algorithm": "asha", "metric": "val_loss", "reductionFactor": 3, "minEpochs": 1}


@dataclass(frozen=True)
class Result:
    name: str
    cpu_seconds: float
    wall_seconds: float
    trials: int
    stopped: int
    epochs: int
    best_val_accuracy: float | None


def manifest(clips: Path, clips_per_action: int, early_stopping: bool) -> dict[str, Any]:
    document: dict[str, Any] = copy.deepcopy(yaml.safe_load(REFERENCE.read_text()))
    spec = document["spec"]
    spec["model"] = {"preset": "tiny", "framesPerClip": 4}
    spec["dataset"].update(source=f"{clips}/", videosPerClass=clips_per_action)
    spec["resources"] = {"limits": {"cpu": "1"}}
    if early_stopping:
        spec["earlyStopping"] = dict(ASHA)
    document["metadata"]["name"] = "asha" if early_stopping else "full"
    return document


def run_one(document: dict[str, Any], out: Path, parallel: int) -> Result:
    sweep = parse_manifest(document)
    options = RunOptions(results=str(out), state=out, parallel=parallel, device="cpu", command=trainer_command())
    runner = LocalSweep(sweep, plan(sweep.spec, sweep.name), options, out=io.StringIO())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    code = runner.run()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"bench: the {sweep.name} sweep exited {code}; see {out}/trials/*/trainer.log")
    best, epochs = None, 0
    for path in out.glob("trials/*/metrics.json"):
        metrics = json.loads(path.read_text())
        best = max(best or 0.0, metrics["val_accuracy"])
        epochs += len(metrics["epochs"])
    stopped = sum(t.state is State.STOPPED for t in runner.progress)
    for path in out.glob("trials/*/early-stopping.json"):
        if any(d.get("stop") for d in json.loads(path.read_text()).get("decisions", {}).values()):
            epochs += len(json.loads(path.read_text())["values"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Result(sweep.name, cpu, wall, len(runner.progress), stopped, epochs, best)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorasweep_operator.bench_adaptive", description=__doc__)
    parser.add_argument("--clips-per-action", type=int, default=12, help="synthetic clips per NTU action")
    parser.add_argument("--parallel", type=int, default=2, help="trials at once")
    parser.add_argument("--work", type=Path, default=None, help="keep clips and both runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        scratch = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lorasweep-bench-")))
        clips = scratch / "clips"
        synth = [*trainer_command("synth"), str(clips), "--actions", ACTIONS]
        subprocess.run([*synth, "--clips-per-action", str(args.clips_per_action)], check=True, capture_output=True)
        results = [
            run_one(manifest(clips, args.clips_per_action, stopping), scratch / name, args.parallel)
            for name, stopping in (("full", False), ("asha", True))
        ]
    print(
        f"reference-shaped sweep (11 configurations, 5 epochs), tiny model, {args.clips_per_action} synthetic clips "
        f"per action, CPU, {args.parallel} at a time"
    )
    print(f"{'run':<6} {'trainer CPU s':>13} {'wall s':>8} {'stopped':>8} {'epochs':>7} {'best val acc':>13}")
    for r in results:
        best = f"{r.best_val_accuracy:.4f}" if r.best_val_accuracy is not None else "-"
        print(f"{r.name:<6} {r.cpu_seconds:>13.1f} {r.wall_seconds:>8.1f} {r.stopped:>8} {r.epochs:>7} {best:>13}")
    full, asha = results
    print(f"ASHA used {100 * asha.cpu_seconds / full.cpu_seconds:.0f}% of the full sweep's trainer CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
