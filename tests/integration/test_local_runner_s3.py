"""The report and the runner against the S3-protocol server on loopback (moto's server mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REFERENCE = Path(__file__).resolve().parents[1] / "unit" / "data" / "reference-sweep"


def keys(client: Any, bucket: str, prefix: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_report_from_and_to_s3(s3_server: Any, s3_bucket: str) -> None:
    client = s3_server.client()
    for path in REFERENCE.rglob("metrics.json"):
        client.put_object(
            Bucket=s3_bucket, Key=f"sweeps/default/phase1/{path.relative_to(REFERENCE)}", Body=path.read_bytes()
        )
    client.put_object(Bucket=s3_bucket, Key="sweeps/default/phase1/trials/broken/metrics.json", Body=b"{not json")
    source = f"s3://{s3_bucket}/sweeps/default/phase1/trials/"
    out = f"s3://{s3_bucket}/sweeps/default/phase1/report/"
    done = subprocess.run(
        [BIN / "lorasweep", "report", source, "--out", out],
        env={**os.environ, **s3_server.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"report of 11 trials: {out}report.md" in done.stdout
    # The broken file is named, not silently dropped.
    assert f"unreadable metrics uri=s3://{s3_bucket}/sweeps/default/phase1/trials/broken/metrics.json" in done.stderr
    assert keys(client, s3_bucket, "sweeps/default/phase1/report/") == [
        f"sweeps/default/phase1/report/{name}"
        for name in (
            "confusion-matrix.png",
            "group-alpha-ratio.png",
            "group-dropout.png",
            "group-learning-rate.png",
            "group-lora-rank.png",
            "report.md",
            "training-curves.png",
        )
    ]
    report = client.get_object(Bucket=s3_bucket, Key="sweeps/default/phase1/report/report.md")
    assert report["ContentType"].startswith("text/markdown")
    text = report["Body"].read().decode()
    assert "| 1 | 83.33% (66.4–92.7) | 56.67% (39.2–72.6) | 2e-4 | 64 | 128 | 0.10 |" in text
    assert "broken" in text  # listed under failed trials


def test_run_writes_trials_and_report_to_the_sweeps_storage(s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    env = {**os.environ, **s3_server.env}
    clips = f"s3://{s3_bucket}/clips/"
    subprocess.run(
        [BIN / "lorasweep-trainer", "synth", clips, "--actions", "8,9,23", "--clips-per-action", "4"],
        env=env,
        check=True,
        capture_output=True,
    )
    sweep = {
        "apiVersion": "lorasweep.dev/v1alpha1",
        "kind": "LoraSweep",
        "metadata": {"name": "s3run", "namespace": "team-a"},
        "spec": {
            "image": "lorasweep-trainer:cpu",
            "model": {"name": "tiny", "preset": "tiny", "framesPerClip": 4},
            "dataset": {
                "source": clips,
                "classes": {"sit_down": [8], "stand_up": [9], "other": "rest"},
                "videosPerClass": 4,
                "split": {"train": 0.5, "val": 0.25, "test": 0.25},
            },
            "training": {"epochs": 1, "batchSize": 2, "gradientAccumulationSteps": 1, "learningRate": 1.0e-2},
            "search": {"list": [{"learningRate": 1.0e-2}]},
            "storage": {"output": f"s3://{s3_bucket}/sweeps/"},
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    command = [str(BIN / "lorasweep"), "run", str(path), "--to-storage", "--device", "cpu"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    # The operator's layout: <output>/<namespace>/<sweep>/trials/<trial>/ and .../report/.
    stored = keys(s3_server.client(), s3_bucket, "sweeps/team-a/s3run/")
    assert [k for k in stored if k.endswith("/metrics.json")] != []
    assert "sweeps/team-a/s3run/report/report.md" in stored
    assert f"report: s3://{s3_bucket}/sweeps/team-a/s3run/report/report.md" in done.stdout
    # The best adapter is named where it was stored.
    (trial,) = {k.split("/")[4] for k in stored if k.endswith("/metrics.json")}
    assert f"adapter s3://{s3_bucket}/sweeps/team-a/s3run/trials/{trial}/adapter/" in done.stdout
    # The trainers' logs stay on this machine.
    assert list((tmp_path / "runs" / "s3run" / "trials").glob("*/trainer.log"))
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 trial, 1 finished before (skipped)" in again.stdout
