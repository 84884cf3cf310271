"""The shared-work benchmark: `python -m lorasweep_operator.bench_sweep [--videos-per-class 12] [--parallel 2]`.

The reference's sweep shape (deploy/samples/phase1-sweep.yaml: 11 configurations, 5 epochs, 4 classes, batch 1 x
4 accumulation) with the tiny V-JEPA2 on CPU, on synthetic NTU-like clips at NTU's 1920x1080 in a local folder,
run three ways by real `lorasweep-trainer` processes, `--parallel` at a time:

1. streamed: one process per trial, each decoding every clip of every epoch (no preparation);
2. cached: one preparation process, then one process per trial reading the cache;
3. cached + packed: one preparation process, then the 11 trials in packs of `--packing`.

It prints, per way, the trainer processes' CPU seconds (user + system of every child, from getrusage) and the
wall time, the number of clip decodes and encoder forwards, and the ratios to the streamed run. Printed, never
asserted; on a shared machine wall times vary more than CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lorasweep_operator import preparation
from lorasweep_operator.planning import PlannedTrial, plan, trial_config
from lorasweep_operator.spec import LoraSweepSpec, load_sweep_file
from lorasweep_trainer.config import PACK_ENV, PREPARE_ENV, TERMINATION_LOG_ENV, TRIAL_ENV, WORK_DIR_ENV
from lorasweep_trainer.results import PrepareSummary, TrialMetrics

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "deploy" / "samples" / "phase1-sweep.yaml"
TRAINER = Path(sys.executable).with_name("lorasweep-trainer")


@dataclass
class Way:
    name: str
    cpu_seconds: float
    wall_seconds: float
    decodes: int
    encoder_forwards: int


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_all(commands: Sequence[tuple[list[str], dict[str, str]]], parallel: int, log: Path) -> None:
    """Run every (argv, env) with at most ``parallel`` at once; a failure stops the benchmark."""
    pending = list(commands)
    running: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        while pending or running:
            while pending and len(running) < parallel:
                argv, env = pending.pop(0)
                running.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))
            for process in list(running):
                if process.poll() is not None:
                    running.remove(process)
                    if process.returncode != 0:
                        raise SystemExit(f"a trainer process failed ({process.returncode}); see {log}")
            time.sleep(0.2)


def reference_spec(clips: Path, videos_per_class: int) -> tuple[LoraSweepSpec, list[PlannedTrial]]:
    manifest = load_sweep_file(REFERENCE, "bench")
    spec = manifest.spec.model_copy(
        update={
            "model": manifest.spec.model.model_copy(update={"preset": "tiny"}),
            "dataset": manifest.spec.dataset.model_copy(
                update={"source": str(clips), "videos_per_class": videos_per_class}
            ),
        }
    )
    return spec, plan(spec, "bench")


def env_for(work: Path, threads: int, **values: str) -> dict[str, str]:
    work.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        WORK_DIR_ENV: str(work),
        TERMINATION_LOG_ENV: str(work / "termination.json"),
        **values,
    }


def run_way(name: str, spec: LoraSweepSpec, trials: list[PlannedTrial], root: Path, args: argparse.Namespace) -> Way:
    folder = root / name
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    cache = str(folder / "cache") if name != "streamed" else None
    prepared = preparation.plan_preparation(spec, "bench", "bench", trials, cache)
    configs = [
        trial_config(
            spec, "bench", "bench", t, str(folder / "out"), cache=prepared.trial_caches[t.id] if cache else None
        ).model_copy(update={"device": "cpu", "metrics_port": 0, "io_threads": 2})
        for t in trials
    ]
    cpu, started = children_cpu(), time.perf_counter()
    decodes = forwards = 0
    if cache is not None:
        env = env_for(folder / "prepare", os.cpu_count() or 1, **{PREPARE_ENV: prepared.config.model_dump_json()})
        run_all([([str(TRAINER), "prepare"], env)], 1, folder / "trainer.log")
        summary = PrepareSummary.model_validate_json((folder / "prepare" / "termination.json").read_text())
        decodes, forwards = summary.stats["decodes"], summary.stats["encoder_forwards"]
    if name == "packed":
        packs = [configs[i : i + args.packing] for i in range(0, len(configs), args.packing)]
        commands = [
            (
                [str(TRAINER), "train"],
                env_for(
                    folder / f"pack-{i}", threads, **{PACK_ENV: "[" + ",".join(c.model_dump_json() for c in pack) + "]"}
                ),
            )
            for i, pack in enumerate(packs)
        ]
    else:
        commands = [
            ([str(TRAINER), "train"], env_for(folder / c.trial, threads, **{TRIAL_ENV: c.model_dump_json()}))
            for c in configs
        ]
    run_all(commands, args.parallel, folder / "trainer.log")
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    for config in configs:
        metrics = TrialMetrics.model_validate_json(Path(config.output, "metrics.json").read_text())
        if cache is None:  # a streamed trial decodes and encodes every clip it sees, every epoch
            seen = metrics.dataset.train * metrics.params.epochs + metrics.dataset.val * metrics.params.epochs
            decodes += seen + metrics.dataset.test
            forwards += seen + metrics.dataset.test
        else:
            assert metrics.cache is not None
            decodes += metrics.cache["decodes"]
            forwards += metrics.cache["encoder_forwards"]
    return Way(name, cpu, wall, decodes, forwards)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lorasweep_operator.bench_sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--videos-per-class", type=int, default=12)
    parser.add_argument("--frames", type=int, default=72, help="frames per synthetic clip (NTU clips: ~70-100)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--packing", type=int, default=6)
    parser.add_argument("--ways", default="streamed,cached,packed")
    parser.add_argument("--keep", help="folder to keep the clips and results in (default: a temporary one)")
    args = parser.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="lorasweep-bench-sweep-"))
    clips = root / "clips"
    if not clips.is_dir():
        subprocess.run(
            [
                str(TRAINER),
                "synth",
                str(clips),
                "--actions",
                "8,9,23,2",
                "--clips-per-action",
                str(args.videos_per_class),
            ]
            + ["--width", "1920", "--height", "1080", "--frames", str(args.frames)],
            check=True,
            capture_output=True,
        )
    spec, trials = reference_spec(clips, args.videos_per_class)
    size = sum(path.stat().st_size for path in clips.iterdir()) / len(list(clips.iterdir()))
    print(
        f"bench_sweep: {len(trials)} trials x {spec.training.epochs} epochs, tiny V-JEPA2 on CPU, "
        f"{4 * args.videos_per_class} clips of 1920x1080 x {args.frames} frames ({size / 1e6:.1f} MB each), "
        f"{args.parallel} at a time, {os.cpu_count()} CPUs"
    )
    ways = [run_way(name, spec, trials, root, args) for name in args.ways.split(",")]
    base = ways[0]
    print(
        f"{'way':<10} {'trainer CPU s':>14} {'wall s':>9} {'decodes':>8} {'encoder fwd':>12} {'CPU ratio':>10} {'wall ratio':>10}"
    )
    for way in ways:
        print(
            f"{way.name:<10} {way.cpu_seconds:14.1f} {way.wall_seconds:9.1f} {way.decodes:8d} "
            f"{way.encoder_forwards:12d} {base.cpu_seconds / way.cpu_seconds:9.1f}x {base.wall_seconds / way.wall_seconds:9.1f}x"
        )
    print(json.dumps({way.name: way.__dict__ for way in ways}))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
