"""The robust statistics the detector is built from: medians and MADs, sampling spreads.

Every test compares a week with a baseline of weeks in the same way: a centre (a median), a spread
(the robust standard deviation of the baseline, floored by the sampling noise of the week and by a
fixed floor, so that a perfectly flat history does not make every small change news), a z-score in
the alarming direction, and a practical minimum: a change must be both unusual for this history
and big enough to matter.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# MAD times this estimates the standard deviation of normally distributed data.
MAD_SCALE = 1.4826


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def robust_spread(values: Sequence[float], centre: float) -> float:
    """1.4826 x the median absolute deviation from `centre`."""
    return MAD_SCALE * median([abs(v - centre) for v in values])


def binomial_points(a: float, b: float, n: float) -> float:
    """The standard deviation, in points, of a rate (percent) measured on n requests, for the true
    rate between a and b that spreads most: a rate near 0 must not make any failure news."""
    if n <= 0:
        return math.inf
    low, high = sorted((a / 100, b / 100))
    p = min(max(0.5, low), high)
    return 100 * math.sqrt(p * (1 - p) / n)


def poisson_log(count: float) -> float:
    """The standard deviation of log(count) for a Poisson count: 1/sqrt(count)."""
    return math.inf if count <= 0 else 1 / math.sqrt(count)
