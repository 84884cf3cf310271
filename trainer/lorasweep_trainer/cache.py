"""A sweep's shared work, done once: every clip decoded once, and the frozen encoder run once per frame sample.

What is cached (DESIGN.md "Artifacts": ``<output>/<namespace>/cache/``), as safetensors shards, each with a JSON
manifest beside it that holds its SHA-256:

- ``frames/<key>.safetensors``: one part's clips as the processor's resized and centre-cropped uint8 frames
  (N, T, C, H, W). Normalising them (`normalize`) gives the processor's output bit for bit, so a trial on
  cached frames sees exactly what a streaming trial sees.
- ``features/<key>.safetensors``: the encoder's output (N, tokens, hidden) for the same clips, fp32 on CPU
  and bf16 under CUDA autocast; trials then run only the pooler and the head.

A part is the evaluation frames of the val and test clips (``eval``) or the training draw of one trial seed
and epoch (``train-seed<S>-epoch<E>``: the training sampler is seeded by seed, epoch and clip, so every
configuration of one seed shares it), cut into chunks of `CHUNK_CLIPS` clips so memory stays bounded.

A shard's key is the SHA-256 of everything that changes its content: the kind and part, every clip's URI,
ETag and size with its frame request, the frames per clip, the processor's settings, the sampler's source,
and for features the encoder's weights digest and precision. A trial computes the keys from its own config and
model, so a changed model, revision, frame count, crop or sampling finds no entry instead of a stale one. A
shard whose bytes do not match its manifest's SHA-256 is never used: it is rebuilt (and rewritten) by whoever
reads it. The manifest is written after the shard, so a manifest always describes a complete shard.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lorasweep_trainer import sampling, storage
from lorasweep_trainer.data import Sample, Split
from lorasweep_trainer.decode import CorruptClip, DecodePool, FrameRequest, train_seed
from lorasweep_trainer.telemetry import Telemetry

log = logging.getLogger(__name__)

SCHEMA = "lorasweep.cache/v1"
CHUNK_CLIPS = 64
EVAL_PART = "eval"
TENSOR = "inputs"
Kind = Literal["frames", "features"]
SAMPLER_DIGEST = hashlib.sha256(inspect.getsource(sampling).encode()).hexdigest()[:16]


def train_part(seed: int, epoch: int) -> str:
    return f"train-seed{seed}-epoch{epoch}"


@dataclass(frozen=True)
class Item:
    """One clip with one frame request: a row of a shard."""

    sample: Sample
    etag: str
    size: int
    request: FrameRequest

    def key_material(self) -> list[Any]:
        return [self.sample.uri, self.etag, self.size, self.sample.label, self.request.train_seed]


@dataclass(frozen=True)
class ShardSpec:
    """What one shard holds; `key` names it. ``context`` is the processor/encoder identity (see module doc)."""

    kind: Kind
    part: str
    chunk: int
    items: tuple[Item, ...]
    context: tuple[tuple[str, str], ...]

    @cached_property
    def key(self) -> str:
        material = {
            "schema": SCHEMA,
            "kind": self.kind,
            "part": self.part,
            "chunk": self.chunk,
            "context": dict(self.context),
            "items": [item.key_material() for item in self.items],
        }
        return storage.content_key(material)

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.part}-{self.chunk:03d}-{self.key[:24]}"


@dataclass
class Shard:
    """A shard's content: the rows of the clips that decoded, and the clips that did not (uri -> error)."""

    uris: list[str]
    inputs: torch.Tensor
    corrupt: dict[str, str] = field(default_factory=dict)
    encoder_ms_per_video: float | None = None

    def rows(self) -> dict[str, torch.Tensor]:
        return {uri: self.inputs[i] for i, uri in enumerate(self.uris)}


@dataclass
class CacheStats:
    """What the cache did, for metrics.json, the preparation's summary and the benchmarks."""

    hits: int = 0
    built: int = 0
    rejected: int = 0  # failed the checksum (or unreadable): rebuilt, never used
    decodes: int = 0
    encoder_forwards: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def chunks(items: Sequence[Item], size: int = CHUNK_CLIPS) -> list[tuple[Item, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)] or [()]


def eval_items(split: Split, etags: Mapping[str, tuple[str, int]]) -> list[Item]:
    return [Item(s, *etags[s.uri], FrameRequest()) for s in [*split.val, *split.test]]


def train_items(split: Split, etags: Mapping[str, tuple[str, int]], seed: int, epoch: int) -> list[Item]:
    return [Item(s, *etags[s.uri], FrameRequest(train_seed(seed, epoch, s.uri))) for s in split.train]


def part_specs(kind: Kind, part: str, items: Sequence[Item], context: Mapping[str, str]) -> list[ShardSpec]:
    frozen = tuple(sorted(context.items()))
    return [ShardSpec(kind, part, i, chunk, frozen) for i, chunk in enumerate(chunks(items))]


def frames_context(processor: Any, frames_per_clip: int) -> dict[str, str]:
    settings = json.dumps(processor.to_dict(), sort_keys=True, default=str)
    return {
        "frames_per_clip": str(frames_per_clip),
        "processor": hashlib.sha256(settings.encode()).hexdigest(),
        "sampler": SAMPLER_DIGEST,
    }


def features_context(frames: Mapping[str, str], encoder_digest: str, precision: str) -> dict[str, str]:
    return {**frames, "encoder": encoder_digest, "precision": precision}


def encoder_digest(encoder: torch.nn.Module) -> str:
    """SHA-256 of the encoder's weights and buffers: the model identity that works for hub names, revisions,
    local folders and seeded presets alike."""
    return tensors_digest(encoder.state_dict())


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy())  # its buffer, not a copy
    return digest.hexdigest()


# --- storage ------------------------------------------------------------------------------------------------


class ShardStore:
    """Shards and manifests under the cache root (an ``s3://`` prefix or a folder); with ``telemetry``, the
    shards read from S3 count in the trainer's S3 counters like the clips a streaming trial reads."""

    def __init__(self, root: str, telemetry: Telemetry | None = None) -> None:
        self.root = root
        self.telemetry = telemetry

    def _read(self, uri: str) -> bytes | None:
        started = time.perf_counter()
        data = storage.read_bytes_if_exists(uri)
        if data is not None and self.telemetry is not None and storage.is_s3(uri):
            self.telemetry.s3_read_seconds.inc(time.perf_counter() - started)
            self.telemetry.s3_read_bytes.inc(len(data))
        return data

    def _uri(self, spec: ShardSpec, suffix: str) -> str:
        return storage.join(self.root, spec.name + suffix)

    def load(self, spec: ShardSpec, stats: CacheStats) -> Shard | None:
        """The shard, or None when it is absent or fails its checksum (then it must be rebuilt)."""
        raw = self._read(self._uri(spec, ".json"))
        if raw is None:
            return None
        data = self._read(self._uri(spec, ".safetensors")) or b""
        try:
            manifest = json.loads(raw)
        except ValueError:
            manifest = {}
        expected = (manifest.get("schema"), manifest.get("key"), manifest.get("sha256"))
        if expected != (SCHEMA, spec.key, hashlib.sha256(data).hexdigest()):
            log.warning("cache shard failed its checksum, rebuilding shard=%s bytes=%d", spec.name, len(data))
            stats.rejected += 1
            return None
        stats.hits += 1
        return Shard(
            uris=list(manifest["uris"]),
            inputs=load_safetensors(data)[TENSOR] if manifest["uris"] else torch.empty(0),
            corrupt=dict(manifest.get("corrupt", {})),
            encoder_ms_per_video=manifest.get("encoder_ms_per_video"),
        )

    def save(self, spec: ShardSpec, shard: Shard) -> None:
        data = save_safetensors({TENSOR: shard.inputs.contiguous()}) if shard.uris else b""
        storage.write_bytes(self._uri(spec, ".safetensors"), data)
        manifest = {
            "schema": SCHEMA,
            "key": spec.key,
            "kind": spec.kind,
            "part": spec.part,
            "chunk": spec.chunk,
            "context": dict(spec.context),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "uris": shard.uris,
            "frame_requests": [item.request.train_seed for item in spec.items if item.sample.uri in shard.uris],
            "corrupt": shard.corrupt,
            "shape": list(shard.inputs.shape),
            "dtype": str(shard.inputs.dtype),
            "encoder_ms_per_video": shard.encoder_ms_per_video,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        storage.write_bytes(self._uri(spec, ".json"), json.dumps(manifest, indent=1).encode(), "application/json")


# --- building -----------------------------------------------------------------------------------------------

Encoder = Callable[[torch.Tensor], torch.Tensor]  # normalised pixels (B, T, C, H, W) -> features (B, N, D)


@dataclass
class Builder:
    """Builds shards from the source clips: each clip fetched and decoded once for all the shards asked for."""

    processor: Any
    frames_per_clip: int
    decoder: DecodePool
    encoders: Mapping[str, Encoder] = field(default_factory=dict)  # encoder digest -> encode
    fetch_threads: int = 4
    encode_batch_size: int = 16
    on_corrupt: Callable[[str, str], None] = lambda uri, error: None
    telemetry: Telemetry | None = None  # decode seconds, as a streaming trial counts them

    def crop(self, frames: Any) -> torch.Tensor:
        """Decoded frames -> the processor's resized, centre-cropped uint8 (T, C, H, W)."""
        out = self.processor(videos=frames, do_rescale=False, do_normalize=False, return_tensors="pt")
        return out["pixel_values_videos"][0]

    def build(self, specs: Sequence[ShardSpec], stats: CacheStats) -> dict[str, Shard]:
        """Every shard of ``specs`` by key; clips are decoded once across all of them (one `decode_clip` each)."""
        requests: dict[str, list[FrameRequest]] = {}
        sources: dict[str, Item] = {}
        for spec in specs:
            for item in spec.items:
                wanted = requests.setdefault(item.sample.uri, [])
                if item.request not in wanted:
                    wanted.append(item.request)
                sources.setdefault(item.sample.uri, item)
        cropped: dict[tuple[str, FrameRequest], torch.Tensor] = {}
        corrupt: dict[str, str] = {}

        def load(uri: str) -> None:
            data = storage.read_bytes(uri)
            started = time.perf_counter()
            try:
                decoded = self.decoder.decode(data, requests[uri], self.frames_per_clip, _short_side(self.processor))
            except CorruptClip as error:
                corrupt[uri] = str(error)
                self.on_corrupt(uri, str(error))
                return
            for request, frames in zip(requests[uri], decoded, strict=True):
                cropped[(uri, request)] = self.crop(frames)
            if self.telemetry is not None:
                self.telemetry.decode_seconds.inc(time.perf_counter() - started)

        with ThreadPoolExecutor(max_workers=self.fetch_threads, thread_name_prefix="cache-fetch") as pool:
            list(pool.map(load, list(requests)))
        stats.decodes += len(requests)

        shards: dict[str, Shard] = {}
        for spec in specs:
            rows = [item for item in spec.items if item.sample.uri not in corrupt]
            frames = [cropped[(item.sample.uri, item.request)] for item in rows]
            uris = [item.sample.uri for item in rows]
            mine = {item.sample.uri: corrupt[item.sample.uri] for item in spec.items if item.sample.uri in corrupt}
            if spec.kind == "frames":
                inputs = torch.stack(frames) if frames else torch.empty(0, dtype=torch.uint8)
                shards[spec.key] = Shard(uris, inputs, mine)
                continue
            encode = self.encoders[dict(spec.context)["encoder"]]
            shard = Shard(uris, self.encode(encode, frames, stats), mine)
            if spec.part == EVAL_PART and spec.chunk == 0 and frames:
                shard.encoder_ms_per_video = encoder_ms_per_video(
                    encode, [normalize(self.processor, f) for f in frames]
                )
            shards[spec.key] = shard
        stats.built += len(specs)
        return shards

    def encode(self, encode: Encoder, frames: Sequence[torch.Tensor], stats: CacheStats) -> torch.Tensor:
        outputs = []
        for i in range(0, len(frames), self.encode_batch_size):
            batch = torch.stack([normalize(self.processor, f) for f in frames[i : i + self.encode_batch_size]])
            outputs.append(encode(batch).to("cpu"))
            stats.encoder_forwards += len(batch)
        return torch.cat(outputs) if outputs else torch.empty(0)


def _short_side(processor: Any) -> int | None:
    shortest: int | None = (getattr(processor, "size", None) or {}).get("shortest_edge")
    return shortest


def normalize(processor: Any, cropped: torch.Tensor) -> torch.Tensor:
    """uint8 (T, C, H, W) from `Builder.crop` -> the processor's float output, bit for bit."""
    out = processor(videos=cropped, do_resize=False, do_center_crop=False, return_tensors="pt")
    tensor: torch.Tensor = out["pixel_values_videos"][0]
    return tensor


# Timing the encoder once per sweep (batch 1, after a warm-up) instead of in every trial: it is the same frozen
# encoder for all of them, and each trial adds its own pooler + head time.
ENCODER_TIMING_CLIPS = 8


@torch.no_grad()
def encoder_ms_per_video(encode: Encoder, pixel_values: Sequence[torch.Tensor]) -> float:
    clips = list(pixel_values[:ENCODER_TIMING_CLIPS])
    encode(clips[0].unsqueeze(0))
    started = time.perf_counter()
    for clip in clips:
        encode(clip.unsqueeze(0))
    return 1000.0 * (time.perf_counter() - started) / len(clips)


def ensure(
    store: ShardStore, builder: Builder, specs: Iterable[ShardSpec], stats: CacheStats, keep: bool = True
) -> dict[str, Shard]:
    """Load every shard that verifies, build (and save) the others, grouped so each clip is decoded once."""
    found: dict[str, Shard] = {}
    missing: dict[tuple[str, ...], list[ShardSpec]] = {}
    for spec in {spec.key: spec for spec in specs}.values():
        shard = store.load(spec, stats)
        if shard is not None:
            if keep:
                found[spec.key] = shard
            continue
        clips = tuple(sorted({item.sample.uri for item in spec.items}))
        missing.setdefault(clips, []).append(spec)
    for group in missing.values():
        built = builder.build(group, stats)
        for spec in group:
            store.save(spec, built[spec.key])
        if keep:
            found.update(built)
    return found
