"""A win is a win only beyond the seed spread: Welch's one-sided t-test, written out."""

from __future__ import annotations

import math

import pytest

from jetsearch.compare import compare_seeds, incomplete_beta, t_sf


@pytest.mark.parametrize("t", [-3.0, -0.5, 0.0, 0.7, 2.0, 10.0])
def test_t_tail_matches_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
    # df = 1 is the Cauchy distribution; df = 2 has a closed form too.
    assert t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-12)
    assert t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_incomplete_beta_at_known_points():
    assert incomplete_beta(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert incomplete_beta(2, 1, 0.5) == pytest.approx(0.25)  # x^2
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        incomplete_beta(1, 1, 1.5)


def test_a_higher_mean_inside_the_seed_spread_is_not_a_win():
    # Hand-made: the derived network's mean is 2.3 points higher, but its seeds spread over
    # 9 points; Welch's t = 0.80, df = 2.79, one-sided p = 0.242 (scipy's ttest_ind agrees).
    verdict = compare_seeds([0.42, 0.36, 0.45], [0.38, 0.41, 0.37])
    assert verdict.candidate_mean > verdict.baseline_mean
    assert verdict.t == pytest.approx(0.80296, abs=1e-4)
    assert verdict.df == pytest.approx(2.79169, abs=1e-4)
    assert verdict.p_value == pytest.approx(0.24235, abs=1e-4)
    assert not verdict.better
    assert "inside the seed spread" in verdict.reason


def test_a_clear_gap_is_a_win_and_a_lower_mean_never_is():
    win = compare_seeds([0.42, 0.44, 0.43], [0.38, 0.39, 0.37])
    assert win.better and win.p_value < 0.10
    assert not compare_seeds([0.38, 0.39, 0.37], [0.42, 0.44, 0.43]).better
    # One seed has no spread to compare with: never a win, and the reason says why.
    single = compare_seeds([0.60], [0.30, 0.31])
    assert not single.better and "at least 2 seeds" in single.reason
    # Identical seeds, higher: no spread at all, the difference is real.
    assert compare_seeds([0.5, 0.5], [0.4, 0.4]).better
