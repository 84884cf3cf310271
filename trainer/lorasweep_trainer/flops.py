"""``lorasweep-trainer flops``: the counted FLOPs of a sweep with and without its shared work done once.

Counted, not timed: torch's FlopCounterMode runs the model's ops on the meta device (no weights, no data) and
sums each op's FLOP formula. Per clip at the given shape: the frozen encoder's forward, the pooler + head forward
and its backward (the encoder is frozen and its input needs no gradient, so no backward runs through it). Then:

- uncached, every trial runs the encoder for every clip it sees: training clips x epochs, validation clips x
  epochs, test clips, and the inference timing clips (warm-up + `INFERENCE_TIMING_CLIPS`);
- cached, the preparation runs the encoder once per (clip, frame sample): training clips x epochs x seeds plus
  the validation and test clips, plus its own encoder timing (warm-up + `ENCODER_TIMING_CLIPS`); trials run only
  the pooler and head, and time the head on as many clips.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from lorasweep_trainer import model as modeling
from lorasweep_trainer.cache import ENCODER_TIMING_CLIPS
from lorasweep_trainer.config import LoraConfig, ModelConfig
from lorasweep_trainer.train import INFERENCE_TIMING_CLIPS

CLASSES = ["sit_down", "stand_up", "waving", "other"]


@dataclass(frozen=True)
class ClipFlops:
    encoder_forward: int
    head_forward: int
    head_backward: int


def count_clip_flops(preset: str, frames: int, rank: int) -> ClipFlops:
    with torch.device("meta"):
        base = modeling.build_base_model(ModelConfig(preset=preset, frames_per_clip=frames), CLASSES, 0, "meta")
        model = modeling.apply_lora(base, LoraConfig(rank=rank, alpha=2 * rank))
        crop = base.config.crop_size
        pixels = torch.empty(1, frames, 3, crop, crop)
        encode = modeling.encoder_features(base, torch.device("meta"))
        head = modeling.head_logits(model)
    counter = FlopCounterMode(display=False)
    with counter:
        features = encode(pixels)
    encoder = counter.get_total_flops()
    features = features.detach().requires_grad_(False)
    with counter:
        logits = head(features)
    forward = counter.get_total_flops()
    with counter:
        logits.sum().backward()
    return ClipFlops(encoder, forward, counter.get_total_flops())


def sweep_flops(
    clip: ClipFlops, trials: int, seeds: int, epochs: int, train: int, val: int, test: int
) -> tuple[float, float, int, int]:
    """(uncached FLOPs, cached FLOPs, encoder forwards uncached, encoder forwards cached)."""
    head_step = clip.head_forward + clip.head_backward
    timing, head_timing = 1 + INFERENCE_TIMING_CLIPS, 1 + ENCODER_TIMING_CLIPS
    forwards_per_trial = train * epochs + val * epochs + test + timing
    uncached = trials * (
        train * epochs * (clip.encoder_forward + head_step)
        + (val * epochs + test + timing) * (clip.encoder_forward + clip.head_forward)
    )
    prepared = seeds * train * epochs + val + test + 1 + ENCODER_TIMING_CLIPS
    cached = prepared * clip.encoder_forward + trials * (
        train * epochs * head_step + (val * epochs + test + head_timing) * clip.head_forward
    )
    return uncached, cached, trials * forwards_per_trial, prepared


def run_flops(args: argparse.Namespace) -> int:
    clip = count_clip_flops(args.preset, args.frames, args.rank)
    giga = 1e9
    print(f"lorasweep-trainer flops: preset {args.preset}, {args.frames} frames, LoRA rank {args.rank} (counted)")
    print(f"  encoder forward per clip        {clip.encoder_forward / giga:10.1f} GFLOP")
    print(f"  pooler + head forward per clip  {clip.head_forward / giga:10.1f} GFLOP")
    print(f"  pooler + head backward per clip {clip.head_backward / giga:10.1f} GFLOP")
    uncached, cached, forwards, prepared = sweep_flops(
        clip, args.trials, args.seeds, args.epochs, args.train, args.val, args.test
    )
    peta = 1e15
    print(
        f"\nsweep: {args.trials} trials x {args.seeds} seed(s), {args.epochs} epochs, "
        f"{args.train}/{args.val}/{args.test} train/val/test clips"
    )
    print(f"  uncached  {uncached / peta:7.2f} PFLOP   encoder forwards {forwards:7d}")
    print(f"  cached    {cached / peta:7.2f} PFLOP   encoder forwards {prepared:7d} (the preparation's)")
    print(f"  ratio     {uncached / cached:7.2f}x")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="vjepa2-vitl-256", choices=sorted(modeling.PRESETS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--trials", type=int, default=11, help="the reference sweep: 11 configurations")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train", type=int, default=140)
    parser.add_argument("--val", type=int, default=30)
    parser.add_argument("--test", type=int, default=30)
