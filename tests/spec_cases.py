"""Good and bad sweep specs that the pydantic models (`parse_spec`, what `lorasweep validate` and the operator
run) and the API server (the CRD's schema and CEL rules) must judge alike. tests/unit/test_reliability_spec.py
runs them through pydantic, tests/integration/test_reliability_crd.py through the real API server, so a rule
changed in one place and not the other fails a test.

A bad case names the text both messages hold, or one text per side where the two phrasings differ (pydantic's
and the API server's wording of a bound or an unknown field). `cluster_only` cases are rules of the CRD alone,
on purpose: a local `lorasweep run` reads clips from and writes results to local folders, so pydantic accepts
them there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Spec = dict[str, Any]


def base_spec() -> Spec:
    return {
        "image": "lorasweep-trainer:test",
        "command": ["python", "-c", "pass"],
        "dataset": {"source": "s3://bucket/clips/"},
        "training": {"epochs": 2},
        "storage": {"output": "s3://bucket/sweeps/"},
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
        "search": {"list": [{"learningRate": 1e-3}]},
    }


@dataclass(frozen=True)
class Case:
    id: str
    change: Callable[[Spec], Any]
    text: str = ""  # in both messages
    api_text: str = ""  # the API server's wording, when it differs
    model_text: str = ""  # pydantic's wording, when it differs
    cluster_only: bool = False

    def spec(self) -> Spec:
        spec = copy.deepcopy(base_spec())
        self.change(spec)
        return spec

    @property
    def api_message(self) -> str:
        return self.api_text or self.text

    @property
    def model_message(self) -> str:
        return self.model_text or self.text


def _search(**search: Any) -> Callable[[Spec], Any]:
    return lambda spec: spec.update(search=search)


RANK_WITHOUT_ALPHA = "without lora.alpha; give alpha too"

GOOD = [
    Case("list", lambda spec: None),
    Case("groups-rank-with-alpha", _search(groups=[{"name": "rank", "values": [{"lora": {"rank": 8, "alpha": 16}}]}])),
    Case("groups-alpha-alone", _search(groups=[{"name": "alpha", "values": [{"lora": {"alpha": 64}}]}])),
    Case("grid-rank-with-alpha", _search(grid={"lora": {"rank": [8, 16], "alpha": [16, 32]}})),
    Case("grid-alpha-alone", _search(grid={"lora": {"alpha": [16, 64]}, "learningRate": [1e-4]})),
    Case(
        "random-rank-with-alpha",
        _search(random={"samples": 3, "space": {"lora": {"rank": {"choice": [8, 16]}, "alpha": {"choice": [32]}}}}),
    ),
    Case("random-log-uniform", _search(random={"samples": 2, "space": {"learningRate": {"logUniform": {"min": 1e-5, "max": 1e-3}}}})),
    Case("from-sweep-override-rank-with-alpha", _search(fromSweep={"name": "phase1", "top": 3, "override": {"lora": {"rank": 8, "alpha": 16}}})),
    Case("from-sweep-override-epochs", _search(fromSweep={"name": "phase1", "override": {"epochs": 10}})),
    Case("seeds", _search(list=[{"learningRate": 1e-3}], seeds=[1, 2, 3])),
    Case("grid-at-the-cap", _search(grid={"learningRate": [round(1e-5 * (i + 1), 8) for i in range(100)],
                                          "weightDecay": [round(0.001 * j, 6) for j in range(100)]})),
    Case("objective-val-loss", lambda spec: spec.update(objective={"metric": "val_loss", "goal": "minimize"})),
    Case("packing", lambda spec: spec.update(packing=4, featureCache="off")),
    Case("mlflow-tracking", lambda spec: spec.update(tracking={"mlflow": {"uri": "https://mlflow.example", "experiment": "ntu", "credentialsSecret": "mlflow"}})),
]  # fmt: skip

BAD = [
    Case(
        "early-stopping-with-packing",
        lambda spec: spec.update(packing=2, earlyStopping={"algorithm": "asha"}),
        text="with packing above 1 would end the other trials",
    ),
    Case(
        "negative-learning-rate",
        lambda spec: spec["training"].update(learningRate=-1e-4),
        text="should be greater than 0",
    ),
    Case(
        "splits-not-summing-to-1",
        lambda spec: spec["dataset"].update(split={"train": 0.7, "val": 0.2, "test": 0.2}),
        text="split fractions must sum to 1",
    ),
    Case(
        "unknown-field",
        lambda spec: spec.update(learnRate=1e-3),
        api_text='unknown field "spec.learnRate"',
        model_text="spec.learnRate: Extra inputs are not permitted",
    ),
    Case(
        "two-search-kinds",
        lambda spec: spec["search"].update(grid={"epochs": [1, 2]}),
        text="search needs exactly one of groups, grid, random, list, fromSweep",
    ),
    Case("no-search-kind", _search(seeds=[1]), text="search needs exactly one of groups, grid, random, list, fromSweep"),
    Case("list-rank-without-alpha", _search(list=[{"lora": {"rank": 8}}]), text=RANK_WITHOUT_ALPHA),
    Case(
        "groups-rank-without-alpha",
        _search(groups=[{"name": "rank", "values": [{"lora": {"rank": 8}}]}]),
        text=RANK_WITHOUT_ALPHA,
    ),
    Case(
        "from-sweep-override-rank-without-alpha",
        _search(fromSweep={"name": "phase1", "override": {"lora": {"rank": 8}}}),
        text=RANK_WITHOUT_ALPHA,
    ),
    Case("grid-rank-without-alpha", _search(grid={"lora": {"rank": [8, 16]}}), text=RANK_WITHOUT_ALPHA),
    Case(
        "random-rank-without-alpha",
        _search(random={"samples": 2, "space": {"lora": {"rank": {"choice": [8, 16]}}}}),
        text=RANK_WITHOUT_ALPHA,
    ),
    Case(
        "random-space-empty",
        _search(random={"samples": 2, "space": {}}),
        text="search.random.space names no parameter; add one",
    ),
    Case(
        "distribution-two-kinds",
        _search(random={"samples": 2, "space": {"learningRate": {"choice": [1e-3], "uniform": {"min": 0, "max": 1}}}}),
        text="a distribution needs exactly one of choice, uniform, logUniform",
    ),
    Case(
        "log-uniform-from-0",
        _search(random={"samples": 2, "space": {"learningRate": {"logUniform": {"min": 0, "max": 1e-3}}}}),
        text="logUniform needs min > 0",
    ),
    Case(
        "range-reversed",
        _search(random={"samples": 2, "space": {"weightDecay": {"uniform": {"min": 0.1, "max": 0.01}}}}),
        text="a range needs min < max",
    ),
    Case(
        "unknown-objective",
        lambda spec: spec.update(objective={"metric": "test_accuracy"}),
        api_text='Unsupported value: "test_accuracy": supported values: "val_accuracy", "val_macro_f1", "val_loss"',
        model_text="Input should be 'val_accuracy', 'val_macro_f1' or 'val_loss'",
    ),
    Case(
        "parallelism-0",
        lambda spec: spec.update(parallelism=0),
        text="should be greater than or equal to 1",
    ),
    Case(
        "empty-command",
        lambda spec: spec.update(command=["", "train"]),
        text="command[0] must name the program to run",
    ),
    Case(
        "odd-frames-per-clip",
        lambda spec: spec.update(model={"framesPerClip": 7}),
        api_text="should be a multiple of 2",
        model_text="framesPerClip must be even",
    ),
    Case(
        "duplicate-seeds",
        _search(list=[{"learningRate": 1e-3}], seeds=[1, 1]),
        api_text="Duplicate value: 1",
        model_text="search.seeds has duplicates",
    ),
    Case(
        "too-many-trials-cap",
        lambda spec: spec.update(maxTrials=10_001),
        text="less than or equal to 10000",
    ),
    Case(
        "grid-over-the-cap",
        _search(grid={"learningRate": [round(1e-5 * (i + 1), 8) for i in range(100)],
                      "weightDecay": [round(0.001 * j, 6) for j in range(101)]}),
        text="search.grid expands to more trials than maxTrials",
    ),
    Case(
        "grid-over-a-lowered-cap",
        lambda spec: spec.update(maxTrials=3, search={"grid": {"learningRate": [1e-4, 2e-4]}, "seeds": [1, 2]}),
        text="search.grid expands to more trials than maxTrials",
    ),
    Case("mlflow-uri-not-http", lambda spec: spec.update(tracking={"mlflow": {"uri": "sqlite:///mlflow.db", "experiment": "ntu"}}),
         text="tracking.mlflow.uri must be an http:// or https:// URL"),
    Case("mlflow-without-experiment", lambda spec: spec.update(tracking={"mlflow": {"uri": "http://mlflow:5000"}}),
         api_text="spec.tracking.mlflow.experiment: Required value", model_text="spec.tracking.mlflow.experiment: Field required"),
    Case("source-not-s3", lambda spec: spec["dataset"].update(source="/data/clips"),
         text="dataset.source must be an s3:// URI", cluster_only=True),
    Case("output-not-s3", lambda spec: spec["storage"].update(output="/data/out"),
         text="storage.output must be an s3:// URI", cluster_only=True),
]  # fmt: skip
