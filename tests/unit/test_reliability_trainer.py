"""The trainer's permanent failures: a model that cannot be loaded exits 2 (never retried by the Job's
podFailurePolicy) with reason ModelUnavailable and a message that says how to provide weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep_trainer.config import EXIT_INVALID_CONFIG
from lorasweep_trainer.results import TerminationSummary

pytestmark = pytest.mark.reliability


def _trial(model: str, tmp_path: Path) -> str:
    return json.dumps(
        {
            "namespace": "team-a",
            "sweep": "offline",
            "trial": "t-0",
            "model": {"source": model, "framesPerClip": 8},
            "dataset": {"source": str(tmp_path / "clips")},  # never read: the model comes first
            "output": str(tmp_path / "out") + "/",
            "metricsPort": 0,
        }
    )


MODELS = ("/nonexistent/vjepa2-checkpoint", "nobody/vjepa2-absent")  # a volume path not mounted, a hub name offline
# One child process for both (importing torch dominates): HF_HUB_OFFLINE is read when huggingface_hub is imported.
DRIVER = """
import os, sys
from lorasweep_trainer.cli import main
codes = []
for index, trial in enumerate(sys.argv[1:]):
    os.environ["LORASWEEP_TRIAL"] = trial
    os.environ["LORASWEEP_TERMINATION_LOG"] = os.path.join(os.environ["OUT"], f"termination-{index}")
    codes.append(str(main(["train"])))
print(" ".join(codes))
"""


def test_a_model_that_cannot_be_loaded_exits_2_with_reason_model_unavailable(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    trials = [_trial(model, tmp_path) for model in MODELS]
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *trials], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(EXIT_INVALID_CONFIG)] * len(MODELS), result.stderr[-3000:]
    for index, model in enumerate(MODELS):
        summary = TerminationSummary.decode((tmp_path / f"termination-{index}").read_text())
        assert (summary.status, summary.reason) == ("Failed", "ModelUnavailable")
        assert summary.message is not None and f"model.source {model!r} cannot be " in summary.message
        assert "save_pretrained checkpoint" in summary.message and "HF_HUB_OFFLINE=1" in summary.message
    assert "Traceback" not in result.stderr


def test_batches_hand_every_corrupt_clip_to_the_callback_and_keep_the_rest() -> None:
    import torch

    from lorasweep_trainer.data import Sample
    from lorasweep_trainer.video import LoadedClip, batches

    frames = torch.zeros(2, 3, 4, 4)
    clips = [
        LoadedClip(Sample("s3://b/a.avi", 0), frames),
        LoadedClip(Sample("s3://b/broken-1.avi", 1), None, error="moov atom not found"),
        LoadedClip(Sample("s3://b/b.avi", 1), frames),
        LoadedClip(Sample("s3://b/c.avi", 0), frames),
        LoadedClip(Sample("s3://b/broken-2.avi", 0), None, error="invalid data"),
    ]
    corrupt: list[LoadedClip] = []
    grouped = list(batches(iter(clips), 2, corrupt.append))
    assert [clip.sample.uri for clip in corrupt] == ["s3://b/broken-1.avi", "s3://b/broken-2.avi"]
    assert [[sample.uri for sample in samples] for samples, _, _ in grouped] == [
        ["s3://b/a.avi", "s3://b/b.avi"],
        ["s3://b/c.avi"],
    ]
    assert [labels.tolist() for _, _, labels in grouped] == [[0, 1], [0]]
