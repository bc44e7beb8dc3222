"""A win is a win only beyond the seed spread: Welch's one-sided t-test, written out."""

from __future__ import annotations

import math

import pytest

from jetsearch.compare import compare_latency, compare_seeds, incomplete_beta, judge, t_sf


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


def test_measured_latency_needs_the_median_and_half_the_rounds():
    # No slower at the median and faster in 3 of 5 rounds.
    preset = [10.2, 10.1, 10.3, 10.4, 10.1]
    ok = compare_latency([9.8, 10.5, 9.9, 10.6, 10.0], preset, measured=True)
    assert ok.not_slower and ok.faster_rounds == 3 and ok.rounds == 5
    assert ok.candidate_ms == 10.0 and ok.baseline_ms == 10.2
    # Faster in 3 rounds by a hair, far slower in the other two: the median says slower.
    hair = compare_latency([9.9, 10.9, 11.9, 20.0, 20.0], [10, 11, 12, 5, 5], measured=True)
    assert hair.faster_rounds == 3 and hair.candidate_ms > hair.baseline_ms
    assert not hair.not_slower
    # A lower median (3 against 4 ms) but faster in only 2 of 5 rounds: not enough.
    few = compare_latency([3, 3, 3, 10, 10], [2, 2, 11, 11, 4], measured=True)
    assert few.candidate_ms <= few.baseline_ms and few.faster_rounds == 2 and not few.not_slower
    assert "faster in 2/5 rounds" in few.reason
    with pytest.raises(ValueError, match="pair up"):
        compare_latency([1.0, 2.0], [1.0], measured=True)


def test_an_estimate_is_one_number_each():
    assert compare_latency([5.0], [5.0], measured=False).not_slower
    slower = compare_latency([5.1], [5.0], measured=False)
    assert not slower.not_slower and slower.rounds == 0 and "estimated" in slower.reason


def test_verdicts_combine_the_seed_test_and_the_latency_rule():
    fast = compare_latency([9.0, 9.0, 9.0], [10.0, 10.0, 10.0], measured=True)
    slow = compare_latency([11.0, 11.0, 11.0], [10.0, 10.0, 10.0], measured=True)
    clear, base = [0.42, 0.44, 0.43], [0.38, 0.39, 0.37]
    assert judge(clear, base, fast).verdict == "win"
    assert judge(clear, base, slow).verdict == "slower"
    assert judge([0.42, 0.36, 0.45], [0.38, 0.41, 0.37], fast).verdict == "tie"
    loss = judge(base, clear, fast)
    assert loss.verdict == "loss" and "lower by" in loss.reason and loss.worse.better
    assert judge([0.60], base, fast).verdict == "untested"
    win = judge(clear, base, fast)
    assert win.reason.startswith("win: mIoU higher by") and "faster in 3/3" in win.reason
