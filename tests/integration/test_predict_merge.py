"""Using the best adapter of a real (tiny, CPU) sweep run by `lorasweep run`: `lorasweep-trainer predict`
reproduces the test predictions and probabilities its metrics.json recorded, from a folder and from the
S3-protocol server; `lorasweep-trainer merge` writes a model that `from_pretrained` loads and that gives the
logits of base + adapter; an unusable adapter or location is refused with what to fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_local_runner import synthetic_clips, tiny_sweep

from lorasweep_trainer import cli, storage
from lorasweep_trainer.inference import load_adapter
from lorasweep_trainer.results import ADAPTER_INFO_FILE, AdapterInfo, TrialMetrics

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PROBABILITY_TOLERANCE = 1e-5  # fp32 on the CPU; only the batching differs from the trial's test pass


@dataclass(frozen=True)
class Sweep:
    clips: Path
    out: Path
    stdout: str
    best: TrialMetrics
    adapter: str  # as the runner's summary named it


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    folder = tmp_path_factory.mktemp("sweep")
    clips = synthetic_clips(folder / "clips")
    sweep = tiny_sweep(clips)
    sweep["spec"]["training"]["epochs"] = 2  # a best epoch to choose, as in a real sweep
    manifest = folder / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(sweep))
    out = folder / "out"
    done = subprocess.run(
        [BIN / "lorasweep", "run", str(manifest), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # "best: <configuration> (trial <id>), adapter <uri>", the runner's summary
    line = next(line for line in done.stdout.splitlines() if line.startswith("best: "))
    trial = line.split("(trial ", 1)[1].split(")", 1)[0]
    adapter = line.rsplit(" adapter ", 1)[1]
    trials = {p.parent.name: TrialMetrics.model_validate_json(p.read_text()) for p in out.glob("trials/*/metrics.json")}
    assert trials[trial].val_accuracy == max(t.val_accuracy for t in trials.values())
    return Sweep(clips, out, done.stdout, trials[trial], adapter)


def predict_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["predict", *args, "--json", "--device", "cpu"])
    output = capsys.readouterr().out
    return code, json.loads(output) if code == 0 else {}


def assert_reproduces(predictions: list[dict[str, Any]], best: TrialMetrics, key: Any) -> None:
    """Every test clip of the trial has the predicted class and probabilities its metrics.json recorded."""
    by_clip = {key(p["clip"]): p for p in predictions}
    assert best.test_predictions and set(best.test_probabilities) == set(best.test_predictions)
    for clip, predicted in best.test_predictions.items():
        row = by_clip[key(clip)]
        assert row["predicted"] == predicted, clip
        recorded = best.test_probabilities[clip]
        shown = [row["probabilities"][name] for name in best.classes]
        assert shown == pytest.approx(recorded, abs=PROBABILITY_TOLERANCE), clip


def test_the_runner_and_the_report_name_the_best_adapter(sweep: Sweep) -> None:
    assert sweep.adapter == f"{sweep.out / 'trials' / sweep.best.trial / 'adapter'}/" == sweep.best.adapter_uri
    report = (sweep.out / "report" / "report.md").read_text()
    assert f"The best configuration's adapter (trial {sweep.best.trial}): `{sweep.adapter}`" in report
    # What the trainer saved beside peft's files: enough to rebuild the preset base and name the outputs.
    folder = Path(sweep.adapter)
    info = AdapterInfo.model_validate_json((folder / ADAPTER_INFO_FILE).read_text())
    assert (info.classes, info.frames_per_clip, info.trial) == (sweep.best.classes, 4, sweep.best.trial)
    assert (info.base.name_or_path, info.base.revision, info.base.seed) == ("preset:tiny", "seed-42", 42)
    peft = json.loads((folder / "adapter_config.json").read_text())
    assert (peft["base_model_name_or_path"], peft["revision"]) == ("preset:tiny", "seed-42")


def test_predict_from_a_folder_reproduces_the_recorded_test_predictions(
    sweep: Sweep, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = predict_json(capsys, "--adapter", sweep.adapter, "--clips", str(sweep.clips))
    assert code == 0
    assert result["classes"] == sweep.best.classes and result["skipped"] == []
    assert len(result["predictions"]) == len(list(sweep.clips.glob("*.avi")))
    assert_reproduces(result["predictions"], sweep.best, key=lambda clip: clip)

    # The table names the clips relative to --clips, with the sweep's class names as columns.
    assert cli.main(["predict", "--adapter", sweep.adapter, "--clips", str(sweep.clips), "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split() == ["CLIP", "PREDICTED", *sweep.best.classes]
    clip, predicted = next(iter(sweep.best.test_predictions.items()))
    assert any(line.split()[:2] == [Path(clip).name, predicted] for line in table[3:])


@pytest.fixture
def s3_env(monkeypatched_s3_env: Any) -> Iterator[Any]:
    storage.reset_client()  # the shared client was built for the environment before this test's
    yield monkeypatched_s3_env
    storage.reset_client()


def test_predict_from_object_storage_reproduces_them_too(
    sweep: Sweep, s3_env: Any, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = f"s3://{s3_bucket}/sweeps/default/use"
    storage.upload_folder(sweep.out / "trials" / sweep.best.trial, f"{root}/trials/{sweep.best.trial}/")
    storage.upload_folder(sweep.clips, f"s3://{s3_bucket}/clips/")
    adapter = f"{root}/trials/{sweep.best.trial}/adapter/"

    code, result = predict_json(capsys, "--adapter", adapter, "--clips", f"s3://{s3_bucket}/clips/")
    assert code == 0 and result["adapter"] == adapter
    assert all(p["clip"].startswith(f"s3://{s3_bucket}/clips/") for p in result["predictions"])
    assert_reproduces(result["predictions"], sweep.best, key=lambda clip: clip.rsplit("/", 1)[-1])

    # One object alone, named by its URI.
    clip = next(iter(sweep.best.test_predictions))
    code, single = predict_json(capsys, "--adapter", adapter, "--clips", f"s3://{s3_bucket}/clips/{Path(clip).name}")
    assert code == 0 and [p["predicted"] for p in single["predictions"]] == [sweep.best.test_predictions[clip]]


def test_undecodable_clips_are_counted_and_skipped(
    sweep: Sweep, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for clip in sweep.best.test_predictions:
        shutil.copy(clip, clips)
    (clips / "S009C001P001R001A008_rgb.avi").write_bytes(b"RIFF, but not a video at all" * 40)
    (clips / "notes.txt").write_text("not a video name, so not a clip")

    code, result = predict_json(capsys, "--adapter", sweep.adapter, "--clips", str(clips))
    assert code == 0
    assert [s["clip"] for s in result["skipped"]] == [str(clips / "S009C001P001R001A008_rgb.avi")]
    assert_reproduces(result["predictions"], sweep.best, key=lambda clip: Path(clip).name)

    (clips / "S009C001P001R001A008_rgb.avi").rename(tmp_path / "broken.avi")
    assert cli.main(["predict", "--adapter", sweep.adapter, "--clips", str(tmp_path / "broken.avi")]) == 3
    assert "none of the 1 clips" in capsys.readouterr().err


def test_merge_writes_a_model_from_pretrained_loads_with_the_same_logits(sweep: Sweep, tmp_path: Path) -> None:
    from transformers import VJEPA2ForVideoClassification

    out = tmp_path / "merged"
    assert cli.main(["merge", "--adapter", sweep.adapter, "--out", str(out)]) == 0
    merged = VJEPA2ForVideoClassification.from_pretrained(str(out))
    merged.eval()
    assert merged.config.id2label == dict(enumerate(sweep.best.classes))
    assert merged.config.label2id == {name: i for i, name in enumerate(sweep.best.classes)}
    assert not any("lora" in name for name in merged.state_dict())

    loaded = load_adapter(sweep.adapter, tmp_path / "work", "cpu")
    pixels = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = loaded.model(pixel_values_videos=pixels).logits
        got = merged(pixel_values_videos=pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    from transformers import VJEPA2VideoProcessor

    assert VJEPA2VideoProcessor.from_pretrained(str(out)).to_dict() == loaded.processor.to_dict()
    # A second merge into the same folder would mix two models' files: refused.
    assert cli.main(["merge", "--adapter", sweep.adapter, "--out", str(out)]) == 2


def test_unusable_adapters_and_locations_say_what_to_fix(
    sweep: Sweep, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(*args: str) -> str:
        assert cli.main(["predict", *args]) == 2
        return capsys.readouterr().err

    clips = str(sweep.clips)
    bare = tmp_path / "bare"
    shutil.copytree(sweep.adapter, bare)
    (bare / ADAPTER_INFO_FILE).unlink()
    assert f"no {ADAPTER_INFO_FILE} (the class names, frames per clip and base model)" in refused(
        "--adapter", str(bare), "--clips", clips
    )
    assert "is not a peft adapter folder (no adapter_config.json, adapter_model.safetensors)" in refused(
        "--adapter", str(sweep.out / "trials" / sweep.best.trial), "--clips", clips
    )
    assert "is not a folder; give a trial's adapter folder" in refused(
        "--adapter", str(tmp_path / "absent"), "--clips", clips
    )
    assert "URI scheme 'gs'" in refused("--adapter", "gs://bucket/adapter/", "--clips", clips)
    assert "URI scheme 'https'" in refused("--adapter", sweep.adapter, "--clips", "https://example.com/a.avi")

    # Another seed draws other preset weights: the adapter is refused rather than applied to them.
    reseeded = tmp_path / "reseeded"
    shutil.copytree(sweep.adapter, reseeded)
    info = AdapterInfo.model_validate_json((reseeded / ADAPTER_INFO_FILE).read_text())
    changed = info.model_copy(update={"base": info.base.model_copy(update={"seed": 43})})
    (reseeded / ADAPTER_INFO_FILE).write_text(changed.to_json())
    assert "has other weights than the adapter was trained on" in refused("--adapter", str(reseeded), "--clips", clips)
