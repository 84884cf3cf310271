"""Video decoding with decord, in worker processes that a decoder crash cannot take down with the trial.

decord (libavcodec underneath) segfaulted in about one of six trial runs when several threads of one process
decoded at once: the crash is inside libavcodec, so no Python code can catch it. Here every decode runs in a
worker process with one decoder and nothing shared (`DecodePool`); a worker that dies is replaced, the clips it
had in flight are tried again once in a fresh worker, and a clip that kills its worker twice is reported as
corrupt (counted and skipped like any undecodable clip), never as a failed trial.

This module imports numpy and decord only (no torch), so a worker starts in a fraction of a second.

One pass per clip: `decode_clip` takes every frame request of a clip (the evaluation frames, the training
frames of each seed and epoch) and decodes the union of their frame indices in one ``get_batch``.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from lorasweep_trainer import sampling

log = logging.getLogger(__name__)

Sampler = Callable[[int], list[int]]
# One attempt, then one more in a fresh worker: a clip that crashes two decoders is treated as corrupt.
CRASH_ATTEMPTS = 2


class CorruptClip(Exception):
    """The bytes are not a decodable video (or have no frames)."""


@dataclass(frozen=True)
class FrameRequest:
    """Which frames of a clip: the evaluation centres (``train_seed`` None) or one seeded training draw.

    ``train_seed`` is ``"<trial seed>:<epoch>:<clip uri>"``: one generator per (seed, epoch, clip), so the frames
    drawn depend on nothing else (not on thread scheduling, not on which other trials share the decode).
    """

    train_seed: str | None = None

    def indices(self, num_frames: int, frames_per_clip: int) -> list[int]:
        if self.train_seed is None:
            return sampling.eval_indices(num_frames, frames_per_clip)
        return sampling.train_indices(num_frames, frames_per_clip, random.Random(self.train_seed))


def train_seed(seed: int, epoch: int, uri: str) -> str:
    """The training sampler's seed for one clip in one epoch of one trial seed."""
    return f"{seed}:{epoch}:{uri}"


def _scaled_size(height: int, width: int, short_side: int | None) -> tuple[int, int] | None:
    if short_side is None or min(height, width) <= short_side:
        return None  # never upscale
    scale = short_side / min(height, width)
    return max(short_side, round(height * scale)), max(short_side, round(width * scale))


def decode(data: bytes, sampler: Sampler, short_side: int | None = None) -> np.ndarray:
    """Frames ``sampler(num_frames)`` of an in-memory video as (T, H, W, 3) uint8 RGB.

    With ``short_side``, a larger video is scaled while decoding so its shorter side is ``short_side`` (aspect
    kept). For 1080p clips and V-JEPA2's 292 px resize, decode + preprocessing then takes about 10% less CPU
    (measured: 321 vs 358 ms per clip, one core) and a clip's frames in flight are 8 x 519x292 instead of
    8 x 1920x1080 (3.6 MB instead of 50 MB, and no 200 MB float copy in the processor). Finding the size costs
    one extra open and one decoded frame. decord's scaler mishandles some sizes (e.g. width 48 comes back
    48x48), so a failed or misshapen scaled decode falls back to full frames rather than calling the clip corrupt.
    """
    import decord

    errors = (RuntimeError, decord.DECORDError, ValueError, IndexError)
    try:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        num_frames = len(reader)
        if num_frames < 1:
            raise CorruptClip("the video has no frames")
        indices = sampler(num_frames)
        size = _scaled_size(*reader[0].shape[:2], short_side) if short_side is not None else None
        if size is not None:
            try:
                scaled = decord.VideoReader(
                    io.BytesIO(data), ctx=decord.cpu(0), num_threads=1, height=size[0], width=size[1]
                )
                frames: np.ndarray = scaled.get_batch(indices).asnumpy()
                if frames.shape[1:3] == size:
                    return frames
            except errors as error:
                log.debug("scaled decode failed, decoding full frames size=%s error=%s", size, error)
            reader.seek(0)
        frames = reader.get_batch(indices).asnumpy()
    except CorruptClip:
        raise
    except errors as error:
        raise CorruptClip(printable(str(error)) or type(error).__name__) from error
    return frames


def decode_clip(
    data: bytes, requests: Sequence[FrameRequest], frames_per_clip: int, short_side: int | None
) -> list[np.ndarray]:
    """Every request's frames of one clip, decoded in one pass over the union of their frame indices."""
    wanted: list[list[int]] = []
    decoded: list[int] = []

    def union(num_frames: int) -> list[int]:
        wanted[:] = [request.indices(num_frames, frames_per_clip) for request in requests]
        decoded[:] = sorted({index for indices in wanted for index in indices})
        return decoded

    frames = decode(data, union, short_side)
    row = {index: position for position, index in enumerate(decoded)}
    return [frames[[row[index] for index in indices]] for indices in wanted]


def printable(text: str, limit: int = 300) -> str:
    # decord quotes the file's first bytes in its errors: keep log lines and metrics.json plain text.
    cleaned = "".join(char if char.isprintable() and char.isascii() else "?" for char in " ".join(text.split()))
    return cleaned[:limit]


def _worker_decode(
    data: bytes, requests: Sequence[FrameRequest], frames_per_clip: int, short_side: int | None
) -> list[np.ndarray] | str:
    # A CorruptClip travels back as its message: exceptions pickle, but a plain string cannot fail to.
    try:
        return decode_clip(data, requests, frames_per_clip, short_side)
    except CorruptClip as error:
        return str(error)


class DecodePool:
    """Decodes in ``workers`` processes (spawned: no torch, no threads, no decoder state inherited).

    `decode` blocks the calling thread until its clip is done, so a thread pool of fetchers can feed it; a
    crashed worker breaks the whole pool (that is how ProcessPoolExecutor reports it), so the pool is rebuilt
    and every caller whose clip was in flight tries once more, alone.
    """

    def __init__(self, workers: int, work: Callable[..., list[np.ndarray] | str] | None = None) -> None:
        self.workers = workers
        self.work = work or _worker_decode  # a module-level function (it is pickled by name to the workers)
        self.crashes = 0
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self, workers: int | None = None) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(max_workers=workers or self.workers, mp_context=context)

    def _submit(self, *args: object) -> tuple[ProcessPoolExecutor, Future[list[np.ndarray] | str]]:
        with self._lock:
            pool = self._pool
            return pool, pool.submit(self.work, *args)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:  # the first caller to see the break replaces it; the others reuse that one
                self.crashes += 1
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    def decode(
        self, data: bytes, requests: Sequence[FrameRequest], frames_per_clip: int, short_side: int | None
    ) -> list[np.ndarray]:
        """`decode_clip` in a worker; CorruptClip for an undecodable clip or one that crashed the decoder twice.

        A crash breaks the shared pool and fails every clip in flight, not only the one that crashed; so the retry
        runs alone, in a process of its own, where only the culprit can crash again."""
        args = (data, tuple(requests), frames_per_clip, short_side)
        pool, future = self._submit(*args)
        try:
            result = future.result()
        except BrokenProcessPool:
            self._replace(pool)
            log.warning("decoder worker died, retrying the clip in a process of its own")
            with self._new_pool(workers=1) as alone:
                try:
                    result = alone.submit(self.work, *args).result()
                except BrokenProcessPool:
                    raise CorruptClip(f"the decoder crashed on this clip {CRASH_ATTEMPTS} times") from None
        if isinstance(result, str):
            raise CorruptClip(result)
        return result

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)
