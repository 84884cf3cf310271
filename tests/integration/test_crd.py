"""The LoraSweep CRD on the real API server: it installs, defaults to the reference baseline, and the API
server itself rejects bad sweeps with messages that say what to fix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_harness import apply, get_sweep, learning_rates, sweep_manifest

from lorasweep_operator.spec import parse_spec

pytestmark = pytest.mark.usefixtures("crd")


def test_crd_installs_with_short_name_and_printer_columns(cluster: Any, namespace: str) -> None:
    assert apply(cluster, sweep_manifest("phase1", namespace, search=learning_rates(1e-3))).returncode == 0
    table = cluster.kubectl("get", "lsw", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "TRIALS", "SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "BEST", "AGE"]
    assert table[1].startswith("phase1")


def test_api_server_applies_the_reference_baseline_as_defaults(cluster: Any, namespace: str) -> None:
    manifest = sweep_manifest("defaults", namespace, search=learning_rates(1e-3))
    del manifest["spec"]["training"], manifest["spec"]["resources"]
    assert apply(cluster, manifest).returncode == 0
    spec = get_sweep(cluster, namespace, "defaults")["spec"]
    assert spec["training"] == {
        "epochs": 5,
        "batchSize": 1,
        "gradientAccumulationSteps": 4,
        "learningRate": 2.0e-4,
        "weightDecay": 0.01,
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.1, "targetModules": ["q_proj", "k_proj", "v_proj", "out_proj"]},
        "scheduler": "cosine",
        "warmupFraction": 0.1,
    }
    assert spec["dataset"]["split"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert spec["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert (spec["parallelism"], spec["maxFailedTrials"], spec["maxTrials"]) == (1, 3, 10_000)
    assert spec["search"]["seeds"] == [42]
    assert parse_spec(spec) == parse_spec(manifest["spec"])  # the CRD's defaults are the models' defaults


BAD_SWEEPS = [
    pytest.param(
        lambda s: s["training"].update(learningRate=-1e-4),
        "spec.training.learningRate: Invalid value: -0.0001: spec.training.learningRate in body should be greater than 0",
        id="negative-learning-rate",
    ),
    pytest.param(
        lambda s: s["dataset"].update(split={"train": 0.7, "val": 0.2, "test": 0.2}),
        'spec.dataset.split: Invalid value: "object": split fractions must sum to 1',
        id="splits-not-summing-to-1",
    ),
    pytest.param(lambda s: s.update(learnRate=1e-3), 'unknown field "spec.learnRate"', id="unknown-field"),
    pytest.param(
        lambda s: s["search"].update(grid={"epochs": [1, 2]}),
        "search needs exactly one of groups, grid, random, list, fromSweep",
        id="two-search-kinds",
    ),
    pytest.param(
        lambda s: s["search"]["list"].append({"lora": {"rank": 8}}),
        "lora.rank is set without lora.alpha; give alpha too",
        id="rank-without-alpha",
    ),
    pytest.param(
        lambda s: s["dataset"].update(source="/data/clips"),
        "dataset.source must be an s3:// URI",
        id="source-not-s3",
    ),
    pytest.param(
        lambda s: s.update(objective={"metric": "test_accuracy"}),
        'Unsupported value: "test_accuracy": supported values: "val_accuracy", "val_macro_f1", "val_loss"',
        id="unknown-objective",
    ),
    pytest.param(
        lambda s: s.update(parallelism=0),
        "spec.parallelism in body should be greater than or equal to 1",
        id="parallelism-0",
    ),
]


@pytest.mark.parametrize(("break_it", "message"), BAD_SWEEPS)
def test_api_server_rejects_bad_sweeps_with_readable_messages(
    cluster: Any, namespace: str, break_it: Any, message: str
) -> None:
    manifest = sweep_manifest("bad", namespace, search=learning_rates(1e-3))
    break_it(manifest["spec"])
    result = apply(cluster, manifest)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("field", ["search", "dataset", "model"])
def test_model_dataset_and_search_are_immutable(cluster: Any, namespace: str, field: str) -> None:
    assert apply(cluster, sweep_manifest("fixed", namespace, search=learning_rates(1e-3))).returncode == 0
    changes: dict[str, Any] = {
        "search": learning_rates(1e-3, 5e-4),
        "dataset": {"source": "s3://other/clips/"},
        "model": {"framesPerClip": 16},
    }
    patch = json.dumps({"spec": {field: changes[field]}})
    result = cluster.kubectl("patch", "lsw", "fixed", "-n", namespace, "--type=merge", "-p", patch, check=False)
    assert result.returncode != 0
    assert f"spec.{field} is immutable; create a new LoraSweep to change it" in result.stderr, result.stderr
    # What may change after creation does.
    ok = cluster.kubectl("patch", "lsw", "fixed", "-n", namespace, "--type=merge", "-p", '{"spec":{"parallelism":3}}')
    assert ok.returncode == 0
