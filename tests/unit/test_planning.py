"""Planning: the reference's 11 configurations, grid, random, seeds, de-duplication, names, fromSweep, the cap."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasweep_operator import planning
from lorasweep_operator.spec import (
    LoraSweepSpec,
    SpecError,
    TrainingConfig,
    TrialStatus,
    load_sweep_file,
    parse_spec,
)
from lorasweep_trainer.config import TrialConfig

REFERENCE_SWEEP = """
apiVersion: lorasweep.dev/v1alpha1
kind: LoraSweep
metadata: {name: phase1, namespace: research}
spec:
  image: ghcr.io/example/lorasweep-trainer:0.1.0
  model: {source: facebook/vjepa2-vitl-fpc16-256-ssv2, framesPerClip: 8}
  dataset:
    source: s3://bucket/nturgbd_rgb/
    classes: {sit_down: [8], stand_up: [9], waving: [23], other: rest}
    videosPerClass: 50
    split: {train: 0.70, val: 0.15, test: 0.15}
    seed: 42
  training:
    epochs: 5
    batchSize: 1
    gradientAccumulationSteps: 4
    learningRate: 2.0e-4
    weightDecay: 0.01
    lora: {rank: 16, alpha: 32, dropout: 0.10, targetModules: [q_proj, k_proj, v_proj, out_proj]}
  search:
    groups:
      - {name: learning-rate, values: [{learningRate: 5.0e-5}, {learningRate: 1.0e-4}, {learningRate: 2.0e-4},
                                       {learningRate: 5.0e-4}, {learningRate: 1.0e-3}]}
      - {name: lora-rank, values: [{lora: {rank: 8, alpha: 16}}, {lora: {rank: 16, alpha: 32}},
                                   {lora: {rank: 32, alpha: 64}}, {lora: {rank: 64, alpha: 128}}]}
      - {name: alpha-ratio, values: [{lora: {alpha: 16}}, {lora: {alpha: 64}}]}
      - {name: dropout, values: [{lora: {dropout: 0.05}}]}
    seeds: [42]
  objective: {metric: val_accuracy, goal: maximize}
  parallelism: 4
  maxFailedTrials: 3
  storage: {output: s3://bucket/sweeps/, credentialsSecret: s3-credentials}
"""

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def reference_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(REFERENCE_SWEEP)
    return document


def spec_with(**changes: Any) -> LoraSweepSpec:
    spec = reference_document()["spec"]
    spec.update(changes)
    return parse_spec(spec)


def test_reference_sweep_plans_its_11_configurations_in_order(tmp_path: Path) -> None:
    path = tmp_path / "phase1.yaml"
    path.write_text(REFERENCE_SWEEP)
    manifest = load_sweep_file(path)
    assert (manifest.name, manifest.namespace) == ("phase1", "research")

    trials = planning.plan(manifest.spec, manifest.name)

    table = [
        (t.group, t.training.learning_rate, t.training.lora.rank, t.training.lora.alpha, t.training.lora.dropout)
        for t in trials
    ]
    assert table == [
        ("baseline", 2e-4, 16, 32.0, 0.10),
        ("learning-rate", 5e-5, 16, 32.0, 0.10),
        ("learning-rate", 1e-4, 16, 32.0, 0.10),
        ("learning-rate", 5e-4, 16, 32.0, 0.10),
        ("learning-rate", 1e-3, 16, 32.0, 0.10),
        ("lora-rank", 2e-4, 8, 16.0, 0.10),
        ("lora-rank", 2e-4, 32, 64.0, 0.10),
        ("lora-rank", 2e-4, 64, 128.0, 0.10),
        ("alpha-ratio", 2e-4, 16, 16.0, 0.10),
        ("alpha-ratio", 2e-4, 16, 64.0, 0.10),
        ("dropout", 2e-4, 16, 32.0, 0.05),
    ]
    assert [t.index for t in trials] == list(range(11))
    assert [t.variant for t in trials][:2] == ["baseline", "learningRate=5e-05"]
    assert trials[5].variant == "lora.rank=8 lora.alpha=16"
    assert all(t.training.epochs == 5 and t.training.gradient_accumulation_steps == 4 for t in trials)
    assert len({t.id for t in trials}) == 11


def test_plan_is_stable_and_ids_depend_only_on_parameters() -> None:
    spec = parse_spec(reference_document()["spec"])
    first = planning.plan(spec, "phase1")
    again = planning.plan(parse_spec(reference_document()["spec"]), "phase1")
    assert first == again
    renamed = planning.plan(spec, "other-sweep")
    assert [t.id for t in renamed] == [t.id for t in first]
    # Ids are pinned: a changed hash would orphan every running sweep's Jobs after an operator upgrade.
    assert first[0].id == planning.trial_id(TrainingConfig(), 42)
    assert re.fullmatch(r"[0-9a-f]{10}", first[0].id)


def test_override_equal_to_baseline_is_dropped_even_across_groups() -> None:
    spec = spec_with(
        search={
            "groups": [
                {"name": "a", "values": [{"learningRate": 1e-3}, {"weightDecay": 0.01}]},
                {"name": "b", "values": [{"learningRate": 1e-3}, {"epochs": 6}]},
            ]
        }
    )
    trials = planning.plan(spec, "s")
    assert [(t.group, t.variant) for t in trials] == [
        ("baseline", "baseline"),
        ("a", "learningRate=0.001"),
        ("b", "epochs=6"),
    ]


def test_grid_is_the_cartesian_product_in_parameter_order() -> None:
    spec = spec_with(search={"grid": {"lora": {"rank": [8, 16], "alpha": [16]}, "learningRate": [1e-4, 1e-3]}})
    trials = planning.plan(spec, "g")
    assert [(t.training.learning_rate, t.training.lora.rank, t.training.lora.alpha) for t in trials] == [
        (1e-4, 8, 16.0),
        (1e-4, 16, 16.0),
        (1e-3, 8, 16.0),
        (1e-3, 16, 16.0),
    ]
    assert {t.group for t in trials} == {"grid"}


def test_grid_with_baseline_drops_the_duplicate() -> None:
    spec = spec_with(search={"includeBaseline": True, "grid": {"learningRate": [2e-4, 1e-3]}})
    assert [t.variant for t in planning.plan(spec, "g")] == ["baseline", "learningRate=0.001"]


def test_random_is_seeded_and_respects_each_distribution() -> None:
    search = {
        "random": {
            "samples": 200,
            "seed": 7,
            "space": {
                "learningRate": {"logUniform": {"min": 1e-5, "max": 1e-2}},
                "lora": {
                    "dropout": {"uniform": {"min": 0.0, "max": 0.3}},
                    "rank": {"choice": [4, 8, 16]},
                    "alpha": {"choice": [32.0]},
                },
            },
        }
    }
    trials = planning.plan(spec_with(search=search), "r")
    assert trials == planning.plan(spec_with(search=search), "r")
    assert len(trials) == 200
    rates = [t.training.learning_rate for t in trials]
    assert all(1e-5 <= rate <= 1e-2 for rate in rates)
    # log-uniform: about a third of the draws in each decade of the three
    decades = [sum(1 for r in rates if 10**low <= r < 10 ** (low + 1)) for low in (-5, -4, -3)]
    assert all(40 <= count <= 95 for count in decades), decades
    assert all(0.0 <= t.training.lora.dropout <= 0.3 for t in trials)
    assert {t.training.lora.rank for t in trials} == {4, 8, 16}
    other_seed = {**search, "random": {**search["random"], "seed": 8}}
    assert [t.id for t in planning.plan(spec_with(search=other_seed), "r")] != [t.id for t in trials]


def test_random_integer_parameters_are_whole_numbers() -> None:
    search = {"random": {"samples": 20, "space": {"epochs": {"uniform": {"min": 1, "max": 10}}}}}
    trials = planning.plan(spec_with(search=search), "r")
    assert all(isinstance(t.training.epochs, int) and 1 <= t.training.epochs <= 10 for t in trials)
    assert len(trials) == len({t.training.epochs for t in trials})  # duplicates were dropped


def test_each_configuration_runs_for_every_seed() -> None:
    spec = spec_with(search={"list": [{"learningRate": 1e-3}, {"learningRate": 5e-4}], "seeds": [1, 2, 3]})
    trials = planning.plan(spec, "s")
    assert [(t.training.learning_rate, t.seed) for t in trials] == [
        (1e-3, 1),
        (1e-3, 2),
        (1e-3, 3),
        (5e-4, 1),
        (5e-4, 2),
        (5e-4, 3),
    ]
    assert len({t.id for t in trials}) == 6


def test_names_are_dns_labels_and_label_values() -> None:
    long_name = "a-very-long-sweep-name-that-goes-on.and.on-" + "x" * 200
    spec = spec_with(search={"list": [{"learningRate": 1e-3}]})
    for sweep in ("phase1", long_name, "s", "a" * 63):
        for trial in planning.plan(spec, sweep):
            assert len(trial.job_name) <= 63
            assert DNS_LABEL.match(trial.job_name), trial.job_name
            assert LABEL_VALUE.match(trial.job_name)
            assert trial.job_name.endswith(f"-{trial.id}")
        value = planning.label_value(sweep)
        assert len(value) <= 63 and LABEL_VALUE.match(value)
    assert planning.label_value("phase1") == "phase1"
    assert planning.label_value(long_name) != planning.label_value(long_name + "y")


def source_table() -> list[TrialStatus]:
    def row(trial_id: str, phase: str, objective: float | None, **training: Any) -> TrialStatus:
        return TrialStatus.model_validate(
            {
                "id": trial_id,
                "job": f"phase1-{trial_id}",
                "phase": phase,
                "group": "learning-rate",
                "seed": 42,
                "params": training,
                "objective": objective,
            }
        )

    return [
        row("aaaaaaaaaa", "Succeeded", 0.8333, lora={"rank": 64, "alpha": 128}),
        row("bbbbbbbbbb", "Succeeded", 0.80, learningRate=1e-3),
        row("cccccccccc", "Failed", None, learningRate=1e-2),
        row("dddddddddd", "Succeeded", 0.7667, learningRate=5e-4),
        row("eeeeeeeeee", "Succeeded", 0.70, lora={"rank": 8, "alpha": 16}),
    ]


def test_from_sweep_takes_the_top_succeeded_and_applies_the_override() -> None:
    spec = spec_with(
        dataset={"source": "s3://bucket/nturgbd_rgb/", "videosPerClass": 200},
        search={"fromSweep": {"name": "phase1", "top": 3, "override": {"epochs": 10}}},
    )
    trials = planning.plan(spec, "phase2", source_table())
    assert [(t.training.learning_rate, t.training.lora.rank, t.training.epochs) for t in trials] == [
        (2e-4, 64, 10),
        (1e-3, 16, 10),
        (5e-4, 16, 10),
    ]
    config = planning.trial_config(spec, "research", "phase2", trials[0])
    assert config.dataset.videos_per_class == 200


def test_from_sweep_without_results_says_so() -> None:
    spec = spec_with(search={"fromSweep": {"name": "phase1"}})
    with pytest.raises(planning.PlanError, match="phase1.*no succeeded trial"):
        planning.plan(spec, "phase2", [])


def test_the_cap_is_enforced_with_a_clear_message() -> None:
    # A grid is refused as written (the CRD's CEL rule says the same); other searches once planned (de-duplicated).
    with pytest.raises(SpecError, match=r"search.grid expands to more trials than maxTrials \(12 > 10"):
        spec_with(maxTrials=10, search={"grid": {"learningRate": [1e-4, 2e-4, 3e-4, 4e-4], "epochs": [1, 2, 3]}})
    spec = spec_with(maxTrials=2, search={"list": [{"learningRate": 1e-4}, {"learningRate": 2e-4}, {"epochs": 3}]})
    with pytest.raises(planning.PlanError, match=r"3 trials, more than maxTrials=2; narrow the search or raise"):
        planning.plan(spec, "g")
    huge = spec_with(search={"grid": {"learningRate": [i / 1e4 for i in range(1, 101)], "epochs": list(range(1, 101))}})
    huge_seeds = huge.model_copy(update={"search": huge.search.model_copy(update={"seeds": list(range(101))})})
    with pytest.raises(planning.PlanError, match="1,010,000 trials"):
        planning.plan(huge_seeds, "g")
    assert LoraSweepSpec.model_fields["max_trials"].default == 10_000


def test_trial_config_is_the_trainer_contract() -> None:
    spec = parse_spec(reference_document()["spec"])
    trial = planning.plan(spec, "phase1")[4]
    config = planning.trial_config(spec, "research", "phase1", trial)
    assert config.output == f"s3://bucket/sweeps/research/phase1/trials/{trial.id}/"
    assert (config.group, config.variant, config.seed) == ("learning-rate", "learningRate=0.001", 42)
    assert math.isclose(config.training.learning_rate, 1e-3)
    wire = config.model_dump_json(by_alias=True)
    assert TrialConfig.model_validate_json(wire) == config
    local = planning.trial_config(spec, "research", "phase1", trial, output_root="/tmp/out")
    assert local.output == f"/tmp/out/research/phase1/trials/{trial.id}/"


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({}, "exactly one of groups, grid, random, list, fromSweep, optimize; got none"),
        ({"grid": {"epochs": [1]}, "list": [{}]}, "got grid, list"),
        ({"list": [{"lora": {"rank": 8}}]}, r"search.list\[0\] sets lora.rank=8 without lora.alpha"),
        ({"list": [{}], "seeds": [1, 1]}, "duplicates"),
        ({"random": {"samples": 3, "space": {}}}, "names no parameter"),
        (
            {"random": {"samples": 3, "space": {"epochs": {"choice": [1], "uniform": {"min": 1, "max": 2}}}}},
            "exactly one of choice",
        ),
        ({"random": {"samples": 3, "space": {"learningRate": {"logUniform": {"min": 0, "max": 1}}}}}, "min > 0"),
        ({"list": [{"learningRate": -1}]}, "greater than 0"),
        ({"list": [{"learnRate": 1}]}, "Extra inputs are not permitted"),
    ],
)
def test_bad_searches_are_rejected_with_the_field_path(search: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        spec_with(search=search)
    assert "spec.search" in str(info.value)


def test_load_sweep_file_rejects_other_kinds(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(SpecError, match="exactly one LoraSweep document, found 0"):
        load_sweep_file(path)
    bad = reference_document()
    bad["spec"]["dataset"]["split"] = {"train": 0.7, "val": 0.2, "test": 0.2}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError, match=r"spec.dataset.split: .*sum to 1"):
        load_sweep_file(path)
