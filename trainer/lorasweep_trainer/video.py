"""Clips from storage to model input: fetch, decode (in worker processes, see `decode`), sample, preprocess.

`ClipLoader.iterate` runs fetch + preprocessing on a thread pool (``io_threads``) and the decodes on as many
decoder processes, with at most ``prefetch`` clips in flight, and yields results in the order given, so the
training loop only waits when storage and decoding are slower than the model. An undecodable clip is yielded as
a failure (counted, logged), never raised; a storage failure after retries is raised (it is transient, the Job
may retry).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from lorasweep_trainer import storage
from lorasweep_trainer.data import Sample
from lorasweep_trainer.decode import CorruptClip, DecodePool, FrameRequest
from lorasweep_trainer.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedClip:
    sample: Sample
    inputs: torch.Tensor | None  # pixels (T, C, H, W) or encoder features (N, D); None when the clip is corrupt
    error: str | None = None


class ClipLoader:
    """Fetches and preprocesses clips ahead of the consumer, bounded by ``prefetch``."""

    def __init__(
        self,
        processor: Callable[..., Any],
        frames_per_clip: int,
        telemetry: Telemetry,
        prefetch: int = 4,
        io_threads: int = 4,
    ) -> None:
        self.processor = processor
        # Decode straight to the size the processor resizes to (its "shortest_edge"), see `decode`.
        self.short_side: int | None = (getattr(processor, "size", None) or {}).get("shortest_edge")
        self.frames_per_clip = frames_per_clip
        self.telemetry = telemetry
        self.prefetch = prefetch
        self.pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="clip-loader")
        self.decoder = DecodePool(io_threads)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.decoder.close()

    def load(self, sample: Sample, split: str, train_seed: str | None) -> LoadedClip:
        started = time.perf_counter()
        data = storage.read_bytes(sample.uri)
        if storage.is_s3(sample.uri):
            self.telemetry.s3_read_seconds.inc(time.perf_counter() - started)
            self.telemetry.s3_read_bytes.inc(len(data))
        started = time.perf_counter()
        try:
            request = FrameRequest(train_seed)
            [frames] = self.decoder.decode(data, [request], self.frames_per_clip, self.short_side)
        except CorruptClip as error:
            self.telemetry.decode_failures(split).inc()
            log.warning("clip undecodable, skipped uri=%s split=%s error=%s", sample.uri, split, error)
            return LoadedClip(sample, None, str(error))
        pixel_values = self.processor(videos=frames, return_tensors="pt")["pixel_values_videos"][0]
        self.telemetry.decode_seconds.inc(time.perf_counter() - started)
        self.telemetry.clips_read(split).inc()
        return LoadedClip(sample, pixel_values)

    def iterate(self, samples: Sequence[Sample], split: str, train_seed: str | None = None) -> Iterator[LoadedClip]:
        """Yield every sample loaded, in order. ``train_seed`` ("<seed>:<epoch>") set: training frame sampling,
        seeded per clip (`decode.train_seed`)."""
        pending: deque[Future[LoadedClip]] = deque()
        upcoming = iter(samples)

        def submit_next() -> None:
            sample = next(upcoming, None)
            if sample is not None:
                seed = None if train_seed is None else f"{train_seed}:{sample.uri}"
                pending.append(self.pool.submit(self.load, sample, split, seed))

        for _ in range(self.prefetch):
            submit_next()
        try:
            while pending:
                started = time.perf_counter()
                loaded = pending.popleft().result()
                self.telemetry.data_wait_seconds.inc(time.perf_counter() - started)
                submit_next()
                yield loaded
        finally:
            for future in pending:
                future.cancel()


def batches(
    clips: Iterator[LoadedClip], batch_size: int, on_corrupt: Callable[[LoadedClip], None]
) -> Iterator[tuple[list[Sample], torch.Tensor, torch.Tensor]]:
    """Group loaded clips into (samples, inputs (B, ...), labels (B,)); corrupt ones go to ``on_corrupt``."""
    group: list[LoadedClip] = []
    for clip in clips:
        if clip.inputs is None:
            on_corrupt(clip)
            continue
        group.append(clip)
        if len(group) == batch_size:
            yield _collate(group)
            group = []
    if group:
        yield _collate(group)


def _collate(group: list[LoadedClip]) -> tuple[list[Sample], torch.Tensor, torch.Tensor]:
    inputs = torch.stack([clip.inputs for clip in group if clip.inputs is not None])
    labels = torch.tensor([clip.sample.label for clip in group], dtype=torch.long)
    return [clip.sample for clip in group], inputs, labels
