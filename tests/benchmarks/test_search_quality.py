"""The search-quality benchmark's arithmetic: hypervolume, checkpoints and the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_loader import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def sq():
    yield from load_benchmark("search_quality")


def optuna_hv(points, ref):
    from optuna._hypervolume import compute_hypervolume

    inside = [(-m, lat) for m, lat in points if lat < ref and m > 0]
    if not inside:
        return 0.0
    return compute_hypervolume(np.array(inside), np.array([0.0, ref])) / ref


def test_hypervolume_matches_optuna_on_random_fronts(sq):
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        points = list(zip(rng.uniform(0, 0.6, n), rng.uniform(1, 20, n), strict=True))
        ref = float(rng.uniform(5, 15))  # some points lie beyond the reference
        assert sq.hypervolume_2d(points, ref) == pytest.approx(optuna_hv(points, ref), abs=1e-12)


def test_hypervolume_by_hand(sq):
    # (0.5, 2 ms) alone: 0.5 * (10 - 2) / 10; (0.3, 1 ms) adds 0.3 * (2 - 1) / 10.
    assert sq.hypervolume_2d([(0.5, 2.0)], 10.0) == pytest.approx(0.4)
    assert sq.hypervolume_2d([(0.5, 2.0), (0.3, 1.0)], 10.0) == pytest.approx(0.43)
    # A dominated point, a point at the reference and an empty front add nothing.
    assert sq.hypervolume_2d([(0.5, 2.0), (0.4, 3.0), (0.9, 10.0)], 10.0) == pytest.approx(0.4)
    assert sq.hypervolume_2d([], 10.0) == 0.0
    with pytest.raises(ValueError, match="reference latency"):
        sq.hypervolume_2d([(0.5, 2.0)], 0.0)


def test_checkpoints(sq):
    assert sq.checkpoints(30, 5) == [5, 10, 15, 20, 25, 30]
    assert sq.checkpoints(12, 5) == [5, 10, 12]
    assert sq.checkpoints(3, 5) == [3]


def test_summary_ratio_and_seeds_ahead(sq):
    ks = [10, 20]
    runs = [
        {"sampler": "tpe", "seed": 0, "hv": {10: 0.2, 20: 0.3}},
        {"sampler": "random", "seed": 0, "hv": {10: 0.2, 20: 0.25}},
        {"sampler": "tpe", "seed": 1, "hv": {10: 0.1, 20: 0.1}},
        {"sampler": "random", "seed": 1, "hv": {10: 0.1, 20: 0.12}},
    ]
    summary = sq.summarise(runs, ks)
    assert summary["mean_hv"]["tpe"] == pytest.approx({10: 0.15, 20: 0.2})
    assert summary["ratio_tpe_over_random"][10] == pytest.approx(1.0)
    assert summary["ratio_tpe_over_random"][20] == pytest.approx(0.2 / 0.185)
    assert (summary["tpe_ahead_at_n"], summary["seeds_compared"]) == (1, 2)


def test_bad_budget_is_refused(sq, capsys):
    assert sq.main(["--budget", "0", "--synthetic"]) == 2
    assert "--budget must be > 0 ms" in capsys.readouterr().err
