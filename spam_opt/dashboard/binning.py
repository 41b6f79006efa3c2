"""Binning of long step series: consecutive logged steps merged so that a chart holds a bounded number of
points, each bin keeping its largest value (a spike is never averaged away) at its last step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def bins(count: int, max_points: int) -> list[range]:
    """Index ranges that split ``count`` items into at most ``max_points`` consecutive bins of equal width.

    Example::

        bins(5, 2)  # [range(0, 3), range(3, 5)]
    """
    if count == 0:
        return []
    width = math.ceil(count / max_points)
    return [range(i, min(i + width, count)) for i in range(0, count, width)]


def bin_max(steps: Sequence[int], values: Sequence[float], max_points: int) -> tuple[list[int], list[float]]:
    """``(steps, values)`` with at most ``max_points`` points: per bin, its last step and its largest value.

    Example::

        bin_max([1, 2, 3, 4], [0.5, 2.0, 1.0, 0.1], 2)  # ([2, 4], [2.0, 1.0])
    """
    if len(steps) <= max_points:
        return list(steps), list(values)
    chunks = bins(len(steps), max_points)
    return [steps[b[-1]] for b in chunks], [max(values[i] for i in b) for b in chunks]
