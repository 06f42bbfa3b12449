"""Capacity: the highest request rate a system sustains below a normalized-latency threshold, or with a
target share of requests meeting their SLOs.

The paper reads throughput off Figure 12 as the rate where a curve explodes; pagelab makes that a
number: the rate at which normalized latency crosses `threshold` (default 0.5 s/token), linearly
interpolated between the last measured rate below it and the first above (docs/metrics.md). The SLO
capacity is the same reading of SLO attainment against a target (slo_capacity), on a grid of rates or on
the rates a bisection picks (RateBisection).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass


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


# SLO capacity (docs/metrics.md, "SLOs and goodput"): the highest request rate at which at least a target
# fraction of requests meets every SLO given. Attainment falls as the rate grows, so the rule mirrors
# capacity() above with the inequality turned round: a rate meets the target when attainment >= target.


def slo_bracket(rates: list[float], attainments: list[float], target: float) -> tuple[float, float]:
    """(the highest measured rate meeting the target below the first that misses it, that first missing
    rate), in rate order; NaN for a side with no such rate. A NaN attainment misses."""
    met, missed = float("nan"), float("nan")
    for rate, value in sorted(zip(rates, attainments)):
        if value >= target:
            met = rate
        else:
            missed = rate
            break
    return met, missed


def slo_capacity(rates: list[float], attainments: list[float], target: float) -> float:
    """The rate where attainment crosses `target`, linearly interpolated between the bracket's two
    measured rates (slo_bracket); the highest rate if every rate meets it; 0 if even the lowest misses.
    NaN with no points."""
    if not rates:
        return float("nan")
    met, missed = slo_bracket(rates, attainments, target)
    if math.isnan(met):
        return 0.0
    if math.isnan(missed):
        return met
    by_rate = dict(zip(rates, attainments))
    a0, a1 = by_rate[met], by_rate[missed]
    if math.isnan(a1):  # nothing to interpolate towards
        return met
    return met + (missed - met) * (a0 - target) / (a0 - a1)


def search_rate(rate: float) -> float:
    """A rate as points.csv keys it (`%g`, six significant digits), so that the rate a search picks and
    the one it reads back from points.csv are the same float."""
    return float(f"{rate:g}")


@dataclass(frozen=True)
class RateBisection:
    """Bisection on the request rate for the highest rate whose SLO attainment is at least `target`.

    Runs `low`; if it misses, the capacity is below `low` and the search ends. Else runs `high`; if it
    meets, the capacity is at least `high` and the search ends. Else halves [met, missed] at its midpoint
    until missed - met <= max(rel_tol x met, abs_tol), or `max_runs` rates have run (low and high
    included). Without early ends that is 2 + ceil(log2((high - low) / tolerance)) runs.

    `next_rate` is a pure function of the rates measured so far: it replays the search from its start
    against them, so a search resumes from the finished points of an interrupted run and picks exactly
    the rates an uninterrupted one would have (rates rounded as points.csv writes them, search_rate)."""

    low: float
    high: float
    target: float
    rel_tol: float = 0.05
    abs_tol: float = 0.0
    max_runs: int = 12

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"the search needs 0 < low < high req/s, got low {self.low}, high {self.high}")
        if self.rel_tol < 0 or self.abs_tol < 0 or self.rel_tol == self.abs_tol == 0:
            raise ValueError(
                "the search needs rel_tol or abs_tol > 0 (neither negative), "
                f"got rel_tol {self.rel_tol}, abs_tol {self.abs_tol}"
            )
        if self.max_runs < 2:
            raise ValueError(f"the search needs max_runs >= 2 (low and high), got {self.max_runs}")

    def next_rate(self, measured: Mapping[float, float]) -> float | None:
        """The next rate to run, given the attainment measured at each rate so far; None when done."""
        low, high = search_rate(self.low), search_rate(self.high)
        if low not in measured:
            return low
        if not measured[low] >= self.target:
            return None  # the capacity is below low
        if high not in measured:
            return high
        if measured[high] >= self.target:
            return None  # the capacity is at least high
        met, missed, runs = low, high, 2
        while runs < self.max_runs and missed - met > max(self.rel_tol * met, self.abs_tol):
            mid = search_rate((met + missed) / 2)
            if not met < mid < missed:
                break  # the bracket is as narrow as six significant digits allow
            if mid not in measured:
                return mid
            runs += 1
            if measured[mid] >= self.target:
                met = mid
            else:
                missed = mid
        return None

    def run(self, attainment: Callable[[float], float]) -> dict[float, float]:
        """The whole search against a function of the rate (tests; the harness runs points instead)."""
        measured: dict[float, float] = {}
        while (rate := self.next_rate(measured)) is not None:
            measured[rate] = attainment(rate)
        return measured
