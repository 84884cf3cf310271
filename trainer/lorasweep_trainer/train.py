"""One trial, top to bottom: model, optimizer, data, scheduler, the epochs, the test, the artifacts.

Choices worth knowing:
- One seed (``TrialConfig.seed``) seeds python, numpy and torch, the preset weights, the training order and
  the training frame sampler. The dataset's own seed (``dataset.seed``) picks and splits the clips, so every
  trial of a sweep sees the same split.
- Learning rate: linear warmup from 0 over ``warmup_fraction`` of the optimizer steps, then cosine decay to 0
  (``scheduler: cosine``) or the peak rate held (``scheduler: constant``).
- Gradient accumulation: each micro-batch's loss is divided by ``gradient_accumulation_steps``; an epoch's last,
  incomplete group still takes an optimizer step.
- ``train_accuracy`` of an epoch is the running accuracy over that epoch's training batches (train mode).
- The best epoch is the one with the highest validation accuracy (ties go to the earlier epoch); its LoRA and
  classifier weights are kept in memory and the test split is evaluated once, with them.
- Corrupt clips are skipped and listed; once more than ``dataset.maxCorruptFraction`` of the selected clips are
  corrupt the trial stops with a DatasetError (exit 3).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from lorasweep_trainer import cache, data, evaluate, storage, tracking, weights
from lorasweep_trainer import model as modeling
from lorasweep_trainer.config import WORK_DIR_ENV, ConfigError, DatasetConfig, TrialConfig
from lorasweep_trainer.decode import DecodePool
from lorasweep_trainer.pack import recorded_result, sweep_uid
from lorasweep_trainer.progress import report_epoch
from lorasweep_trainer.results import (
    ADAPTER_FOLDER,
    ADAPTER_INFO_FILE,
    EVENT_LOG,
    METRICS_FILE,
    AdapterBase,
    AdapterInfo,
    DatasetSizes,
    EpochMetrics,
    FeatureCacheUse,
    ModelLoad,
    TrialMetrics,
    TrialParams,
)
from lorasweep_trainer.telemetry import Telemetry
from lorasweep_trainer.video import ClipLoader, LoadedClip, batches

log = logging.getLogger(__name__)

GIT_COMMIT_ENV = "LORASWEEP_GIT_COMMIT"
INFERENCE_TIMING_CLIPS = 32
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_JSON = "confusion_matrix.json"


class EventLog:
    """train.jsonl: one JSON object per line, one line per event (step, epoch, test, corrupt clip)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


@dataclass
class CorruptClips:
    """Corrupt clips seen so far; past ``max_fraction`` of the ``selected`` clips the dataset is unusable."""

    selected: int
    max_fraction: float
    events: EventLog
    uris: list[str] = field(default_factory=list)

    def add(self, clip: LoadedClip) -> None:
        if clip.sample.uri in self.uris:
            return
        self.uris.append(clip.sample.uri)
        self.events.write("corrupt_clip", uri=clip.sample.uri, error=clip.error)
        if len(self.uris) > self.max_fraction * self.selected:
            raise data.DatasetError(
                f"{len(self.uris)} of {self.selected} selected clips are corrupt, more than "
                f"dataset.maxCorruptFraction={self.max_fraction:g}; first: {self.uris[:3]}"
            )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device: auto or cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    if commit := os.environ.get(GIT_COMMIT_ENV):
        return commit
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def plan_split(dataset: DatasetConfig) -> tuple[data.Split, dict[str, tuple[str, int]]]:
    """List the source, map clips to classes, select ``videos_per_class`` each and split (dataset.seed); with
    every listed object's (ETag, size), what the cache keys a clip's content by."""
    try:
        objects = storage.list_objects(dataset.source)
    except FileNotFoundError as error:
        raise data.DatasetError(str(error)) from error
    clips = data.ntu_clips((item.uri, item.name) for item in objects)
    grouped = data.clips_by_class(clips, dataset.classes)
    selected = data.select(grouped, dataset.videos_per_class, dataset.seed, dataset.source)
    return data.split(selected, dataset.split, dataset.seed), {item.uri: (item.etag, item.size) for item in objects}


@dataclass
class TrialInputs:
    """Where a trial's model inputs come from and how the model consumes them: streamed clips through the full
    model, or the sweep's cache (decoded frames through the full model, or encoder features through the pooler
    and head only)."""

    train: Callable[[list[data.Sample], int], Iterator[LoadedClip]]  # (clips in order, epoch)
    evaluate: Callable[[list[data.Sample], str], Iterator[LoadedClip]]  # (clips, split name)
    forward: Callable[[torch.Tensor], torch.Tensor]  # a batch of inputs -> logits
    feature_cache: FeatureCacheUse
    close: Callable[[], None]
    stats: cache.CacheStats = field(default_factory=cache.CacheStats)
    encoder_ms_per_video: float = 0.0  # features: the encoder's share of inference, timed once by the preparation
    timing_clips: int = INFERENCE_TIMING_CLIPS  # features: the head is timed on as many clips as the encoder was


def streamed_inputs(cfg: TrialConfig, model: PeftModel, loader: ClipLoader, reason: str) -> TrialInputs:
    return TrialInputs(
        train=lambda samples, epoch: loader.iterate(samples, "train", train_seed=f"{cfg.seed}:{epoch}"),
        evaluate=lambda samples, split: loader.iterate(samples, split),
        forward=lambda pixels: model(pixel_values_videos=pixels).logits,
        feature_cache=FeatureCacheUse(used=False, reason=reason),
        close=loader.close,
    )


def cached_inputs(
    cfg: TrialConfig,
    model: PeftModel,
    encoder_digest: str,
    processor: Any,
    split: data.Split,
    etags: dict[str, tuple[str, int]],
    device: torch.device,
    telemetry: Telemetry,
) -> TrialInputs:
    """The trial's shards (computed from its own config and model, so a stale entry is never found); a shard
    that is missing or fails its checksum is built here from the source clips and saved for the next trial.
    ``encoder_digest``: the base's `cache.encoder_digest`, the same with LoRA on as long as LoRA leaves the
    encoder alone, which cached features need anyway."""
    assert cfg.cache is not None
    base = model.get_base_model()
    blocker = modeling.feature_cache_blocker(base, cfg.training.lora) if cfg.cache.features else None
    features = cfg.cache.features and blocker is None
    frames_context = cache.frames_context(processor, cfg.model.frames_per_clip)
    context = frames_context
    if features:
        context = cache.features_context(frames_context, encoder_digest, precision(device))
    decoder = DecodePool(cfg.io_threads)
    builder = cache.Builder(
        processor,
        cfg.model.frames_per_clip,
        decoder,
        encoders={context.get("encoder", ""): modeling.encoder_features(base, device)},
        fetch_threads=cfg.io_threads,
        telemetry=telemetry,
    )
    store = cache.ShardStore(cfg.cache.uri, telemetry)
    kind: cache.Kind = "features" if features else "frames"
    stats = cache.CacheStats()

    rows: dict[str, dict[str, torch.Tensor]] = {}  # part -> clip URI -> its frames or features
    undecodable: dict[str, str] = {}  # clip URI -> why the shard has no row for it

    def load_part(name: str, items: list[cache.Item]) -> float | None:
        specs = cache.part_specs(kind, name, items, context)
        shards = cache.ensure(store, builder, specs, stats)
        rows[name] = {}
        for spec in specs:
            rows[name].update(shards[spec.key].rows())
            undecodable.update(shards[spec.key].corrupt)
        return shards[specs[0].key].encoder_ms_per_video

    def clips(samples: list[data.Sample], name: str, split: str) -> Iterator[LoadedClip]:
        # Counted as a streaming trial counts its clips, so the dashboards read the same either way.
        for sample in samples:
            row = rows[name].get(sample.uri)
            if row is None:
                telemetry.decode_failures(split).inc()
                yield LoadedClip(sample, None, undecodable.get(sample.uri, "not in the cache shard"))
            else:
                telemetry.clips_read(split).inc()
                yield LoadedClip(sample, row if features else cache.normalize(processor, row))

    def train_clips(samples: list[data.Sample], epoch: int) -> Iterator[LoadedClip]:
        rows.pop(cache.train_part(cfg.seed, epoch - 1), None)  # one epoch's rows in memory at a time
        name = cache.train_part(cfg.seed, epoch)
        load_part(name, cache.train_items(split, etags, cfg.seed, epoch))
        return clips(samples, name, "train")

    encoder_ms = load_part(cache.EVAL_PART, cache.eval_items(split, etags))
    head = modeling.head_logits(model)
    reason = cfg.cache.reason if features else (blocker or cfg.cache.reason or "featureCache is off")
    log.info("trial inputs from the cache kind=%s uri=%s reason=%s", kind, cfg.cache.uri, reason)
    return TrialInputs(
        train=train_clips,
        evaluate=lambda samples, split_name: clips(samples, cache.EVAL_PART, split_name),
        forward=head if features else (lambda pixels: model(pixel_values_videos=pixels).logits),
        feature_cache=FeatureCacheUse(used=features, reason=reason),
        close=decoder.close,
        stats=stats,
        encoder_ms_per_video=(encoder_ms or 0.0) if features else 0.0,
        timing_clips=cache.ENCODER_TIMING_CLIPS if features else INFERENCE_TIMING_CLIPS,
    )


def precision(device: torch.device) -> str:
    """What the encoder computes in: bf16 under CUDA autocast, fp32 on CPU (`evaluate.autocast`)."""
    return "bf16" if device.type == "cuda" else "fp32"


def lr_lambda(total_steps: int, warmup_fraction: float, schedule: str) -> Callable[[int], float]:
    warmup = math.ceil(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        # LambdaLR calls this with the number of steps taken; step + 1 is the step about to be taken.
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def load_base_model(cfg: TrialConfig, classes: list[str]) -> tuple[Any, ModelLoad | None]:
    """The base model and where it came from: a preset built from the seed, or the weights the preparation
    fetched (`weights.locate`: verified local files, never the hub when the sweep names storage or a volume)."""
    if not cfg.model.fetched:
        return modeling.build_base_model(cfg.model, classes, cfg.seed), None
    located = weights.locate(cfg.model, cfg.weights)
    started = time.perf_counter()
    base = modeling.build_base_model(cfg.model, classes, cfg.seed, path=located.path)
    load_seconds = time.perf_counter() - started
    # Without a preparation, a hub model's commit is the one from_pretrained resolved.
    revision = located.revision or getattr(base.config, "_commit_hash", None) or cfg.model.revision
    stats = located.stats
    log.info(
        "model loaded source=%s revision=%s path=%s files=%d bytes=%d fetched=%d fetch_s=%.2f load_s=%.2f",
        cfg.model.source, revision, located.path, stats.files, stats.total_bytes, stats.bytes_fetched, stats.seconds,
        load_seconds,
    )  # fmt: skip
    return base, ModelLoad(
        source=cfg.model.source,
        revision=revision,
        path=located.path or cfg.model.source,
        files=stats.files,
        bytes=stats.total_bytes,
        bytes_fetched=stats.bytes_fetched,
        fetch_seconds=stats.seconds,
        load_seconds=round(load_seconds, 3),
    )


def run_trial(cfg: TrialConfig, work: Path, run: tracking.TrialRun | None = None) -> TrialMetrics:
    """Train, evaluate and write every artifact under ``work`` (then `publish` copies them to the output);
    ``run``: the trial's MLflow run (spec.tracking), made here when not given."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    classes = cfg.dataset.class_names
    telemetry = Telemetry(cfg.namespace, cfg.sweep, cfg.trial)
    telemetry.serve(cfg.metrics_port)
    run = run if run is not None else tracking.TrialRun(cfg, git_commit() if cfg.tracking else "")
    run.count_with(telemetry.mlflow_failure, telemetry.mlflow_dropped)
    run.start()
    events = EventLog(work / EVENT_LOG)
    training = cfg.training

    # Model: the base (from the folder the preparation fetched and verified), then LoRA (the only trainable
    # weights) on top.
    base, model_load = load_base_model(cfg, classes)
    base_name, base_revision = modeling.base_reference(cfg.model, cfg.seed, base, cfg.weights)
    # Taken before LoRA goes on: the adapter's base record and, when the encoder stays frozen, the key of its
    # feature shards.
    encoder_digest = cache.encoder_digest(base.vjepa2.encoder)
    adapter_base = AdapterBase(
        name_or_path=base_name,
        revision=base_revision,
        preset=cfg.model.preset,
        seed=cfg.seed,
        digest=modeling.base_digest(base, encoder_digest),
    )
    total_parameters = modeling.count_parameters(base)
    model = modeling.apply_lora(base, training.lora).to(device)
    trainable_parameters = modeling.count_parameters(model, trainable_only=True)
    processor = modeling.build_processor(base.config)
    log.info("model ready trainable=%d total=%d device=%s", trainable_parameters, total_parameters, device)

    # Optimizer
    optimizer = torch.optim.AdamW(
        modeling.trainable_parameters(model), lr=training.learning_rate, weight_decay=training.weight_decay
    )

    # Data
    split, etags = plan_split(cfg.dataset)
    selected = len(split.train) + len(split.val) + len(split.test)
    corrupt = CorruptClips(selected, cfg.dataset.max_corrupt_fraction, events)
    if cfg.cache is None:
        loader = ClipLoader(processor, cfg.model.frames_per_clip, telemetry, cfg.prefetch, cfg.io_threads)
        inputs = streamed_inputs(cfg, model, loader, "no cache: the trial was started without a preparation step")
    else:
        inputs = cached_inputs(cfg, model, encoder_digest, processor, split, etags, device, telemetry)
    log.info("feature cache used=%s reason=%s", inputs.feature_cache.used, inputs.feature_cache.reason)
    events.write("dataset", classes=classes, train=len(split.train), val=len(split.val), test=len(split.test))

    def usable(samples: list[data.Sample]) -> list[data.Sample]:
        return [sample for sample in samples if sample.uri not in corrupt.uris]

    # Scheduler
    steps_per_epoch = math.ceil(
        math.ceil(len(split.train) / training.batch_size) / training.gradient_accumulation_steps
    )
    total_steps = steps_per_epoch * training.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, training.warmup_fraction, training.scheduler)
    )

    history: list[EpochMetrics] = []
    best: tuple[int, float, dict[str, torch.Tensor]] | None = None  # (epoch, val accuracy, LoRA state)
    train_started = time.perf_counter()
    step = 0
    try:
        for epoch in range(1, training.epochs + 1):
            telemetry.epoch.set(epoch)
            model.train()
            order = usable(split.train)
            random.Random(f"{cfg.seed}:{epoch}").shuffle(order)
            clips = inputs.train(order, epoch)
            loss_sum, correct, seen, micro_batches = 0.0, 0, 0, 0
            epoch_started = time.perf_counter()
            compute_seconds = 0.0  # step_seconds is compute only; waiting for clips is data_wait_seconds
            for _samples, batch, labels in batches(clips, training.batch_size, corrupt.add):
                began = time.perf_counter()
                labels = labels.to(device)
                with evaluate.autocast(device):
                    logits = inputs.forward(batch.to(device)).float()
                loss = torch.nn.functional.cross_entropy(logits, labels)
                (loss / training.gradient_accumulation_steps).backward()
                loss_sum += loss.item() * len(labels)
                correct += int((logits.argmax(-1) == labels).sum().item())
                seen += len(labels)
                micro_batches += 1
                compute_seconds += time.perf_counter() - began
                if micro_batches % training.gradient_accumulation_steps == 0:
                    step = optimizer_step(optimizer, scheduler, telemetry, events, epoch, step, compute_seconds, loss)
                    compute_seconds = 0.0
            if micro_batches % training.gradient_accumulation_steps:
                step = optimizer_step(optimizer, scheduler, telemetry, events, epoch, step, compute_seconds, loss)
            if seen == 0:
                raise data.DatasetError(f"no training clip of epoch {epoch} could be decoded")
            val_batches = batches(inputs.evaluate(usable(split.val), "val"), training.batch_size, corrupt.add)
            val = evaluate.predict(model, inputs.forward, val_batches, device)
            val_matrix = evaluate.confusion_matrix(val.labels, val.predicted, len(classes))
            record = EpochMetrics(
                epoch=epoch,
                train_loss=loss_sum / seen,
                train_accuracy=correct / seen,
                val_accuracy=val.accuracy,
                val_loss=val.loss,
                val_macro_f1=evaluate.macro_f1(evaluate.per_class(val_matrix, classes)),
            )
            history.append(record)
            telemetry.train_loss.set(record.train_loss)
            telemetry.train_accuracy.set(record.train_accuracy)
            telemetry.val_accuracy.set(record.val_accuracy)
            run.log_epoch(record)  # before report_epoch: a trial stopped at this rung keeps this epoch too
            events.write("epoch", **record.model_dump(), seconds=round(time.perf_counter() - epoch_started, 3))
            report_epoch(cfg, record)
            log.info(
                "epoch done epoch=%d train_loss=%.4f train_acc=%.4f val_acc=%.4f",
                epoch,
                record.train_loss,
                record.train_accuracy,
                record.val_accuracy,
            )
            if best is None or record.val_accuracy > best[1]:
                best = (epoch, record.val_accuracy, modeling.lora_state(model))
        train_seconds = time.perf_counter() - train_started
        assert best is not None

        # Test: once, with the best epoch's adapter.
        best_epoch, _, best_state = best
        modeling.load_lora_state(model, best_state)
        timing_clips: list[torch.Tensor] = []

        def keep_for_timing(clips: Iterator[LoadedClip]) -> Iterator[LoadedClip]:
            for clip in clips:
                if clip.inputs is not None and len(timing_clips) < inputs.timing_clips:
                    timing_clips.append(clip.inputs)
                yield clip

        test_clips = keep_for_timing(inputs.evaluate(usable(split.test), "test"))
        test = evaluate.predict(model, inputs.forward, batches(test_clips, training.batch_size, corrupt.add), device)
        inference_ms = inputs.encoder_ms_per_video + evaluate.inference_ms_per_video(
            model, inputs.forward, timing_clips, device
        )
    finally:
        inputs.close()

    # Artifacts
    best_record = history[best_epoch - 1]
    matrix = evaluate.confusion_matrix(test.labels, test.predicted, len(classes))
    per_class = evaluate.per_class(matrix, classes)
    telemetry.test_accuracy.set(test.accuracy)
    events.write("test", best_epoch=best_epoch, test_accuracy=test.accuracy, inference_ms_per_video=inference_ms)
    commit = git_commit()
    save_adapter(
        model,
        processor,
        work / ADAPTER_FOLDER,
        AdapterInfo(
            sweep=cfg.sweep,
            trial=cfg.trial,
            classes=classes,
            frames_per_clip=cfg.model.frames_per_clip,
            base=adapter_base,
            best_epoch=best_epoch,
            git_commit=commit,
        ),
    )
    (work / CONFUSION_JSON).write_text(
        json.dumps({"classes": classes, "rows": "actual", "columns": "predicted", "matrix": matrix}, indent=2)
    )
    evaluate.confusion_png(
        matrix, classes, f"{cfg.sweep}/{cfg.trial}: test accuracy {test.accuracy:.2%}", work / CONFUSION_PNG
    )
    lora = training.lora
    metrics = TrialMetrics(
        sweep=cfg.sweep,
        trial=cfg.trial,
        group=cfg.group,
        variant=cfg.variant,
        params=TrialParams(
            learning_rate=training.learning_rate,
            lora_rank=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            epochs=training.epochs,
            batch_size=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            weight_decay=training.weight_decay,
            frames_per_clip=cfg.model.frames_per_clip,
            seed=cfg.seed,
        ),
        classes=classes,
        dataset=DatasetSizes(
            videos_per_class=cfg.dataset.videos_per_class,
            train=len(split.train),
            val=len(split.val),
            test=len(split.test),
        ),
        epochs=history,
        best_epoch=best_epoch,
        train_accuracy=best_record.train_accuracy,
        val_accuracy=best_record.val_accuracy,
        val_loss=best_record.val_loss,
        val_macro_f1=best_record.val_macro_f1,
        test_accuracy=test.accuracy,
        per_class=per_class,
        confusion_matrix=matrix,
        trainable_parameters=trainable_parameters,
        total_parameters=total_parameters,
        inference_ms_per_video=inference_ms,
        train_seconds=train_seconds,
        git_commit=commit,
        model=cfg.model_identity.source,
        model_revision=model_load.revision if model_load is not None else None,
        model_load=model_load,
        device=describe_device(device),
        started_at=started_at,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        split=split.keys(),
        corrupt_clips=list(corrupt.uris),
        test_predictions={uri: classes[p] for uri, p in zip(test.uris, test.predicted, strict=True)},
        test_probabilities=dict(zip(test.uris, test.probabilities, strict=True)),
        adapter_uri=storage.join(cfg.output, ADAPTER_FOLDER) + "/",
        feature_cache=inputs.feature_cache,
        cache=inputs.stats.as_dict() if cfg.cache is not None else None,
        sweep_uid=sweep_uid(),
    )
    run.finish(metrics)  # the kept MLflow calls retried once; what failed is counted in metrics.json
    metrics = metrics.model_copy(update={"tracking": run.summary()})
    events.close()
    telemetry.push()
    return metrics


def save_adapter(model: PeftModel, processor: Any, folder: Path, info: AdapterInfo) -> None:
    """peft's adapter files with the base named (adapter_config.json), the video processor, and AdapterInfo:
    everything `lorasweep-trainer predict` and `merge` need, in one folder."""
    modeling.name_adapter_base(model, info.base.name_or_path, info.base.revision)
    # "auto" would ask the hub whether base_model_name_or_path has a config.json (for a text model's resized
    # vocabulary): a request from the pod, and a warning for a preset. A video model has no vocabulary to save.
    model.save_pretrained(str(folder), save_embedding_layers=False)
    processor.save_pretrained(str(folder))
    (folder / ADAPTER_INFO_FILE).write_text(info.to_json(), encoding="utf-8")


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    telemetry: Telemetry,
    events: EventLog,
    epoch: int,
    step: int,
    compute_seconds: float,
    loss: torch.Tensor,
) -> int:
    """Update the weights and the learning rate, then record the step; returns the new step count."""
    began = time.perf_counter()
    learning_rate = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = compute_seconds + time.perf_counter() - began
    telemetry.optimizer_steps.inc()
    telemetry.step_seconds.observe(seconds)
    telemetry.learning_rate.set(learning_rate)
    events.write(
        "step", epoch=epoch, step=step + 1, loss=loss.item(), learning_rate=learning_rate, seconds=round(seconds, 4)
    )
    return step + 1


def publish(work: Path, cfg: TrialConfig, metrics: TrialMetrics) -> tuple[TrialMetrics, str]:
    """Copy the artifacts to the trial's output, then metrics.json (its presence marks a complete trial); returns
    the result that stands and its URI. Another attempt of the trial that finished first (the same trial run twice
    at once) keeps its result: this one's artifacts are not uploaded over it when it is seen in time, and
    metrics.json is written only where none is (a conditional write). One of another sweep object that had the
    same name is replaced."""
    metrics_uri = storage.join(cfg.output, METRICS_FILE)
    if (earlier := recorded_result(cfg)) is not None:
        log.warning("trial finished by another attempt, keeping its result trial=%s metrics=%s", cfg.trial, metrics_uri)
        return earlier
    storage.upload_folder(work, cfg.output)
    data = metrics.to_json().encode()
    if storage.write_bytes(metrics_uri, data, content_type="application/json", if_absent=True):
        return metrics, metrics_uri
    if (earlier := recorded_result(cfg)) is not None:
        log.warning("trial finished by another attempt, keeping its result trial=%s metrics=%s", cfg.trial, metrics_uri)
        return earlier
    storage.write_bytes(metrics_uri, data, content_type="application/json")  # not this sweep's: replaced
    return metrics, metrics_uri


def train(cfg: TrialConfig) -> tuple[TrialMetrics, str]:
    """Run the trial in a scratch folder and publish its artifacts; returns the result that stands (see `publish`)
    and metrics.json's URI."""
    work = Path(tempfile.mkdtemp(prefix=f"lorasweep-{cfg.trial}-", dir=os.environ.get(WORK_DIR_ENV)))
    run = tracking.TrialRun(cfg, git_commit() if cfg.tracking else "")
    try:
        metrics = run_trial(cfg, work, run)
        return publish(work, cfg, metrics)
    except Exception as error:
        run.fail(error)  # FAILED, or KILLED when stopped early; never raises
        keep_event_log(work / EVENT_LOG, cfg.output)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keep_event_log(path: Path, output: str) -> None:
    """A failed trial still leaves its train.jsonl (without metrics.json, the marker of a complete trial)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        storage.write_bytes(storage.join(output, EVENT_LOG), path.read_bytes())
    except Exception as error:  # the trial's own error matters more than this one
        log.warning("event log of a failed trial not kept output=%s error=%s", output, error)
