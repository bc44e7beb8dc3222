"""Is one network better than another beyond the noise of training it?

Two trainings of one network under one recipe differ by points of mIoU, so a derived network
replaces a preset only when its mean over seeds is higher by more than the seed spread allows:
Welch's t-test (unequal variances), one-sided, at a stated confidence (90% by default)::

    >>> verdict = compare_seeds([0.42, 0.44, 0.43], [0.38, 0.39, 0.37])
    >>> verdict.better, round(verdict.p_value, 4)
    (True, 0.0018)
    >>> compare_seeds([0.42, 0.36, 0.45], [0.38, 0.41, 0.37]).better   # inside the spread
    False

The t distribution's tail is computed here (the regularised incomplete beta function by its
continued fraction, Numerical Recipes 6.4), so no statistics package is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_CONFIDENCE = 0.90
MIN_SEEDS = 2


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@dataclass(frozen=True)
class SeedComparison:
    """The verdict on ``candidate`` against ``baseline`` over their seeds."""

    candidate_mean: float
    baseline_mean: float
    candidate_sd: float
    baseline_sd: float
    t: float
    df: float
    p_value: float  # one-sided: P(a difference this large if the candidate were no better)
    confidence: float
    better: bool
    reason: str


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def compare_seeds(
    candidate: Sequence[float],
    baseline: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
) -> SeedComparison:
    """Welch's one-sided t-test that ``candidate``'s mean is higher than ``baseline``'s.

    ``better`` only when both have at least two seeds (a spread to compare with), the mean is
    higher, and the p-value is below ``1 - confidence``.
    """
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must lie in [0.5, 1), got {confidence}")
    if len(candidate) < MIN_SEEDS or len(baseline) < MIN_SEEDS:
        mean_c = sum(candidate) / len(candidate) if candidate else math.nan
        mean_b = sum(baseline) / len(baseline) if baseline else math.nan
        return SeedComparison(
            mean_c, mean_b, math.nan, math.nan, math.nan, math.nan, math.nan, confidence, False,
            f"needs at least {MIN_SEEDS} seeds of each to know the spread "
            f"(got {len(candidate)} and {len(baseline)})",
        )  # fmt: skip
    mean_c, sd_c = _mean_sd(candidate)
    mean_b, sd_b = _mean_sd(baseline)
    se2_c, se2_b = sd_c**2 / len(candidate), sd_b**2 / len(baseline)
    se = math.sqrt(se2_c + se2_b)
    diff = mean_c - mean_b
    if se == 0:
        t, df = (math.inf if diff > 0 else -math.inf if diff < 0 else 0.0), math.inf
        p = 0.0 if diff > 0 else 1.0 if diff < 0 else 0.5
    else:
        t = diff / se
        df = (se2_c + se2_b) ** 2 / (
            se2_c**2 / (len(candidate) - 1) + se2_b**2 / (len(baseline) - 1)
        )
        p = t_sf(t, df)
    better = diff > 0 and p < 1.0 - confidence
    if better:
        reason = f"higher by {diff:+.4f}, Welch p={p:.3f} < {1 - confidence:.2f}"
    elif diff <= 0:
        reason = f"not higher ({diff:+.4f})"
    else:
        reason = f"higher by {diff:+.4f} but inside the seed spread (Welch p={p:.3f})"
    return SeedComparison(mean_c, mean_b, sd_c, sd_b, t, df, p, confidence, better, reason)
