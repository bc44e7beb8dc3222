"""Is one network better than another beyond the noise of training it?

Two trainings of one network under one recipe differ by points of mIoU, so a derived network
replaces a preset only when its mean over seeds is higher by more than the seed spread allows:
Welch's t-test (unequal variances), one-sided, at a stated confidence (90% by default)::

    >>> verdict = compare_seeds([0.42, 0.44, 0.43], [0.38, 0.39, 0.37])
    >>> verdict.better, round(verdict.p_value, 4)
    (True, 0.0018)
    >>> compare_seeds([0.42, 0.36, 0.45], [0.38, 0.41, 0.37]).better   # inside the spread
    False

A derived network wins against a preset only when it is also no slower (:func:`compare_latency`):
measured latencies are taken in interleaved rounds (preset and candidate in the same round, so a
drift in the machine's load hits both alike), and the candidate must be no slower at the median
of the rounds *and* faster in at least half of them; an estimate is one number for each, and the
candidate's must be no higher. :func:`judge` puts the two together::

    >>> latency = compare_latency([9.8, 10.1, 9.9], [10.4, 10.0, 10.6], measured=True)
    >>> judge([0.42, 0.44, 0.43], [0.38, 0.39, 0.37], latency).verdict
    'win'
    >>> judge([0.42, 0.36, 0.45], [0.38, 0.41, 0.37], latency).verdict
    'tie'

The t distribution's tail is computed here (the regularised incomplete beta function by its
continued fraction, Numerical Recipes 6.4), so no statistics package is needed.
"""

from __future__ import annotations

import math
import statistics
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


TEST_NAME = "Welch's t-test, one-sided"
WIN, TIE, LOSS, SLOWER, UNTESTED = "win", "tie", "loss", "slower", "untested"


@dataclass(frozen=True)
class LatencyComparison:
    """Is ``candidate`` no slower than ``baseline``?

    ``candidate_ms`` and ``baseline_ms`` are the medians over the interleaved rounds (one value
    each for an estimate); ``faster_rounds`` of ``rounds`` is how often the candidate was the
    faster of the two in the same round (0 of 0 for an estimate).
    """

    candidate_ms: float
    baseline_ms: float
    measured: bool
    rounds: int
    faster_rounds: int
    not_slower: bool
    reason: str


def compare_latency(
    candidate_ms: Sequence[float], baseline_ms: Sequence[float], *, measured: bool
) -> LatencyComparison:
    """The latency rule of a win.

    Measured: ``candidate_ms[i]`` and ``baseline_ms[i]`` were taken in the same round ``i``;
    the candidate is no slower when its median over the rounds is no higher and it was faster
    in at least half of the rounds (the median alone can hide a candidate that loses most
    rounds by a little; the count alone, one that wins many by a hair and loses the rest by a
    lot). Estimated: each holds one estimate (or repeats of it) and the candidate's must be no
    higher.
    """
    if not candidate_ms or not baseline_ms:
        raise ValueError("compare_latency needs at least one latency of each")
    c, b = statistics.median(candidate_ms), statistics.median(baseline_ms)
    if not measured:
        ok = c <= b
        relation = "<=" if ok else ">"
        return LatencyComparison(c, b, False, 0, 0, ok, f"estimated {c:.3g} {relation} {b:.3g} ms")
    if len(candidate_ms) != len(baseline_ms):
        raise ValueError(
            f"interleaved rounds must pair up, got {len(candidate_ms)} and {len(baseline_ms)}"
        )
    rounds = len(candidate_ms)
    faster = sum(x < y for x, y in zip(candidate_ms, baseline_ms, strict=True))
    ok = c <= b and 2 * faster >= rounds
    relation = "<=" if c <= b else ">"
    reason = f"median {c:.3g} {relation} {b:.3g} ms, faster in {faster}/{rounds} rounds"
    return LatencyComparison(c, b, True, rounds, faster, ok, reason)


@dataclass(frozen=True)
class Verdict:
    """A candidate network against a baseline: mIoU over seeds and latency together.

    ``verdict`` is ``win`` (better beyond the seed spread and no slower), ``tie`` (no slower,
    the difference inside the seed spread), ``loss`` (no slower, worse beyond the spread),
    ``slower`` (fails the latency rule, whatever its mIoU) or ``untested`` (no slower, but
    fewer than two seeds of one of them: no spread to test against). ``better`` tests the
    candidate over the baseline, ``worse`` the baseline over the candidate.
    """

    verdict: str
    better: SeedComparison
    worse: SeedComparison
    latency: LatencyComparison
    reason: str


def judge(
    candidate: Sequence[float],
    baseline: Sequence[float],
    latency: LatencyComparison,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Verdict:
    """The verdict on ``candidate``'s mIoU per seed against ``baseline``'s, given ``latency``."""
    better = compare_seeds(candidate, baseline, confidence)
    worse = compare_seeds(baseline, candidate, confidence)
    if not latency.not_slower:
        verdict = SLOWER
    elif min(len(candidate), len(baseline)) < MIN_SEEDS:
        verdict = UNTESTED
    elif better.better:
        verdict = WIN
    elif worse.better:
        verdict = LOSS
    else:
        verdict = TIE
    if verdict == LOSS:
        gap = better.baseline_mean - better.candidate_mean
        miou = f"lower by {gap:.4f} beyond the seed spread (Welch p={worse.p_value:.3f})"
    else:
        miou = better.reason
    reason = f"{verdict}: mIoU {miou}; latency {latency.reason}"
    return Verdict(verdict, better, worse, latency, reason)
