"""Frame sampling: which frames of a clip the model sees."""

from __future__ import annotations

import random

import pytest

from lorasweep_trainer.sampling import eval_indices, train_indices


def test_eval_takes_segment_centres() -> None:
    assert eval_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert eval_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]


def test_eval_short_clip_repeats_frames_in_order() -> None:
    assert eval_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert eval_indices(1, 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("num_frames", [1, 2, 7, 8, 9, 16, 100, 301])
def test_train_stays_in_its_segment_and_in_range(num_frames: int) -> None:
    rng = random.Random(0)
    for _ in range(200):
        indices = train_indices(num_frames, 8, rng)
        assert len(indices) == 8
        assert indices == sorted(indices)
        segment = num_frames / 8
        for i, index in enumerate(indices):
            assert 0 <= index < num_frames
            assert int(i * segment) <= index <= min(num_frames - 1, int((i + 1) * segment))


def test_train_is_reproducible_and_jitters() -> None:
    first = [train_indices(100, 8, random.Random(7)) for _ in range(2)]
    assert first[0] == first[1]
    rng = random.Random(7)
    draws = {tuple(train_indices(100, 8, rng)) for _ in range(20)}
    assert len(draws) > 1


def test_rejects_empty_clips() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        eval_indices(0, 8)
    with pytest.raises(ValueError, match="frames_per_clip"):
        train_indices(10, 0, random.Random(0))
