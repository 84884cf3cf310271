"""Decoding synthetic AVI clips from memory with decord (no storage involved)."""

from __future__ import annotations

import numpy as np
import pytest

from lorasweep_trainer import sampling
from lorasweep_trainer.decode import CorruptClip, decode
from lorasweep_trainer.synth import SynthSpec, corrupt_bytes, encode_clip


def clip(width: int, height: int, frames: int = 8, action: int = 1) -> bytes:
    return encode_clip(
        action, SynthSpec(actions=(action,), width=width, height=height, frames=frames), np.random.default_rng(0)
    )


def centres(n: int) -> list[int]:
    return sampling.eval_indices(n, 8)


def test_decodes_the_sampled_frames_in_rgb() -> None:
    frames = decode(clip(64, 48, frames=16, action=8), centres)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    # Action 8 (8 % 8 = 0, "right") moves the square right: its horizontal centre grows frame by frame.
    bright = frames.max(axis=3) > 120
    xs = [np.nonzero(frame)[1].mean() for frame in bright]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 15


def test_scales_while_decoding_keeping_the_aspect() -> None:
    assert decode(clip(640, 360), centres, short_side=72).shape == (8, 72, 128, 3)
    assert decode(clip(64, 48), centres, short_side=292).shape == (8, 48, 64, 3)  # never upscales


def test_falls_back_to_full_frames_where_decord_scales_wrongly() -> None:
    # decord returns 48x48 when asked for width 48: the fallback decodes full frames instead of failing.
    assert decode(clip(64, 48), centres, short_side=36).shape == (8, 48, 64, 3)


def test_short_clip_repeats_frames() -> None:
    assert decode(clip(64, 48, frames=3), centres).shape == (8, 48, 64, 3)


@pytest.mark.parametrize("data", [corrupt_bytes(np.random.default_rng(1)), b"", clip(64, 48)[:2000]])
def test_undecodable_bytes_raise_corrupt_clip(data: bytes) -> None:
    with pytest.raises(CorruptClip) as caught:
        decode(data, centres)
    assert str(caught.value).isascii() and str(caught.value).isprintable()
