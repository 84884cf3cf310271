"""The statistics a small-sample sweep report needs: Wilson intervals, seed spread, and "within noise".

With 30 validation clips one clip moves accuracy by 3.3 points, so a report that ranks trials by
their point accuracy alone over-reads its data. Every accuracy is shown with its 95% Wilson
interval for the split it was measured on, and two results whose intervals overlap are called
"within noise" in plain words.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

Z95 = 1.959963984540054


class Interval(BaseModel):
    model_config = ConfigDict(frozen=True)

    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def wilson_interval(proportion: float, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of a proportion measured on ``n`` samples.

    Wilson rather than the normal approximation because it stays inside [0, 1] and keeps a sensible
    width at 0% and 100%, which tiny splits hit often.
    """
    if n <= 0:
        return Interval(low=0.0, high=1.0)
    p = min(max(proportion, 0.0), 1.0)
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    # At 0 and 1 the bounds are exactly 0 and 1; rounding would otherwise leave them a hair inside.
    low = 0.0 if p == 0.0 else max(0.0, centre - half_width)
    high = 1.0 if p == 1.0 else min(1.0, centre + half_width)
    return Interval(low=min(low, p), high=max(high, p))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; the deviation is None for a single value."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def points_per_sample(n: int) -> float:
    """How many accuracy points one sample is worth on a split of ``n`` samples."""
    return 100.0 / n if n > 0 else math.inf
