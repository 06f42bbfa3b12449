"""Capacity: the highest request rate a system sustains below a normalized-latency threshold.

The paper reads throughput off Figure 12 as the rate where a curve explodes; pagelab makes that a
number: the rate at which normalized latency crosses `threshold` (default 0.5 s/token), linearly
interpolated between the last measured rate below it and the first above (docs/metrics.md).
"""

from __future__ import annotations

import math


def capacity(rates: list[float], latencies: list[float], threshold: float) -> float:
    """Interpolated crossing rate; the highest rate if the curve never crosses; 0 if even the lowest
    rate is above the threshold."""
    points = sorted((r, lat) for r, lat in zip(rates, latencies) if not math.isnan(lat))
    if not points:
        return float("nan")
    if points[0][1] >= threshold:
        return 0.0
    for (r0, l0), (r1, l1) in zip(points, points[1:]):
        if l1 >= threshold:
            return r0 + (r1 - r0) * (threshold - l0) / (l1 - l0)
    return points[-1][0]
