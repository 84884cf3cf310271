"""``lorasweep-trainer bench``: throughput numbers, printed, never asserted.

1. Data path, per clip size (synthetic 1920x1080 clips like NTU's, and small 64x48 clips), against a moto S3
   server it starts on loopback, with this process pinned to one CPU core and torch on one thread:
   S3 GET only; GET + decord decode of 8 frames at full size, and scaled while decoding to the processor's
   resize size (what the trainer does); GET + decode + V-JEPA2 preprocessing (the trainer's ClipLoader with one
   I/O thread, crop 256).
2. Tiny-model training steps per second on CPU (batch 1, LoRA defaults, data already in memory), on one
   thread and on every available core.
3. Where CUDA is present (or on CPU in fp32 with ``--vitl-cpu``): the ViT-L preset (random weights, 4 classes, LoRA rank 16) in bf16 autocast at batch 1
   with 8 frames of 256 px: forward ms per clip (no grad) and the time of one training step (forward, backward,
   AdamW step), both synchronised, after warm-up.
4. Model weights as a sweep shares them (``--weights-preset``, default the ViT-L shape, ~1.5 GB in fp32): a
   ``save_pretrained`` folder in the moto server fetched once by the preparation into the cache (copied and
   hashed), then a trial's download with every SHA-256 checked, the same with the files already on its disk,
   ``from_pretrained`` of the local copy, and the digests a trial takes: the encoder's (its feature shards' key)
   and, given that, the base's that its adapter records.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

from lorasweep_trainer import cache, sampling, storage, weights
from lorasweep_trainer import model as modeling
from lorasweep_trainer.config import LoraConfig, ModelConfig
from lorasweep_trainer.data import Sample
from lorasweep_trainer.decode import decode
from lorasweep_trainer.evaluate import autocast
from lorasweep_trainer.synth import SynthSpec, write_dataset
from lorasweep_trainer.telemetry import Telemetry
from lorasweep_trainer.video import ClipLoader

FRAMES = 8
T = TypeVar("T")
CLASSES = ["sit_down", "stand_up", "waving", "other"]


@contextmanager
def one_core() -> Iterator[str]:
    """Pin this process to one CPU and torch to one thread (the moto server, a separate process, is not pinned)."""
    affinity = os.sched_getaffinity(0)
    threads = torch.get_num_threads()
    core = min(affinity)
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    try:
        yield f"core {core}"
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)


def show(what: str, value: str) -> None:
    print(f"  {what:<48} {value}")


def clocked(work: Callable[[], T]) -> tuple[float, T]:
    began = time.perf_counter()
    result = work()
    return time.perf_counter() - began, result


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.2f} clips/s ({1000 * seconds / count:8.1f} ms/clip)"


def bench_data(label: str, spec: SynthSpec, bucket: str) -> None:
    prefix = f"s3://{bucket}/{label}/"
    started = time.perf_counter()
    uris = write_dataset(spec, prefix)
    made = time.perf_counter() - started
    size = sum(item.size for item in storage.list_objects(prefix)) / len(uris)
    print(
        f"\n[{label}] {len(uris)} clips {spec.width}x{spec.height}, {spec.frames} frames, {size / 1e6:.2f} MB/clip (written in {made:.1f}s)"
    )
    processor = modeling.build_processor(modeling.preset_config("vjepa2-vitl-256", len(CLASSES), FRAMES))
    with one_core() as where:
        storage.read_bytes(uris[0])  # connection set-up is not throughput

        def timed(work: Callable[[str], object]) -> float:
            began = time.perf_counter()
            for uri in uris:
                work(uri)
            return time.perf_counter() - began

        get = timed(storage.read_bytes)
        show(f"S3 GET only ({where})", f"{rate(len(uris), get)}  {len(uris) * size / get / 1e6:7.1f} MB/s")
        get_decode = timed(lambda uri: decode(storage.read_bytes(uri), lambda n: sampling.eval_indices(n, FRAMES)))
        show(f"S3 GET + decode {FRAMES} frames, full size ({where})", rate(len(uris), get_decode))
        short_side = processor.size["shortest_edge"]
        get_decode = timed(
            lambda uri: decode(storage.read_bytes(uri), lambda n: sampling.eval_indices(n, FRAMES), short_side)
        )
        show(f"S3 GET + decode {FRAMES} frames to {short_side}p ({where})", rate(len(uris), get_decode))
        loader = ClipLoader(processor, FRAMES, Telemetry("bench", "bench", label), prefetch=1, io_threads=1)
        began = time.perf_counter()
        loaded = sum(1 for clip in loader.iterate([Sample(uri, 0) for uri in uris], "bench") if clip.inputs is not None)
        full = time.perf_counter() - began
        loader.close()
        show(f"S3 GET + decode + preprocess to 256 ({where})", rate(loaded, full))


def bench_tiny_training(steps: int) -> None:
    cfg = ModelConfig(preset="tiny", frames_per_clip=FRAMES)
    base = modeling.build_base_model(cfg, CLASSES, seed=0)
    model = modeling.apply_lora(base, LoraConfig())
    crop = base.config.crop_size
    optimizer = torch.optim.AdamW(modeling.trainable_parameters(model), lr=1e-3)
    pixel_values = torch.randn(1, FRAMES, 3, crop, crop)
    labels = torch.tensor([1])
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(pixel_values_videos=pixel_values).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def measure() -> float:
        for _ in range(3):
            step()
        began = time.perf_counter()
        for _ in range(steps):
            step()
        return steps / (time.perf_counter() - began)

    print(
        f"\n[tiny model training on CPU] batch 1, {FRAMES} frames {crop}px, {modeling.count_parameters(model, True)} trainable parameters"
    )
    with one_core() as where:
        print(f"  training steps/s ({where}, 1 thread): {measure():8.1f}")
    print(f"  training steps/s ({torch.get_num_threads()} threads):      {measure():8.1f}")


def bench_vitl(device: torch.device, iterations: int) -> None:
    cfg = ModelConfig(preset="vjepa2-vitl-256", frames_per_clip=FRAMES)
    base = modeling.build_base_model(cfg, CLASSES, seed=0, device=device)
    model = modeling.apply_lora(base, LoraConfig(rank=16, alpha=32))
    optimizer = torch.optim.AdamW(modeling.trainable_parameters(model), lr=2e-4)
    pixel_values = torch.randn(1, FRAMES, 3, 256, 256, device=device)
    labels = torch.tensor([1], device=device)

    def forward() -> None:
        with torch.no_grad(), autocast(device):
            model(pixel_values_videos=pixel_values)

    def train_step() -> None:
        with autocast(device):
            logits = model(pixel_values_videos=pixel_values).logits.float()
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def measure(work: Callable[[], None]) -> float:
        for _ in range(3 if device.type == "cuda" else 1):
            work()
        sync()
        began = time.perf_counter()
        for _ in range(iterations):
            work()
        sync()
        return 1000 * (time.perf_counter() - began) / iterations

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"\n[ViT-L on {where}] {precision}, batch 1, {FRAMES} frames 256px, LoRA r16")
    model.eval()
    print(f"  forward ms per clip:      {measure(forward):8.1f}")
    model.train()
    print(f"  training step ms (bs 1):  {measure(train_step):8.1f}")
    if device.type == "cuda":
        print(f"  peak GPU memory:          {torch.cuda.max_memory_allocated(device) / 2**30:8.2f} GiB")


def bench_weights(preset: str, bucket: str) -> None:
    """What sharing the weights costs a sweep: the preparation once, then each trial (`weights.locate`)."""
    with tempfile.TemporaryDirectory(prefix="lorasweep-bench-weights-") as scratch:
        folder = os.path.join(scratch, "checkpoint")
        modeling.build_base_model(ModelConfig(preset=preset, frames_per_clip=FRAMES), CLASSES, 0).save_pretrained(
            folder
        )
        source = f"s3://{bucket}/models/{preset}/"
        storage.upload_folder(Path(folder), source)
        model = ModelConfig(source=source, frames_per_clip=FRAMES)
        # Each pod has its own disk: were the trial's the preparation's, its "download" would find the files there.
        os.environ[weights.MODEL_DIR_ENV] = os.path.join(scratch, "preparation")
        prepared, (pinned, located) = clocked(lambda: weights.prepare(model, f"s3://{bucket}/cache/"))
        os.environ[weights.MODEL_DIR_ENV] = os.path.join(scratch, "trial")
        size = located.stats.total_bytes
        print(f"\n[weights: {preset}] {located.stats.files} files, {size / 1e6:.1f} MB, from {source}")

        def throughput(seconds: float, fetched: int) -> str:
            return f"{seconds:7.2f} s  {size / seconds / 1e6:7.1f} MB/s  {fetched / 1e6:8.1f} MB fetched"

        show("preparation: copy into the cache, hashed", throughput(prepared, located.stats.bytes_fetched))
        downloaded, trial = clocked(lambda: weights.locate(model, pinned))
        show("trial: download from the cache, SHA-256 checked", throughput(downloaded, trial.stats.bytes_fetched))
        verified, trial = clocked(lambda: weights.locate(model, pinned))
        show("trial: files already on its disk, re-verified", throughput(verified, trial.stats.bytes_fetched))
        loaded, base = clocked(lambda: modeling.build_base_model(model, CLASSES, 0, path=trial.path))
        show("from_pretrained of the local copy", f"{loaded:7.2f} s")
        encoded, encoder = clocked(lambda: cache.encoder_digest(base.vjepa2.encoder))
        show("encoder digest (the feature shards' key)", f"{encoded:7.2f} s")
        digested, _ = clocked(lambda: modeling.base_digest(base, encoder))
        show("base digest given the encoder's (the adapter's)", f"{digested:7.2f} s")


def run_bench(args: argparse.Namespace) -> int:
    from lorasweep_trainer.motoserver import MotoServer

    print(
        f"lorasweep-trainer bench: torch {torch.__version__}, {os.cpu_count()} CPUs, CUDA {'yes' if torch.cuda.is_available() else 'no'}"
    )
    with MotoServer() as server:
        os.environ.update(server.env)
        storage.reset_client()
        bucket = "lorasweep-bench"
        server.client().create_bucket(Bucket=bucket)
        bench_data(
            "1920x1080",
            SynthSpec(
                actions=(8,), clips_per_action=args.large_clips, width=1920, height=1080, frames=args.large_frames
            ),
            bucket,
        )
        bench_data(
            "64x48", SynthSpec(actions=(8,), clips_per_action=args.small_clips, width=64, height=48, frames=16), bucket
        )
        if args.weights_preset != "none":
            bench_weights(args.weights_preset, bucket)
        storage.reset_client()
    bench_tiny_training(args.steps)
    if torch.cuda.is_available():
        bench_vitl(torch.device("cuda"), args.gpu_iterations)
    elif args.vitl_cpu:
        bench_vitl(torch.device("cpu"), 1)
    else:
        print("\n[ViT-L] skipped: no CUDA device visible (--vitl-cpu times one fp32 iteration on CPU)")
    return 0
