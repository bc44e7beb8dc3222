"""How well a cheap training run ranks networks the way a longer one does.

A search scores each network after a short proxy run; the proxy is only useful if it orders
networks as full training would. These are the two usual rank statistics, written out so that
the figures do not depend on an optional package::

    >>> kendall_tau([0.1, 0.2, 0.3], [0.15, 0.35, 0.25])
    0.3333333333333333
    >>> spearman_rho([0.1, 0.2, 0.3], [0.15, 0.35, 0.25])
    0.5
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired samples (ties counted as in tau-b); NaN below 2 pairs."""
    if len(x) != len(y):
        raise ValueError(f"paired samples must have one length, got {len(x)} and {len(y)}")
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    if denominator == 0:
        return math.nan
    return (concordant - discordant) / denominator


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        mean_rank = (start + end) / 2 + 1
        for k in range(start, end + 1):
            ranks[order[k]] = mean_rank
        start = end + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's r of the tie-averaged ranks); NaN below 2 pairs."""
    if len(x) != len(y):
        raise ValueError(f"paired samples must have one length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return math.nan if var == 0 else cov / var


def rank_agreement(
    proxy: Sequence[float], target: Sequence[float], samples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Kendall tau and Spearman rho, each with a 90% bootstrap interval over the networks."""
    n = len(proxy)
    out = {"n": n, "tau": kendall_tau(proxy, target), "rho": spearman_rho(proxy, target)}
    rng = random.Random(seed)
    taus, rhos = [], []
    for _ in range(samples):
        pick = [rng.randrange(n) for _ in range(n)]
        x, y = [proxy[i] for i in pick], [target[i] for i in pick]
        tau, rho = kendall_tau(x, y), spearman_rho(x, y)
        if tau == tau and rho == rho:  # not NaN (a resample of one repeated network)
            taus.append(tau)
            rhos.append(rho)
    for name, values in (("tau", taus), ("rho", rhos)):
        values.sort()
        if values:
            out[f"{name}_low"] = values[int(0.05 * len(values))]
            out[f"{name}_high"] = values[int(0.95 * len(values)) - 1]
        else:
            out[f"{name}_low"] = out[f"{name}_high"] = float("nan")
    return out


def mean_rank(*columns: Sequence[float]) -> list[float]:
    """The mean over columns of each network's rank (ties averaged): a combined proxy."""
    ranked = [_ranks(column) for column in columns]
    return [sum(values) / len(values) for values in zip(*ranked, strict=True)]
