"""``lorasweep-trainer``: train (the image's entrypoint), prepare, predict, merge, synth, inspect, bench.

Exit codes of ``train`` and ``prepare``: 0 succeeded, 2 invalid configuration (reason InvalidConfig) or the model
unavailable (reason ModelUnavailable), 3 dataset unusable; anything else is a retryable failure. ``predict`` and
``merge`` exit 2 for an unusable adapter or argument and 3 when no clip can be decoded. Every outcome, success or
failure, leaves a termination message (results.TerminationSummary)
in ``$LORASWEEP_TERMINATION_LOG`` (default /dev/termination-log).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lorasweep_trainer.config import (
    DEFAULT_TERMINATION_LOG,
    EXIT_DATASET_UNUSABLE,
    EXIT_INVALID_CONFIG,
    EXIT_STOPPED,
    EXIT_SUCCEEDED,
    PACK_ENV,
    PREPARE_ENV,
    TERMINATION_LOG_ENV,
    TRIAL_ENV,
    ConfigError,
    PrepareConfig,
    TrialConfig,
)
from lorasweep_trainer.results import PackSummary, PrepareSummary, TerminationSummary

log = logging.getLogger("lorasweep_trainer")


def validation_message(error: ValidationError) -> str:
    """``training.lora.rank: Input should be greater than or equal to 1 (got 0)`` per error, joined by '; '."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "trial"
        got = f" (got {item['input']!r})" if item["type"] not in ("missing", "json_invalid") else ""
        parts.append(f"{where}: {item['msg']}{got}")
    return "; ".join(parts)


def write_termination(summary: TerminationSummary | PrepareSummary | PackSummary) -> None:
    path = os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)
    try:
        Path(path).write_text(summary.encode(), encoding="utf-8")
    except OSError as error:
        log.warning("termination message not written path=%s error=%s", path, error)


def fail(trial: str, code: int, reason: str, message: str) -> int:
    log.error("trial failed trial=%s reason=%s message=%s", trial, reason, message)
    write_termination(TerminationSummary(trial=trial, status="Failed", reason=reason, message=message))
    return code


def _trial_id(text: str) -> str:
    try:
        value = json.loads(text).get("trial")
    except (ValueError, AttributeError):
        return "unknown"
    return value if isinstance(value, str) and value else "unknown"


def cmd_train(args: argparse.Namespace) -> int:
    if not args.trial and os.environ.get(PACK_ENV):
        from lorasweep_trainer.pack import run_pack

        return run_pack(os.environ[PACK_ENV], run_trial)
    if args.trial:
        try:
            text = Path(args.trial).read_text(encoding="utf-8")
        except OSError as error:
            reason = error.strerror or type(error).__name__
            return fail("unknown", EXIT_INVALID_CONFIG, "InvalidConfig", f"cannot read --trial {args.trial}: {reason}")
    elif os.environ.get(TRIAL_ENV):
        text = os.environ[TRIAL_ENV]
    else:
        return fail(
            "unknown",
            EXIT_INVALID_CONFIG,
            "InvalidConfig",
            f"no trial configuration: set {TRIAL_ENV} or pass --trial FILE",
        )
    try:
        cfg = TrialConfig.model_validate_json(text)
    except ValidationError as error:
        return fail(
            _trial_id(text),
            EXIT_INVALID_CONFIG,
            "InvalidConfig",
            f"invalid trial configuration: {validation_message(error)}",
        )

    return run_trial(cfg)


def run_trial(cfg: TrialConfig) -> int:
    """One trial in this process: train, publish, leave the termination message; returns the exit code."""
    from lorasweep_trainer.data import DatasetError
    from lorasweep_trainer.model import ModelUnavailable
    from lorasweep_trainer.pack import recorded_result
    from lorasweep_trainer.progress import TrialStopped
    from lorasweep_trainer.results import summarize
    from lorasweep_trainer.train import train

    earlier = recorded_result(cfg)
    if earlier is not None:
        # A retried pod whose predecessor wrote metrics.json before dying, or the trial started twice: the first
        # result stands (training again would replace its adapter and metrics with other numbers).
        log.info("trial finished before, keeping its result trial=%s metrics=%s", cfg.trial, earlier[1])
        write_termination(summarize(*earlier))
        return EXIT_SUCCEEDED
    log.info("trial starting trial=%s sweep=%s output=%s", cfg.trial, cfg.sweep, cfg.output)
    try:
        metrics, metrics_uri = train(cfg)
    except ModelUnavailable as error:
        return fail(cfg.trial, EXIT_INVALID_CONFIG, "ModelUnavailable", str(error))
    except ConfigError as error:
        return fail(cfg.trial, EXIT_INVALID_CONFIG, "InvalidConfig", str(error))
    except DatasetError as error:
        return fail(cfg.trial, EXIT_DATASET_UNUSABLE, "DatasetUnusable", str(error))
    except TrialStopped as stopped:
        return fail(cfg.trial, EXIT_STOPPED, "Stopped", str(stopped))
    except Exception as error:
        fail(cfg.trial, 1, "Error", f"{type(error).__name__}: {error}")
        raise
    write_termination(summarize(metrics, metrics_uri))
    log.info(
        "trial succeeded trial=%s val_accuracy=%.4f test_accuracy=%.4f metrics=%s",
        cfg.trial,
        metrics.val_accuracy,
        metrics.test_accuracy,
        metrics_uri,
    )
    return EXIT_SUCCEEDED


def fail_preparation(code: int, reason: str, message: str) -> int:
    log.error("preparation failed reason=%s message=%s", reason, message)
    write_termination(PrepareSummary(status="Failed", reason=reason, message=message))
    return code


def cmd_prepare(args: argparse.Namespace) -> int:
    text = Path(args.config).read_text(encoding="utf-8") if args.config else os.environ.get(PREPARE_ENV, "")
    if not text:
        return fail_preparation(EXIT_INVALID_CONFIG, "InvalidConfig", f"set {PREPARE_ENV} or pass --config FILE")
    try:
        cfg = PrepareConfig.model_validate_json(text)
    except ValidationError as error:
        message = f"invalid preparation configuration: {validation_message(error)}"
        return fail_preparation(EXIT_INVALID_CONFIG, "InvalidConfig", message)

    from lorasweep_trainer.data import DatasetError
    from lorasweep_trainer.prepare import prepare
    from lorasweep_trainer.weights import ModelUnavailable

    log.info("preparation starting sweep=%s cache=%s model=%s", cfg.sweep, cfg.cache.uri, cfg.model.source)
    try:
        summary = prepare(cfg)
    except ModelUnavailable as error:
        return fail_preparation(EXIT_INVALID_CONFIG, "ModelUnavailable", str(error))
    except ConfigError as error:
        return fail_preparation(EXIT_INVALID_CONFIG, "InvalidConfig", str(error))
    except DatasetError as error:
        return fail_preparation(EXIT_DATASET_UNUSABLE, "DatasetUnusable", str(error))
    except Exception as error:
        fail_preparation(1, "Error", f"{type(error).__name__}: {error}")
        raise
    write_termination(summary)
    return EXIT_SUCCEEDED


def cmd_synth(args: argparse.Namespace) -> int:
    from lorasweep_trainer.synth import SynthSpec, write_dataset

    try:
        spec = SynthSpec(
            actions=tuple(int(a) for a in args.actions.split(",") if a),
            clips_per_action=args.clips_per_action,
            width=args.width,
            height=args.height,
            frames=args.frames,
            fps=args.fps,
            corrupt=args.corrupt,
            seed=args.seed,
            fourcc=args.fourcc,
        )
    except ValueError as error:
        print(f"lorasweep-trainer synth: {error}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    written = write_dataset(spec, args.output)
    print(f"wrote {len(written)} clips ({spec.corrupt} corrupt) to {args.output}")
    return EXIT_SUCCEEDED


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        cfg = TrialConfig.model_validate_json(Path(args.trial).read_text(encoding="utf-8"))
    except ValidationError as error:
        print(f"invalid trial configuration: {validation_message(error)}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    from lorasweep_trainer import model as modeling

    # The meta device builds the real module tree without allocating or initialising weights.
    try:
        base = modeling.build_base_model(cfg.model, cfg.dataset.class_names, cfg.seed, device="meta")
        total = modeling.count_parameters(base)
        trainable = modeling.count_parameters(modeling.apply_lora(base, cfg.training.lora), trainable_only=True)
    except ConfigError as error:
        print(f"invalid trial configuration: {error}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    print(
        json.dumps(
            {
                "trainable_parameters": trainable,
                "total_parameters": total,
                "trainable_percent": round(100 * trainable / total, 4),
            }
        )
    )
    return EXIT_SUCCEEDED


def _use_adapter(args: argparse.Namespace, use: Callable[[Any], int], check: Callable[[], None]) -> int:
    """Run ``check`` (the other arguments, before any model is loaded), load ``--adapter`` (and ``--base``) and run
    ``use`` on it; an error is one line that says what to fix."""
    import tempfile

    from lorasweep_trainer.data import DatasetError
    from lorasweep_trainer.inference import load_adapter
    from lorasweep_trainer.storage import StorageError

    try:
        check()
        with tempfile.TemporaryDirectory(prefix="lorasweep-adapter-") as work:
            return use(load_adapter(args.adapter, Path(work), args.device, args.base))
    except (ConfigError, DatasetError, StorageError) as error:
        print(f"lorasweep-trainer {args.command}: {error}", file=sys.stderr)
        if isinstance(error, ConfigError):
            return EXIT_INVALID_CONFIG
        return EXIT_DATASET_UNUSABLE if isinstance(error, DatasetError) else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from lorasweep_trainer import inference

    if args.batch_size < 1:
        print("lorasweep-trainer predict: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_INVALID_CONFIG

    def run(loaded: Any) -> int:
        result = inference.predict(loaded, args.clips, args.batch_size, args.io_threads)
        print(json.dumps(inference.as_json(result), indent=2) if args.json else inference.format_table(result))
        return EXIT_SUCCEEDED

    return _use_adapter(args, run, lambda: inference.check_location(args.clips, "--clips"))


def cmd_merge(args: argparse.Namespace) -> int:
    from lorasweep_trainer import inference

    def run(loaded: Any) -> int:
        written = inference.merge(loaded, args.out)
        print(
            f"wrote the merged model ({len(written)} files) to {args.out}; load it with "
            f"VJEPA2ForVideoClassification.from_pretrained({args.out!r})"
        )
        return EXIT_SUCCEEDED

    return _use_adapter(args, run, lambda: inference.check_out(args.out))


def cmd_bench(args: argparse.Namespace) -> int:
    from lorasweep_trainer.bench import run_bench

    return run_bench(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorasweep")
    except PackageNotFoundError:
        return "(not installed as a distribution)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorasweep-trainer", description="Run and inspect one lorasweep trial.")
    parser.add_argument("--version", action="version", version=f"lorasweep-trainer {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help=f"run one trial (config from ${TRIAL_ENV} or --trial)")
    train.add_argument("--trial", help=f"trial configuration JSON file (default: ${TRIAL_ENV})")
    train.set_defaults(func=cmd_train)

    prepare = sub.add_parser(
        "prepare", help=f"decode (and encode) a sweep's clips once into its cache (config from ${PREPARE_ENV})"
    )
    prepare.add_argument("--config", help=f"preparation configuration JSON file (default: ${PREPARE_ENV})")
    prepare.set_defaults(func=cmd_prepare)

    synth = sub.add_parser("synth", help="write a synthetic NTU-like dataset to a folder or s3:// prefix")
    synth.add_argument("output", help="folder or s3://bucket/prefix/")
    synth.add_argument(
        "--actions",
        default="8,9,23,2,3",
        help="comma-separated NTU action ids, distinct modulo 8 (default: 8,9,23,2,3)",
    )
    synth.add_argument("--clips-per-action", type=int, default=10)
    synth.add_argument("--width", type=int, default=64, help="up to 1920")
    synth.add_argument("--height", type=int, default=48, help="up to 1080")
    synth.add_argument("--frames", type=int, default=16)
    synth.add_argument("--fps", type=int, default=30)
    synth.add_argument("--corrupt", type=int, default=0, help="how many clips hold undecodable bytes")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--fourcc", default="XVID", help="OpenCV codec, e.g. XVID or MJPG")
    synth.set_defaults(func=cmd_synth)

    inspect = sub.add_parser("inspect", help="print trainable and total parameters of a trial's model")
    inspect.add_argument("--trial", required=True, help="trial configuration JSON file")
    inspect.set_defaults(func=cmd_inspect)

    def adapter_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--adapter", required=True, help="a trial's adapter folder: local path or s3://.../trials/<trial>/adapter/"
        )
        command.add_argument(
            "--base", help="a hub name or folder holding the same base weights (e.g. offline); checked by digest"
        )
        command.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    predict = sub.add_parser("predict", help="classify clips with a trial's adapter (its sweep's class names)")
    adapter_arguments(predict)
    predict.add_argument("--clips", required=True, help="a video file, a folder, or an s3:// object or prefix")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument("--io-threads", type=int, default=4, help="clips fetched and decoded at once")
    predict.set_defaults(func=cmd_predict)

    merge = sub.add_parser("merge", help="fold a trial's adapter into its base model, loadable with from_pretrained")
    adapter_arguments(merge)
    merge.add_argument("--out", required=True, help="a new or empty folder, or an s3:// prefix")
    merge.set_defaults(func=cmd_merge, device="cpu")

    bench = sub.add_parser("bench", help="measure S3 GET + decode and training throughput")
    bench.add_argument("--large-clips", type=int, default=6, help="1920x1080 clips to read")
    bench.add_argument("--small-clips", type=int, default=40, help="small clips to read")
    bench.add_argument("--large-frames", type=int, default=72, help="frames per 1920x1080 clip (NTU clips: ~70-100)")
    bench.add_argument("--steps", type=int, default=20, help="tiny-model training steps to time")
    bench.add_argument("--gpu-iterations", type=int, default=10, help="ViT-L iterations to time where CUDA is present")
    bench.add_argument(
        "--weights-preset",
        choices=("vjepa2-vitl-256", "tiny", "none"),
        default="vjepa2-vitl-256",
        help="the model whose save_pretrained weights are fetched and verified as a sweep shares them (none: skip)",
    )
    bench.add_argument("--vitl-cpu", action="store_true", help="without CUDA, time one ViT-L iteration on CPU (fp32)")
    bench.set_defaults(func=cmd_bench)

    from lorasweep_trainer import flops

    count = sub.add_parser("flops", help="count a sweep's FLOPs with and without its shared work done once")
    flops.add_arguments(count)
    count.set_defaults(func=lambda args: flops.run_flops(args))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
