"""Which clips a trial uses: NTU RGB+D names, the class mapping, per-class selection and the split.

Everything here is pure (lists in, lists out); `train.plan_split` lists the source and feeds it through.

Split rule (deterministic, stratified): each class's selected clips are shuffled with the seed; then, going
through the classes in config order, the *cumulative* train and val counts are rounded half-up
(``floor(x + 0.5)`` of ``cumulative clips x fraction``), and each class takes the difference from the previous
class. Test takes the rest. So every class is within one clip of its exact share and the totals are the
rounded totals: 4 classes x 50 clips at 70/15/15 give per class 35/8/7, 35/7/8, 35/8/7, 35/7/8 and in total
140/30/30 (as in the reference), where rounding each class alone would give 35/8/7 x 4 = 140/32/28.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lorasweep_trainer.config import REST, ClassSpec, SplitConfig

NTU_NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})_rgb\.avi$")


class DatasetError(Exception):
    """The dataset cannot serve this trial (missing class, too few clips, too many corrupt clips): exit 3."""


@dataclass(frozen=True)
class NtuName:
    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    def filename(self) -> str:
        return (
            f"S{self.setup:03d}C{self.camera:03d}P{self.performer:03d}R{self.replication:03d}A{self.action:03d}_rgb.avi"
        )


@dataclass(frozen=True)
class Clip:
    uri: str
    name: NtuName


@dataclass(frozen=True)
class Sample:
    uri: str
    label: int


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    def keys(self) -> dict[str, list[str]]:
        return {part: [sample.uri for sample in getattr(self, part)] for part in ("train", "val", "test")}


def parse_ntu_name(filename: str) -> NtuName | None:
    """``S001C002P003R002A008_rgb.avi`` -> NtuName(1, 2, 3, 2, 8); anything else -> None."""
    match = NTU_NAME.match(filename)
    if match is None:
        return None
    setup, camera, performer, replication, action = (int(group) for group in match.groups())
    return NtuName(setup, camera, performer, replication, action)


def ntu_clips(objects: Iterable[tuple[str, str]]) -> list[Clip]:
    """(uri, file name) pairs -> the NTU clips among them, sorted by URI; other files are ignored."""
    clips = [Clip(uri, name) for uri, filename in objects if (name := parse_ntu_name(filename)) is not None]
    return sorted(clips, key=lambda clip: clip.uri)


def clips_by_class(clips: Sequence[Clip], classes: Mapping[str, ClassSpec]) -> dict[str, list[str]]:
    """Class name -> the URIs of its clips. A ``rest`` class takes every action no other class names."""
    named = {action: name for name, actions in classes.items() if actions != REST for action in actions}
    rest = next((name for name, actions in classes.items() if actions == REST), None)
    grouped: dict[str, list[str]] = {name: [] for name in classes}
    for clip in clips:
        owner = named.get(clip.name.action, rest)
        if owner is not None:
            grouped[owner].append(clip.uri)
    return grouped


def select(grouped: Mapping[str, Sequence[str]], videos_per_class: int, seed: int, source: str) -> dict[str, list[str]]:
    """``videos_per_class`` URIs per class, drawn with the seed; a class short of clips is a DatasetError."""
    if not any(grouped.values()):
        raise DatasetError(f"no NTU clips (SsssCcccPpppRrrrAaaa_rgb.avi) found under {source!r}")
    missing = [name for name, uris in grouped.items() if not uris]
    if missing:
        raise DatasetError(
            f"no clips for class(es) {missing} under {source!r}; check the action ids in dataset.classes"
        )
    short = {name: len(uris) for name, uris in grouped.items() if len(uris) < videos_per_class}
    if short:
        raise DatasetError(
            f"classes {short} have fewer clips than videosPerClass={videos_per_class} under {source!r}; "
            "lower dataset.videosPerClass or add clips"
        )
    rng = random.Random(seed)
    return {name: sorted(rng.sample(sorted(uris), videos_per_class)) for name, uris in grouped.items()}


def _round_half_up(value: float) -> int:
    # 1e-9 absorbs float error such as 0.7 * 50 = 35.00000000000001 or 22.499999999999996.
    return math.floor(value + 0.5 + 1e-9)


def split(selected: Mapping[str, Sequence[str]], fractions: SplitConfig, seed: int) -> Split:
    """Stratified train/val/test split by cumulative rounding (see the module docstring)."""
    rng = random.Random(seed)
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    seen = 0
    train_before = val_before = 0
    for label, (_name, uris) in enumerate(selected.items()):
        shuffled = list(uris)
        rng.shuffle(shuffled)
        seen += len(shuffled)
        train_total = _round_half_up(seen * fractions.train)
        val_total = _round_half_up(seen * fractions.val)
        n_train = min(train_total - train_before, len(shuffled))
        n_val = min(val_total - val_before, len(shuffled) - n_train)
        train_before, val_before = train_before + n_train, val_before + n_val
        parts["train"] += [Sample(uri, label) for uri in shuffled[:n_train]]
        parts["val"] += [Sample(uri, label) for uri in shuffled[n_train : n_train + n_val]]
        parts["test"] += [Sample(uri, label) for uri in shuffled[n_train + n_val :]]
    empty = [part for part, samples in parts.items() if not samples]
    if empty:
        raise DatasetError(
            f"the {'/'.join(empty)} split would be empty with {seen} clips; raise dataset.videosPerClass"
        )
    return Split(**parts)
