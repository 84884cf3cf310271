"""A tiny V-JEPA2 checkpoint as a user would keep one: ``save_pretrained`` of the model (config.json,
model.safetensors) and its video processor (video_preprocessor_config.json) in a folder, optionally uploaded to an
``s3://`` prefix. Built from the ``tiny`` preset's shape, so no weights are downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_tiny_model(folder: Path, seed: int = 11) -> list[str]:
    """The checkpoint under ``folder``; returns its file names."""
    import torch
    from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2VideoProcessor

    from lorasweep_trainer.model import PRESETS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VJEPA2ForVideoClassification(VJEPA2Config(**PRESETS["tiny"]))
    model.save_pretrained(folder)
    VJEPA2VideoProcessor(crop_size=PRESETS["tiny"]["crop_size"]).save_pretrained(folder)
    return sorted(path.name for path in folder.iterdir() if path.is_file())


def upload(client: Any, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        client.put_object(Bucket=bucket, Key=f"{prefix}{path.name}", Body=path.read_bytes())
