"""Noise-aware fronts: latencies the samples cannot tell apart are one latency."""

from __future__ import annotations

import random

import pytest

from jetsearch.fronts import (
    Point,
    dominates,
    latency_tied,
    mann_whitney_p,
    nondominated_sort,
    pareto_front,
    ranked,
    tie_groups,
)


def samples(center: float, spread: float, n: int = 40, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [center + rng.uniform(-spread, spread) for _ in range(n)]


def test_mann_whitney_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for _ in range(30):
        x = [round(rng.gauss(10, 1), 1) for _ in range(rng.randint(8, 40))]
        y = [round(rng.gauss(10.4, 1), 1) for _ in range(rng.randint(8, 40))]
        ours = mann_whitney_p(x, y)
        theirs = scipy_stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
        assert ours == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-12)


def test_overlapping_samples_tie_and_separated_ones_do_not():
    # Two sample sets on a 4 ms timer grid with the same distribution: medians differ a little.
    grid = [20.0, 24.0, 24.0, 28.0]
    a = Point("a", 0.50, 24.01, samples=[grid[i % 4] for i in range(40)])
    b = Point("b", 0.52, 24.08, samples=[grid[(i + 1) % 4] for i in range(40)])
    assert latency_tied(a, b)
    # Known overlap: uniform on [9.5, 10.5] against [10.3, 11.3]; 20% of their ranges overlap,
    # which 40 samples a side show clearly as different.
    c = Point("c", 0.50, 10.0, samples=samples(10.0, 0.5, seed=1))
    d = Point("d", 0.52, 10.8, samples=samples(10.8, 0.5, seed=2))
    assert not latency_tied(c, d)
    assert mann_whitney_p(c.samples, d.samples) < 1e-6
    # Fully overlapping uniform sets with different seeds tie.
    e = Point("e", 0.50, 10.0, samples=samples(10.0, 0.5, seed=3))
    f = Point("f", 0.52, 10.02, samples=samples(10.0, 0.5, seed=4))
    assert latency_tied(e, f)


def test_a_tie_lets_the_more_accurate_network_dominate():
    grid = [20.0, 24.0, 24.0, 28.0]
    slow_looking = Point("b", 0.55, 24.08, samples=[grid[(i + 2) % 4] for i in range(40)])
    fast_looking = Point("a", 0.50, 24.01, samples=[grid[i % 4] for i in range(40)])
    middle = Point("m", 0.52, 24.03, samples=[grid[(i + 1) % 4] for i in range(40)])
    assert dominates(slow_looking, fast_looking)
    assert not dominates(fast_looking, slow_looking)
    # By the medians alone all three would be on the front; as one latency only the best is.
    assert [p.key for p in pareto_front([fast_looking, middle, slow_looking])] == ["b"]


def test_without_samples_the_numbers_decide():
    a, b = Point("a", 0.5, 10.0), Point("b", 0.6, 10.1)
    assert not latency_tied(a, b)
    assert {p.key for p in pareto_front([a, b])} == {"a", "b"}


def test_nondominated_sort_layers_and_infeasible_last():
    pts = [
        Point("f1a", 0.60, 20.0),
        Point("f1b", 0.50, 10.0),
        Point("f2", 0.45, 15.0),  # dominated by f1b only
        Point("f3", 0.40, 25.0),  # dominated by everything above
        Point("over", 0.90, 50.0, feasible=False, violation=10.0),
        Point("over2", 0.90, 45.0, feasible=False, violation=5.0),
    ]
    fronts = nondominated_sort(pts)
    assert [[p.key for p in f] for f in fronts] == [
        ["f1b", "f1a"],
        ["f2"],
        ["f3"],
        ["over2", "over"],
    ]
    assert [p.key for p in ranked(pts)][:3] == ["f1a", "f1b", "f2"] or [p.key for p in ranked(pts)][
        :3
    ] == ["f1b", "f1a", "f2"]


def test_tie_groups_chain_tied_neighbours():
    grid = [20.0, 24.0, 24.0, 28.0]
    a = Point("a", 0.5, 24.01, samples=[grid[i % 4] for i in range(40)])
    b = Point("b", 0.5, 24.03, samples=[grid[(i + 1) % 4] for i in range(40)])
    c = Point("c", 0.5, 40.0, samples=[40.0 + (i % 3) for i in range(40)])
    assert [[p.key for p in g] for g in tie_groups([c, b, a])] == [["a", "b"], ["c"]]


def test_the_front_plot_marks_the_pick(tmp_path):
    pytest.importorskip("matplotlib")
    from jetsearch.report import TrialRow, pick, plot_front

    def row(number, miou, latency, state="COMPLETE", preset=None):
        return TrialRow(
            number,
            state,
            miou,
            latency,
            "measured-local",
            1000,
            10**6,
            True,
            preset,
            f"h{number}",
            None,
            None,
            False,
        )

    rows = [
        row(0, 0.30, 5.0, preset="nano"),
        row(1, 0.40, 8.0),
        row(2, 0.45, 12.0),
        row(3, None, 30.0, state="PRUNED"),
    ]

    class Study:
        study_name = "s"
        user_attrs = {"spec": {"latency": {"budget_ms": 20}}}

    plain = plot_front(Study(), rows, tmp_path / "plain.png")
    marked = plot_front(Study(), rows, tmp_path / "marked.png", picked=pick(rows, "knee"))
    assert plain.read_bytes() != marked.read_bytes()


def test_two_miou_with_overlapping_intervals_are_one_accuracy():
    from jetsearch.fronts import miou_interval, miou_tied

    # 90% intervals: 0.50 +- 0.0164 and 0.52 +- 0.0164 overlap; 0.50 and 0.56 do not.
    slow_close = Point("slow", miou=0.52, latency_ms=30.0, miou_sd=0.01)
    fast = Point("fast", miou=0.50, latency_ms=10.0, miou_sd=0.01)
    slow_far = Point("far", miou=0.56, latency_ms=30.0, miou_sd=0.01)
    assert miou_interval(fast) == pytest.approx((0.50 - 0.01645, 0.50 + 0.01645))
    assert miou_tied(fast, slow_close) and not miou_tied(fast, slow_far)
    # Inside the interval the faster network is as accurate, so it dominates the slower one.
    assert dominates(fast, slow_close) and not dominates(slow_close, fast)
    assert [p.key for p in pareto_front([fast, slow_close])] == ["fast"]
    # Beyond it the slower network is more accurate: both stay on the front.
    assert {p.key for p in pareto_front([fast, slow_far])} == {"fast", "far"}
    # Without an uncertainty the numbers compare as they are (the old rule).
    bare = Point("bare", miou=0.52, latency_ms=30.0)
    assert not miou_tied(Point("x", miou=0.50, latency_ms=10.0), bare)


def test_tied_latency_and_tied_miou_dominate_neither_way():

    a = Point("a", miou=0.50, latency_ms=10.0, miou_sd=0.02)
    b = Point("b", miou=0.51, latency_ms=10.0, miou_sd=0.02)
    assert not dominates(a, b) and not dominates(b, a)
    assert {p.key for p in pareto_front([a, b])} == {"a", "b"}
