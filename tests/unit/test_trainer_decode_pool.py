"""Decoding in worker processes (`decode.DecodePool`): many parallel decodes give exactly the in-process
frames, a decoder that dies takes only its own clip down, and one pass per clip serves every frame request."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from decoder_crash import CRASH, crash_on_marker

from lorasweep_trainer.decode import CorruptClip, DecodePool, FrameRequest, decode, decode_clip, train_seed
from lorasweep_trainer.synth import SynthSpec, corrupt_bytes, encode_clip

# Issue 11, defect 7: decord crashed inside libavcodec when threads of one process decoded at once.
pytestmark = pytest.mark.reliability

FRAMES_PER_CLIP = 8


def clips(count: int) -> list[bytes]:
    spec = SynthSpec(actions=(1,), width=64, height=48, frames=24)
    return [encode_clip(1 + i % 7, spec, np.random.default_rng(i)) for i in range(count)]


def requests(rng: random.Random, uri: str) -> list[FrameRequest]:
    draws = [FrameRequest(train_seed(seed, epoch, uri)) for seed in (1, 2) for epoch in (1, 2, 3)]
    return [FrameRequest(), *rng.sample(draws, rng.randint(0, len(draws)))]


def test_one_pass_serves_every_request_with_the_frames_a_single_request_gets() -> None:
    data = clips(1)[0]
    wanted = requests(random.Random(0), "clip-0")
    together = decode_clip(data, wanted, FRAMES_PER_CLIP, None)
    for request, frames in zip(wanted, together, strict=True):
        alone = decode(data, lambda n, r=request: r.indices(n, FRAMES_PER_CLIP))
        assert np.array_equal(frames, alone)


def test_many_parallel_decodes_match_the_in_process_decode() -> None:
    """The soak: 8 threads keep 4 decoder processes busy with 320 decodes of 16 clips."""
    data = clips(16)
    rng = random.Random(1)
    jobs = [(i % len(data), requests(rng, f"clip-{i % len(data)}")) for i in range(320)]
    expected = {n: decode_clip(data[i], wanted, FRAMES_PER_CLIP, 36) for n, (i, wanted) in enumerate(jobs)}
    pool = DecodePool(4)
    try:
        with ThreadPoolExecutor(max_workers=8) as threads:
            got = list(threads.map(lambda job: pool.decode(data[job[0]], job[1], FRAMES_PER_CLIP, 36), jobs))
    finally:
        pool.close()
    assert pool.crashes == 0
    for n, frames in enumerate(got):
        assert all(np.array_equal(a, b) for a, b in zip(frames, expected[n], strict=True))


def test_a_dying_decoder_fails_only_its_own_clip_and_the_pool_goes_on() -> None:
    data = clips(6)
    pool = DecodePool(2, work=crash_on_marker)
    try:
        with ThreadPoolExecutor(max_workers=4) as threads:
            futures = [threads.submit(pool.decode, clip, [FrameRequest()], FRAMES_PER_CLIP, None) for clip in data]
            crashing = threads.submit(pool.decode, CRASH, [FrameRequest()], FRAMES_PER_CLIP, None)
            with pytest.raises(CorruptClip, match="crashed"):
                crashing.result()
            results = [future.result() for future in futures]
        assert len(results) == len(data) and all(frames[0].shape == (8, 48, 64, 3) for frames in results)
        assert pool.crashes >= 1  # the shared pool was rebuilt; the second crash was in the clip's own process
        with pytest.raises(CorruptClip):
            pool.decode(
                corrupt_bytes(np.random.default_rng(0)), [FrameRequest()], FRAMES_PER_CLIP, None
            )  # undecodable: no crash
        assert pool.decode(data[0], [FrameRequest()], FRAMES_PER_CLIP, None)[0].shape == (8, 48, 64, 3)
    finally:
        pool.close()
