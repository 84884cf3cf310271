"""A sweep's preparation step (`lorasweep-trainer prepare`): its shared work done once, before its trials.

First the model: fetched once from its source into the cache, or verified in place on a volume, its revision
resolved and pinned (lorasweep_trainer.weights); its summary tells the operator what to give every trial. A sweep
whose trials run a command of the user's own stops there (``shards: false``). Then it lists and splits the dataset exactly as every trial does, then makes sure the cache holds every shard the
sweep's trials will read (`cache`): the evaluation frames of the val and test clips, and the training draw of
each seed and epoch, as decoded frames and/or as the frozen encoder's features. Each clip is fetched and decoded
once for all of them; shards already in the cache that pass their checksum are reused, so a second sweep over
the same data and model (a fromSweep follow-up) recomputes nothing.

Exit codes as for ``train``: 2 invalid configuration (``featureCache: on`` with a model whose encoder is random
while training) or the model unavailable (reason ModelUnavailable), 3 dataset unusable.
"""

from __future__ import annotations

import logging
import time

import torch

from lorasweep_trainer import cache, tracking, weights
from lorasweep_trainer import model as modeling
from lorasweep_trainer.config import ConfigError, PrepareConfig
from lorasweep_trainer.decode import DecodePool
from lorasweep_trainer.results import PrepareSummary
from lorasweep_trainer.train import git_commit, pick_device, plan_split, precision

log = logging.getLogger(__name__)


def prepare(cfg: PrepareConfig) -> PrepareSummary:
    started = time.perf_counter()
    # spec.tracking: the sweep's one MLflow parent run, before any trial starts (tried again at the end on failure).
    parent = None
    if cfg.tracking is not None:
        parent = tracking.ParentLookup(cfg.tracking, cfg.namespace, cfg.sweep, cfg.model, git_commit())
        parent.start()
    fetched, located = weights.prepare(cfg.model, cfg.cache.uri) if cfg.model.fetched else (None, None)
    model_stats = located.stats.as_dict() if located is not None else {}
    if not cfg.shards:
        return PrepareSummary(
            status="Succeeded",
            cache_uri=cfg.cache.uri,
            stats=model_stats,
            seconds=round(time.perf_counter() - started, 3),
            weights=fetched,
            mlflow_parent_run_id=parent.finish() if parent is not None else None,
            mlflow_failures=parent.outbox.failures if parent is not None else 0,
        )
    device = pick_device(cfg.device)
    classes = cfg.dataset.class_names
    split, etags = plan_split(cfg.dataset)

    # The encoder of each seed: fetched weights are the same for every seed (one build), preset weights are drawn
    # from the seed; the weights digest in the features' key tells them apart either way.
    seeds = cfg.seeds if cfg.model.preset is not None else cfg.seeds[:1]
    path = located.path if located is not None else None
    bases = {seed: modeling.build_base_model(cfg.model, classes, seed, path=path).to(device) for seed in seeds}
    processor = modeling.build_processor(next(iter(bases.values())).config)
    frames_context = cache.frames_context(processor, cfg.model.frames_per_clip)
    blocker = modeling.encoder_randomness(next(iter(bases.values())))
    features = cfg.cache.features and blocker is None
    if cfg.cache.features and blocker is not None:
        if cfg.require_features:
            raise ConfigError(f"featureCache: on, but {blocker}; use featureCache: auto or off")
        log.warning("features not cached, decoded frames instead reason=%s", blocker)

    contexts: dict[int, dict[str, str]] = {}
    encoders: dict[str, cache.Encoder] = {}
    for seed, base in bases.items():
        if features:
            digest = cache.encoder_digest(base.vjepa2.encoder)
            contexts[seed] = cache.features_context(frames_context, digest, precision(device))
            encoders[digest] = modeling.encoder_features(base, device)
    specs: list[cache.ShardSpec] = []
    for seed in cfg.seeds:
        context = contexts.get(seed, contexts.get(seeds[0]))
        if features and context is not None:
            specs += cache.part_specs("features", cache.EVAL_PART, cache.eval_items(split, etags), context)
        if cfg.frames or not features:
            specs += cache.part_specs("frames", cache.EVAL_PART, cache.eval_items(split, etags), frames_context)
        for epoch in range(1, cfg.epochs + 1):
            items = cache.train_items(split, etags, seed, epoch)
            if features and context is not None:
                specs += cache.part_specs("features", cache.train_part(seed, epoch), items, context)
            if cfg.frames or not features:
                specs += cache.part_specs("frames", cache.train_part(seed, epoch), items, frames_context)

    decoder = DecodePool(cfg.io_threads)
    corrupt: dict[str, str] = {}
    builder = cache.Builder(
        processor,
        cfg.model.frames_per_clip,
        decoder,
        encoders=encoders,
        fetch_threads=cfg.io_threads,
        encode_batch_size=cfg.encode_batch_size,
        on_corrupt=corrupt.__setitem__,
    )
    stats = cache.CacheStats()
    try:
        cache.ensure(cache.ShardStore(cfg.cache.uri), builder, specs, stats, keep=False)
    finally:
        decoder.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    log.info(
        "preparation done shards=%d reused=%d built=%d rejected=%d decodes=%d encoder_forwards=%d seconds=%.1f",
        len({spec.key for spec in specs}),
        stats.hits,
        stats.built,
        stats.rejected,
        stats.decodes,
        stats.encoder_forwards,
        seconds,
    )
    return PrepareSummary(
        status="Succeeded",
        features=features,
        reason=blocker or "",
        cache_uri=cfg.cache.uri,
        shards=len({spec.key for spec in specs}),
        stats={**stats.as_dict(), **model_stats},
        corrupt_clips=len(corrupt),
        seconds=round(seconds, 3),
        weights=fetched,
        mlflow_parent_run_id=parent.finish() if parent is not None else None,
        mlflow_failures=parent.outbox.failures if parent is not None else 0,
    )
