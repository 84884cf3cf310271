"""NTU names, the class mapping, per-class selection and the stratified split."""

from __future__ import annotations

from collections import Counter

import pytest

from lorasweep_trainer.config import SplitConfig
from lorasweep_trainer.data import (
    DatasetError,
    NtuName,
    clips_by_class,
    ntu_clips,
    parse_ntu_name,
    select,
    split,
)

REFERENCE_CLASSES = {"sit_down": [8], "stand_up": [9], "waving": [23], "other": "rest"}


def names(action: int, count: int) -> list[tuple[str, str]]:
    files = [NtuName(1 + i // 40, 1 + i % 3, 1 + i % 40, 1 + (i // 3) % 2, action).filename() for i in range(count)]
    return [(f"s3://b/ntu/{name}", name) for name in files]


def test_parse_ntu_name() -> None:
    assert parse_ntu_name("S001C002P003R002A008_rgb.avi") == NtuName(1, 2, 3, 2, 8)
    assert parse_ntu_name("S017C003P020R002A120_rgb.avi") == NtuName(17, 3, 20, 2, 120)
    assert NtuName(17, 3, 20, 2, 120).filename() == "S017C003P020R002A120_rgb.avi"


@pytest.mark.parametrize(
    "name",
    [
        "S001C002P003R002A008.avi",
        "S001C002P003R002A008_depth.avi",
        "s001c002p003r002a008_rgb.avi",
        "x/S001C002P003R002A8_rgb.avi",
        "README.md",
    ],
)
def test_non_ntu_names_are_ignored(name: str) -> None:
    assert parse_ntu_name(name) is None
    assert ntu_clips([(f"s3://b/{name}", name)]) == []


def test_rest_takes_every_other_action() -> None:
    clips = ntu_clips(names(8, 3) + names(9, 2) + names(23, 1) + names(1, 4) + names(50, 5))
    grouped = clips_by_class(clips, REFERENCE_CLASSES)
    assert {name: len(uris) for name, uris in grouped.items()} == {
        "sit_down": 3,
        "stand_up": 2,
        "waving": 1,
        "other": 9,
    }
    assert all("A008" in uri for uri in grouped["sit_down"])


def test_without_rest_other_actions_are_dropped() -> None:
    clips = ntu_clips(names(8, 3) + names(9, 2) + names(1, 4))
    grouped = clips_by_class(clips, {"sit": [8], "stand": [9]})
    assert {name: len(uris) for name, uris in grouped.items()} == {"sit": 3, "stand": 2}


def test_a_class_may_span_several_actions() -> None:
    grouped = clips_by_class(ntu_clips(names(8, 2) + names(9, 3)), {"posture": [8, 9], "other": "rest"})
    assert len(grouped["posture"]) == 5
    assert grouped["other"] == []


def reference_selection(seed: int = 42) -> dict[str, list[str]]:
    clips = ntu_clips(names(8, 60) + names(9, 55) + names(23, 70) + names(1, 40) + names(2, 40))
    return select(clips_by_class(clips, REFERENCE_CLASSES), 50, seed, "s3://b/ntu/")


def test_reference_split_is_140_30_30_stratified() -> None:
    parts = split(reference_selection(), SplitConfig(), seed=42)
    assert (len(parts.train), len(parts.val), len(parts.test)) == (140, 30, 30)
    per_class = {part: Counter(s.label for s in getattr(parts, part)) for part in ("train", "val", "test")}
    assert per_class["train"] == {0: 35, 1: 35, 2: 35, 3: 35}
    assert per_class["val"] == {0: 8, 1: 7, 2: 8, 3: 7}
    assert per_class["test"] == {0: 7, 1: 8, 2: 7, 3: 8}
    uris = [s.uri for part in ("train", "val", "test") for s in getattr(parts, part)]
    assert len(uris) == len(set(uris)) == 200


def test_split_is_deterministic_and_seeded() -> None:
    assert split(reference_selection(), SplitConfig(), 42) == split(reference_selection(), SplitConfig(), 42)
    assert (
        split(reference_selection(), SplitConfig(), 42).keys() != split(reference_selection(), SplitConfig(), 7).keys()
    )
    assert reference_selection(42) != reference_selection(7)


@pytest.mark.parametrize("per_class,classes", [(24, 4), (10, 3), (7, 2), (101, 5)])
def test_split_totals_round_and_classes_stay_within_one(per_class: int, classes: int) -> None:
    selected = {f"c{c}": [f"s3://b/c{c}/{i}" for i in range(per_class)] for c in range(classes)}
    fractions = SplitConfig()
    parts = split(selected, fractions, 0)
    total = per_class * classes
    assert len(parts.train) == int(total * fractions.train + 0.5)
    assert len(parts.train) + len(parts.val) + len(parts.test) == total
    for part, fraction in (("train", fractions.train), ("val", fractions.val)):
        counts = Counter(s.label for s in getattr(parts, part))
        assert all(abs(counts[c] - per_class * fraction) <= 1 for c in range(classes))


def test_missing_class_is_a_dataset_error() -> None:
    clips = ntu_clips(names(8, 60) + names(9, 55) + names(1, 40))
    with pytest.raises(DatasetError, match=r"no clips for class\(es\) \['waving'\]"):
        select(clips_by_class(clips, REFERENCE_CLASSES), 50, 42, "s3://b/ntu/")


def test_no_clips_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="no NTU clips"):
        select(clips_by_class([], REFERENCE_CLASSES), 50, 42, "s3://b/empty/")


def test_too_few_clips_names_the_class_and_the_fix() -> None:
    clips = ntu_clips(names(8, 60) + names(9, 12) + names(23, 70) + names(1, 80))
    with pytest.raises(DatasetError, match=r"\{'stand_up': 12\}.*lower dataset.videosPerClass"):
        select(clips_by_class(clips, REFERENCE_CLASSES), 50, 42, "s3://b/ntu/")


def test_split_that_would_be_empty_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="would be empty"):
        split({"a": ["x"], "b": ["y"]}, SplitConfig(), 0)
