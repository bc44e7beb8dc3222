"""The rules that tie JetSeg config fields together, as functions over plain values.

:mod:`jetseg.config` applies them to one config; :mod:`jetsearch.space` applies them to every
combination of values a search space can produce, so that a space is refused at load time when
one of its samples would break a rule. Each ``*_problem`` function returns what is wrong (a
message without the key path, which the caller knows) or ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

MAX_BRANCHES = 3  # CDDC branches of one JetConv
MAX_STAGES = 6  # JetNet stages after the stem
DILATION_RANGE = (1, 16)  # of a branch, and of a stage's per-block multipliers


# ---------------------------------------------------------------------------------------------
# group counts


def common_divisors(a: int, b: int) -> list[int]:
    """All positive integers that divide both ``a`` and ``b``, ascending."""
    g = math.gcd(a, b)
    return [d for d in range(1, g + 1) if g % d == 0]


def auto_groups(in_width: int, out_width: int) -> int:
    """The "convenient number of groups" for a grouped 1x1 conv between two widths.

    Among the common divisors of the two widths, the one closest to the mean of those common
    divisors (ties go to the smaller, which mixes more channels). For 32 -> 64 the common
    divisors are 1, 2, 4, 8, 16, 32 (mean 10.5), so 8 groups.
    """
    divisors = common_divisors(in_width, out_width)
    mean = sum(divisors) / len(divisors)
    return min(divisors, key=lambda d: (abs(d - mean), d))


def resolve_groups(groups: int | str, in_width: int, out_width: int) -> int:
    """An explicit group count as is, or ``auto_groups`` for ``"auto"``."""
    return auto_groups(in_width, out_width) if groups == "auto" else int(groups)


def undivided_width(groups: int, widths: Iterable[int]) -> int | None:
    """The first of ``widths`` that an explicit group count does not divide, or None."""
    return next((w for w in widths if w % groups), None)


def groups_problem(groups: int | str, in_width: int, out_width: int, what: str) -> str | None:
    """A grouped conv's group count must be ``auto`` or divide both of its widths.

    ``what`` names the conv in the message (``"block's 1x1 convs"``).
    """
    if groups == "auto":
        return None
    if groups < 1 or undivided_width(groups, (in_width, out_width)) is not None:
        allowed = ", ".join(str(d) for d in common_divisors(in_width, out_width))
        return (
            f"{groups} does not divide both widths of the {what} ({in_width} -> {out_width}); "
            f"allowed: auto, {allowed}"
        )
    return None


def group_count_problem(groups: int | str) -> str | None:
    """An explicit group count is a positive integer (a space checks this before dividing)."""
    if groups != "auto" and groups < 1:
        return f"{groups} is not a group count; it must be at least 1"
    return None


def block_hidden_widths(in_width: int, width: int, expansion: int) -> tuple[int, ...]:
    """The expanded widths a stage's JetConvs work on: its first block's, then the others'."""
    return tuple(sorted({in_width * expansion, width * expansion}))


# ---------------------------------------------------------------------------------------------
# counts and lists


def branch_count_problem(count: int) -> str | None:
    """A JetConv has 1 to :data:`MAX_BRANCHES` branches."""
    if not 1 <= count <= MAX_BRANCHES:
        return f"needs 1 to {MAX_BRANCHES} branches, got {count}"
    return None


def stage_count_problem(count: int) -> str | None:
    """A JetNet has 1 to :data:`MAX_STAGES` stages."""
    if not 1 <= count <= MAX_STAGES:
        return f"needs 1 to {MAX_STAGES} stages, got {count}"
    return None


def dilations_fit(dilations: Sequence[int], depth: int) -> bool:
    """A stage's dilations are empty (all 1) or one per block."""
    return not dilations or len(dilations) == depth


def dilations_problem(dilations: Sequence[int], depth: int) -> str | None:
    """:func:`dilations_fit`, as the message a config gets."""
    if dilations_fit(dilations, depth):
        return None
    return (
        f"has {len(dilations)} entries but depth is {depth}; give one per block or leave it empty"
    )


def tap_problem(tap: int, n_features: int) -> str | None:
    """A decoder tap names an encoder feature: 0 (the stem) to the last stage."""
    if not 0 <= tap < n_features:
        return f"{tap} names no encoder feature; 0 (stem) to {n_features - 1} are allowed"
    return None


def taps_in_order(taps: Sequence[Any]) -> bool:
    """The decoder's low, mid and deep taps name ever deeper features."""
    return taps[0] < taps[1] < taps[2]


TAPS_ORDER_RULE = "must name shallow, mid and deep features in order"
