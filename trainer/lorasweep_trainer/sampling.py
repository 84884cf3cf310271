"""Which frames of a clip the model sees: pure functions of the clip length (and a seeded generator).

Both samplers split the clip into ``frames_per_clip`` equal segments and take one frame per segment, so the
frames always span the whole clip in temporal order (the model's tubelets and temporal RoPE rely on order):

- evaluation (`eval_indices`): the centre frame of every segment; deterministic, so val/test are repeatable.
- training (`train_indices`): a uniformly random frame inside every segment (TSN-style temporal jitter),
  drawn from the generator the trainer seeds per epoch, so a run is reproducible yet epochs see different frames.

A clip shorter than ``frames_per_clip`` has segments narrower than one frame; both samplers then repeat
frames (index ``floor(segment position)``) instead of failing, which keeps short clips usable.
"""

from __future__ import annotations

import math
import random


def _check(num_frames: int, frames_per_clip: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames}")
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be positive, got {frames_per_clip}")


def eval_indices(num_frames: int, frames_per_clip: int) -> list[int]:
    """Centres of ``frames_per_clip`` equal segments of ``[0, num_frames)``."""
    _check(num_frames, frames_per_clip)
    segment = num_frames / frames_per_clip
    return [min(num_frames - 1, math.floor((i + 0.5) * segment)) for i in range(frames_per_clip)]


def train_indices(num_frames: int, frames_per_clip: int, rng: random.Random) -> list[int]:
    """One uniformly random frame in each of ``frames_per_clip`` equal segments of ``[0, num_frames)``."""
    _check(num_frames, frames_per_clip)
    segment = num_frames / frames_per_clip
    return [min(num_frames - 1, math.floor((i + rng.random()) * segment)) for i in range(frames_per_clip)]
