"""Using a trial's adapter after the sweep: ``lorasweep-trainer predict`` and ``lorasweep-trainer merge``.

A trial's ``adapter/`` folder (DESIGN.md "Artifacts") holds peft's files, the video processor
(``video_preprocessor_config.json``) and ``lorasweep_adapter.json`` (`results.AdapterInfo`: the class names in
id2label order, the frames per clip and the base model). Loading builds that base again (a hub name or folder
through ``from_pretrained``, a preset from its seed), checks its weights against the digest recorded at training
time, and puts the adapter on it.

`predict` decodes clips exactly as the trial's test split was decoded (`video.ClipLoader`: the centre frame of
each of ``frames_per_clip`` equal segments, the same processor, bf16 autocast on CUDA), so on the test clips it
gives the predictions and probabilities recorded in the trial's metrics.json. A clip that cannot be decoded is
counted and skipped; when none can be, that is a DatasetError (exit 3).

`merge` folds LoRA into the base weights (peft ``merge_and_unload``) and writes a plain
``VJEPA2ForVideoClassification`` folder (config with id2label/label2id, safetensors weights, the video processor)
that ``from_pretrained`` loads without peft or lorasweep.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from lorasweep_trainer import storage
from lorasweep_trainer.config import ConfigError
from lorasweep_trainer.data import DatasetError
from lorasweep_trainer.results import (
    ADAPTER_INFO_FILE,
    PEFT_ADAPTER_FILES,
    AdapterInfo,
)

log = logging.getLogger(__name__)

PROCESSOR_FILE = "video_preprocessor_config.json"  # what VJEPA2VideoProcessor.save_pretrained writes
# What `predict` takes from a folder or prefix; a single file named on the command line is always tried.
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
WHERE_ADAPTERS_ARE = (
    "give a trial's adapter folder, <output>/<namespace>/<sweep>/trials/<trial>/adapter/ "
    "(status.best.adapterUri and the sweep report name the best one)"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class AdapterError(ConfigError):
    """The adapter folder cannot be used as given (exit 2): missing, incomplete, or for other base weights."""


def check_location(uri: str, what: str) -> None:
    """A local path or an ``s3://`` URI; any other scheme is a ConfigError that says what is accepted."""
    match = _SCHEME.match(uri)
    if match is not None and match.group(1).lower() != "s3":
        raise ConfigError(
            f"{what} {uri!r} has the URI scheme {match.group(1)!r}, which lorasweep cannot read; "
            "give a local path or an s3://bucket/prefix/ URI (the endpoint from AWS_ENDPOINT_URL_S3)"
        )
    if match is not None and uri[: len("s3://")] != "s3://":
        raise ConfigError(f"{what} {uri!r}: write the scheme in lower case, s3://")


def is_video_name(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIXES)


# --- the adapter --------------------------------------------------------------------------------------------


def fetch_adapter(uri: str, into: Path) -> Path:
    """The adapter as a local folder: ``uri`` itself when it is one, else its objects downloaded into ``into``."""
    check_location(uri, "--adapter")
    if not storage.is_s3(uri):
        folder = Path(uri)
        if not folder.is_dir():
            raise AdapterError(f"--adapter {uri} is not a folder; {WHERE_ADAPTERS_ARE}")
        return folder
    prefix = uri.rstrip("/") + "/"
    try:
        objects = storage.list_objects(prefix)
    except FileNotFoundError as error:
        raise AdapterError(f"--adapter {uri}: {error}; {WHERE_ADAPTERS_ARE}") from error
    if not objects:
        raise AdapterError(f"--adapter {uri}: no objects under this prefix; {WHERE_ADAPTERS_ARE}")
    for item in objects:
        relative = item.uri[len(prefix) :]
        if not relative or relative.endswith("/"):
            continue
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(item.uri))
    log.info("adapter fetched uri=%s files=%d", uri, len(objects))
    return into


def read_info(folder: Path, uri: str) -> AdapterInfo:
    """The adapter's AdapterInfo, after checking that the folder holds everything `load_adapter` reads."""
    absent = [name for name in PEFT_ADAPTER_FILES if not (folder / name).is_file()]
    if absent:
        raise AdapterError(
            f"--adapter {uri} is not a peft adapter folder (no {', '.join(absent)}); {WHERE_ADAPTERS_ARE}"
        )
    info_path = folder / ADAPTER_INFO_FILE
    if not info_path.is_file():
        raise AdapterError(
            f"--adapter {uri} has peft's files but no {ADAPTER_INFO_FILE} (the class names, frames per clip and "
            "base model), so its outputs cannot be named or its base rebuilt; it was saved by an older trainer or "
            "by hand: run the trial again with this trainer"
        )
    try:
        info = AdapterInfo.model_validate_json(info_path.read_text(encoding="utf-8"))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        raise AdapterError(
            f"--adapter {uri}: {ADAPTER_INFO_FILE} is not a lorasweep.adapter/v1 document ({where}: {first['msg']})"
        ) from None
    if not (folder / PROCESSOR_FILE).is_file():
        raise AdapterError(f"--adapter {uri} has no {PROCESSOR_FILE} (the video processor); run the trial again")
    return info


@dataclass
class LoadedAdapter:
    uri: str
    folder: Path
    info: AdapterInfo
    model: Any  # peft.PeftModel over VJEPA2ForVideoClassification, in eval mode
    processor: Any  # transformers.VJEPA2VideoProcessor
    device: Any  # torch.device


def load_adapter(uri: str, work: Path, device: str = "auto", base: str | None = None) -> LoadedAdapter:
    """Base model + adapter, ready to run. ``base``: a hub name or folder to load the same base weights from
    (a cluster without internet); the digest check still applies."""
    import torch
    from peft import PeftModel
    from transformers import VJEPA2VideoProcessor

    from lorasweep_trainer import model as modeling
    from lorasweep_trainer.train import pick_device

    folder = fetch_adapter(uri, work)
    info = read_info(folder, uri)
    if base is not None and info.base.preset is not None:
        raise AdapterError(
            f"--base {base}: this adapter's base is the preset {info.base.preset!r}, built from seed "
            f"{info.base.seed} without weights to load; leave --base out"
        )
    model_config = modeling.model_config_for(info.base, info.frames_per_clip, source=base)
    built = modeling.build_base_model(model_config, info.classes, info.base.seed)
    digest = modeling.base_digest(built)
    if digest != info.base.digest:
        raise AdapterError(
            f"the base model built from {base or info.base.name_or_path} (revision {info.base.revision or 'default'})"
            f" has other weights than the adapter was trained on (SHA-256 {digest[:12]} != {info.base.digest[:12]})"
            f": load the revision it recorded, or for a preset use the lorasweep version of commit "
            f"{info.git_commit}"
        )
    target = pick_device(device)
    model = PeftModel.from_pretrained(built, str(folder), is_trainable=False).to(target)
    model.eval()
    processor = VJEPA2VideoProcessor.from_pretrained(str(folder))
    log.info("adapter loaded uri=%s trial=%s base=%s device=%s", uri, info.trial, info.base.name_or_path, target)
    return LoadedAdapter(uri, folder, info, model, processor, torch.device(target))


# --- predict ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPrediction:
    clip: str
    predicted: str
    probabilities: dict[str, float]  # class -> softmax probability, in the adapter's class order


@dataclass
class PredictResult:
    adapter: str
    trial: str
    classes: list[str]
    location: str  # what --clips named
    predictions: list[ClipPrediction] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # clip -> why it could not be decoded


def list_clips(location: str) -> list[str]:
    """The clips ``location`` names: one file or object, or every video file under a folder or prefix."""
    check_location(location, "--clips")
    if storage.is_s3(location):
        try:
            objects = storage.list_objects(location)
        except FileNotFoundError as error:
            raise DatasetError(f"--clips {location}: {error}") from error
        if any(item.uri == location for item in objects) and not location.endswith("/"):
            return [location]
        prefix = location.rstrip("/") + "/"
        clips = [item.uri for item in objects if item.uri.startswith(prefix) and is_video_name(item.name)]
    else:
        path = Path(location)
        if path.is_file():
            return [str(path)]
        if not path.is_dir():
            raise DatasetError(f"--clips {location} is neither a file nor a folder")
        clips = [item.uri for item in storage.list_objects(location) if is_video_name(item.name)]
    if not clips:
        raise DatasetError(f"--clips {location} holds no video files ({', '.join(VIDEO_SUFFIXES)})")
    return clips


def predict(loaded: LoadedAdapter, location: str, batch_size: int = 4, io_threads: int = 4) -> PredictResult:
    """Every clip under ``location`` through the model, decoded as the trial's test split was."""
    import torch

    from lorasweep_trainer.data import Sample
    from lorasweep_trainer.evaluate import autocast
    from lorasweep_trainer.telemetry import Telemetry
    from lorasweep_trainer.video import ClipLoader, LoadedClip, batches

    clips = list_clips(location)
    info = loaded.info
    result = PredictResult(loaded.uri, info.trial, list(info.classes), location)

    def skip(clip: LoadedClip) -> None:
        result.skipped[clip.sample.uri] = clip.error or "undecodable"

    telemetry = Telemetry("-", info.sweep, info.trial)  # never served: the loader counts into it
    loader = ClipLoader(loaded.processor, info.frames_per_clip, telemetry, max(4, batch_size), io_threads)
    samples = [Sample(uri, -1) for uri in clips]  # no labels: -1 is never read
    try:
        with torch.no_grad():
            for batch_samples, inputs, _ in batches(loader.iterate(samples, "predict"), batch_size, skip):
                with autocast(loaded.device):
                    logits = loaded.model(pixel_values_videos=inputs.to(loaded.device)).logits.float()
                for sample, row in zip(batch_samples, logits.softmax(-1).tolist(), strict=True):
                    best = max(range(len(row)), key=row.__getitem__)
                    result.predictions.append(
                        ClipPrediction(sample.uri, info.classes[best], dict(zip(info.classes, row, strict=True)))
                    )
    finally:
        loader.close()
    if result.skipped:
        log.warning("clips undecodable, skipped count=%d of=%d", len(result.skipped), len(clips))
    if not result.predictions:
        first = next(iter(result.skipped.items()))
        raise DatasetError(
            f"none of the {len(clips)} clips under {location} could be decoded (first: {first[0]}: {first[1]}); "
            "check that they are videos decord can read"
        )
    return result


def shown_name(clip: str, location: str) -> str:
    """A clip as the table shows it: relative to the folder or prefix --clips named, else the whole URI."""
    prefix = location.rstrip("/") + "/"
    return clip[len(prefix) :] if clip.startswith(prefix) else clip


def format_table(result: PredictResult) -> str:
    """Aligned columns: the clip, its predicted class, then each class's probability (4 decimals)."""
    header = ["CLIP", "PREDICTED", *result.classes]
    rows = [
        [shown_name(p.clip, result.location), p.predicted, *(f"{p.probabilities[c]:.4f}" for c in result.classes)]
        for p in result.predictions
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        f"adapter {result.adapter} (trial {result.trial}); "
        f"{len(result.predictions)} clips predicted, {len(result.skipped)} skipped",
        "",
    ]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    if result.skipped:
        lines += ["", f"skipped {len(result.skipped)} clips that could not be decoded:"]
        lines += [f"  {shown_name(clip, result.location)}: {why}" for clip, why in result.skipped.items()]
    return "\n".join(lines)


def as_json(result: PredictResult) -> dict[str, Any]:
    return {
        "adapter": result.adapter,
        "trial": result.trial,
        "classes": result.classes,
        "clips": result.location,
        "predictions": [
            {"clip": p.clip, "predicted": p.predicted, "probabilities": p.probabilities} for p in result.predictions
        ],
        "skipped": [{"clip": clip, "error": why} for clip, why in result.skipped.items()],
    }


# --- merge --------------------------------------------------------------------------------------------------


def check_out(out: str) -> None:
    """``merge --out``: a local path that is a new or empty folder, or an s3:// prefix."""
    check_location(out, "--out")
    if not storage.is_s3(out):
        target = Path(out)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ConfigError(f"--out {out} exists and is not an empty folder; give a new or empty folder")


def merge(loaded: LoadedAdapter, out: str) -> list[str]:
    """Write the merged model to ``out`` (a new or empty folder, or an s3:// prefix); returns the files written."""
    from transformers import VJEPA2ForVideoClassification

    check_out(out)
    merged = cast(VJEPA2ForVideoClassification, loaded.model.merge_and_unload())
    classes = loaded.info.classes
    merged.config.id2label = dict(enumerate(classes))
    merged.config.label2id = {name: i for i, name in enumerate(classes)}
    with tempfile.TemporaryDirectory(prefix="lorasweep-merge-") as scratch:
        folder = Path(out) if not storage.is_s3(out) else Path(scratch)
        merged.save_pretrained(str(folder))
        loaded.processor.save_pretrained(str(folder))
        # Provenance and the frames per clip the classifier was trained with (config.frames_per_clip is the
        # pretrained model's, e.g. 64): what the merged folder's users need beyond from_pretrained.
        provenance = loaded.info.model_copy(update={"merged_from": loaded.uri})
        (folder / ADAPTER_INFO_FILE).write_text(provenance.to_json(), encoding="utf-8")
        written = sorted(str(path) for path in folder.rglob("*") if path.is_file())
        if storage.is_s3(out):
            written = storage.upload_folder(folder, out)
    log.info("merged model written out=%s files=%d", out, len(written))
    return written
