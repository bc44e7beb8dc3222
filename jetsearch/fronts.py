"""Pareto fronts of (mIoU up, latency down) that know both figures are uncertain.

A latency is a set of timed samples, not a number. Two networks whose samples cannot be told
apart (a two-sided Mann-Whitney U test at ``alpha``) have **one** latency: neither is faster, so
neither dominates the other on latency and the front keeps the more accurate one. On a busy
machine whose timer steps by 4 ms, medians of 24.01, 24.03 and 24.08 ms are one latency.

    >>> a = Point("a", miou=0.50, latency_ms=24.01, samples=[20, 24, 24, 28, 24, 20, 28, 24])
    >>> b = Point("b", miou=0.52, latency_ms=24.08, samples=[24, 20, 28, 24, 24, 28, 20, 24])
    >>> latency_tied(a, b)
    True
    >>> [p.key for p in pareto_front([a, b])]      # b is as fast and more accurate
    ['b']

Points without samples (estimates, trials of older versions) compare by their numbers.

An mIoU is uncertain too: the frames it was measured on are a sample (a bootstrap over them gives
a standard deviation), and a second training would differ. A point carries that uncertainty as
``miou_sd``; two mIoU whose 90% intervals (``miou +- 1.645 * miou_sd``) overlap are **one**
accuracy, so neither is more accurate:

    >>> c = Point("c", miou=0.50, latency_ms=10.0, miou_sd=0.01)
    >>> d = Point("d", miou=0.52, latency_ms=30.0, miou_sd=0.01)
    >>> miou_tied(c, d)
    True
    >>> [p.key for p in pareto_front([c, d])]      # c is as accurate and faster
    ['c']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_ALPHA = 0.05
MIN_SAMPLES = 5  # fewer than this per side: no test, the numbers are compared as they are
MIOU_Z = 1.645  # half-width of a 90% interval in standard deviations


@dataclass(frozen=True)
class Point:
    """One network on the mIoU / latency plane."""

    key: str
    miou: float
    latency_ms: float
    samples: Sequence[float] = field(default=(), compare=False, repr=False)
    feasible: bool = True
    violation: float = 0.0  # how far over the budget (ms) an infeasible point is
    miou_sd: float = 0.0  # the mIoU's standard deviation (bootstrap over frames, seeds)


def mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie-corrected).

    Good from about 8 samples a side, which every measured latency has (at least 20 timed runs).
    Identical constant samples give 1.0.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both sample sets must be non-empty")
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (abs(u1 - mean) - 0.5) / math.sqrt(var)  # continuity correction
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def latency_tied(a: Point, b: Point, alpha: float = DEFAULT_ALPHA) -> bool:
    """True when the latency samples of ``a`` and ``b`` cannot be told apart at ``alpha``."""
    if a.latency_ms == b.latency_ms:
        return True
    if len(a.samples) < MIN_SAMPLES or len(b.samples) < MIN_SAMPLES:
        return False
    return mann_whitney_p(a.samples, b.samples) >= alpha


def miou_interval(p: Point) -> tuple[float, float]:
    """The 90% interval of ``p``'s mIoU (a point without an uncertainty: its number)."""
    half = MIOU_Z * max(p.miou_sd, 0.0)
    return p.miou - half, p.miou + half


def miou_tied(a: Point, b: Point) -> bool:
    """True when the 90% intervals of the two mIoU overlap (equal numbers always tie)."""
    if a.miou == b.miou:
        return True
    low_a, high_a = miou_interval(a)
    low_b, high_b = miou_interval(b)
    return low_a <= high_b and low_b <= high_a


def dominates(a: Point, b: Point, alpha: float = DEFAULT_ALPHA) -> bool:
    """``a`` is at least as accurate and at least as fast as ``b`` and better in one of them.

    "As fast" includes a latency tie and "as accurate" an mIoU tie; "faster" and "more
    accurate" need a difference the samples and the intervals show.
    """
    fast_tie, accuracy_tie = latency_tied(a, b, alpha), miou_tied(a, b)
    if fast_tie and accuracy_tie:
        return False
    if fast_tie:
        return a.miou > b.miou
    if accuracy_tie:
        return a.latency_ms < b.latency_ms
    return a.miou > b.miou and a.latency_ms < b.latency_ms


def nondominated_sort(points: Sequence[Point], alpha: float = DEFAULT_ALPHA) -> list[list[Point]]:
    """Fronts F1, F2, ...: F1 is non-dominated, F2 is non-dominated once F1 is removed, ...

    Only feasible points take part; infeasible ones form the last group, least violation first.
    """
    remaining = [p for p in points if p.feasible]
    fronts: list[list[Point]] = []
    while remaining:
        front = [p for p in remaining if not any(dominates(o, p, alpha) for o in remaining)]
        fronts.append(sorted(front, key=lambda p: (p.latency_ms, -p.miou)))
        keys = {id(p) for p in front}
        remaining = [p for p in remaining if id(p) not in keys]
    infeasible = sorted((p for p in points if not p.feasible), key=lambda p: p.violation)
    if infeasible:
        fronts.append(infeasible)
    return fronts


def crowding_order(front: Sequence[Point]) -> list[Point]:
    """A front ordered by NSGA-II crowding distance, extremes first (ties by mIoU)."""
    if len(front) <= 2:
        return sorted(front, key=lambda p: -p.miou)
    distance = {id(p): 0.0 for p in front}
    for value in (lambda p: p.miou, lambda p: p.latency_ms):
        ordered = sorted(front, key=value)
        span = value(ordered[-1]) - value(ordered[0]) or 1.0
        distance[id(ordered[0])] = distance[id(ordered[-1])] = math.inf
        for left, mid, right in zip(ordered, ordered[1:], ordered[2:], strict=False):
            distance[id(mid)] += (value(right) - value(left)) / span
    return sorted(front, key=lambda p: (-distance[id(p)], -p.miou))


def ranked(points: Sequence[Point], alpha: float = DEFAULT_ALPHA) -> list[Point]:
    """Every point, best first: by front, then by crowding distance within a front."""
    order: list[Point] = []
    for front in nondominated_sort(points, alpha):
        order.extend(crowding_order(front) if front[0].feasible else front)
    return order


def pareto_front(points: Sequence[Point], alpha: float = DEFAULT_ALPHA) -> list[Point]:
    """The feasible non-dominated points, fastest first."""
    fronts = nondominated_sort(points, alpha)
    return fronts[0] if fronts and fronts[0][0].feasible else []


def tie_groups(front: Sequence[Point], alpha: float = DEFAULT_ALPHA) -> list[list[Point]]:
    """Runs of consecutive front points (fastest first) whose latencies are tied pairwise."""
    groups: list[list[Point]] = []
    for p in sorted(front, key=lambda p: p.latency_ms):
        if groups and latency_tied(groups[-1][-1], p, alpha):
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups
