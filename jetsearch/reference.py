"""The reference set: fully trained networks kept as data, the yardstick every proxy is scored by.

``benchmarks/reference.py`` trains a fixed list of networks under one full recipe and appends one
JSON object per (network, seed) to a ``.jsonl`` file kept in the repository
(``benchmarks/reference/camvid-v1.jsonl``). This module reads and writes that format and computes
what the scoreboard needs from it, in the NAS-Bench habit: expensive results stored once, a small
reader, every proxy scored in seconds.

One line (:data:`FORMAT`), the keys a reader relies on::

    {"format": "jetsearch-reference/1", "network": "nano-preset", "seed": 0,
     "config_yaml": "...", "arch_hash": "...", "params": 31678, "macs_360x480": 1.35e8,
     "latency": {"median_ms": .., "p90_ms": .., "samples_ms": [..], "provider": ..},
     "recipe": {TrainConfig fields}, "split": {"heldout": ["0006R0"], ...},
     "epochs": [{"epoch": 1, "train_loss": .., "val_miou": .., "val_loss": ..,
                 "val_per_class_iou": {..}, "heldout_miou": .., "heldout_loss": ..,
                 "heldout_per_class_iou": {..}}, ...],
     "best": {"epoch": .., "val_miou": .., "heldout_miou": ..}, "last": {...},
     "frames": {"val": [[tp.., fp.., fn..], ...], "heldout": [...]},   # last epoch, per frame
     "wall_s": .., "train_time_s": .., "machine": "...", "date": "..."}

``frames`` holds, per evaluation frame, the per-class true-positive, false-positive and
false-negative pixel counts of the last epoch's model (three lists of ``num_classes`` ints), so
the spread a bootstrap over the evaluation frames gives is computed without the network.

The reference figure of a network is its **last-epoch** mIoU (the recipe has converged; the
best epoch picked by val is a selection over noisy epochs) averaged over its seeds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "jetsearch-reference/1"
SPLITS = ("val", "heldout")
REQUIRED_KEYS = ("format", "network", "seed", "arch_hash", "recipe", "epochs", "best", "last")


class ReferenceError(ValueError):
    """A reference file that cannot be read as the format says, with the file and line."""


def read_reference(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a reference file, checked; a missing file is an empty set."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    seen: set[tuple[str, int]] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReferenceError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ReferenceError(f"{path}:{number}: expected an object, got {type(row).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ReferenceError(f"{path}:{number}: missing keys {missing}")
        if row["format"] != FORMAT:
            raise ReferenceError(f"{path}:{number}: format {row['format']!r}, expected {FORMAT!r}")
        key = (row["network"], int(row["seed"]))
        if key in seen:
            raise ReferenceError(f"{path}:{number}: {key[0]} seed {key[1]} appears twice")
        seen.add(key)
        rows.append(row)
    return rows


def append_reference(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one (network, seed) line, flushed and synced; refuses a pair already there."""
    path = Path(path)
    key = (row["network"], int(row["seed"]))
    if key in done_pairs(read_reference(path)):
        raise ReferenceError(f"{path}: {key[0]} seed {key[1]} is already in the reference set")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ReferenceError(f"a reference line needs the keys {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(row), separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def done_pairs(rows: Iterable[Mapping[str, Any]]) -> set[tuple[str, int]]:
    return {(row["network"], int(row["seed"])) for row in rows}


# ---------------------------------------------------------------------------------------------
# figures of one run


def miou_from_counts(tp: Sequence[float], fp: Sequence[float], fn: Sequence[float]) -> float:
    """mIoU over the classes that occur (in the labels or the predictions)."""
    ious = [t / (t + p + n) for t, p, n in zip(tp, fp, fn, strict=True) if t + p + n > 0]
    return sum(ious) / len(ious) if ious else float("nan")


def frame_bootstrap(
    frames: Sequence[Sequence[Sequence[float]]], samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Standard deviation and 90% interval width of mIoU over frames resampled with replacement.

    ``frames``: per frame ``[tp, fp, fn]``, each a per-class list. Returns ``(std, width)``
    (:func:`jetseg.metrics.bootstrap_miou`).
    """
    if not frames:
        return float("nan"), float("nan")
    from jetseg.metrics import bootstrap_miou

    std, low, high = bootstrap_miou(frames, samples=samples, seed=seed)
    return std, high - low


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return float("nan")
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def figure(row: Mapping[str, Any], split: str, rule: str = "last") -> float:
    """One run's mIoU on ``split`` under a scoring rule over its epochs.

    Rules: ``last`` (the last epoch), ``best`` (the epoch val ranks first, its ``split``
    figure), ``last3`` (mean of the last three epochs), ``max`` (the best epoch of ``split``
    itself, optimistic), ``val_loss`` (minus the last epoch's val loss, for ranking only).
    """
    epochs = [e for e in row["epochs"] if e.get(f"{split}_miou") is not None]
    if not epochs:
        return float("nan")
    if rule == "last":
        return float(epochs[-1][f"{split}_miou"])
    if rule == "best":
        best = max(epochs, key=lambda e: e["val_miou"])
        return float(best[f"{split}_miou"])
    if rule == "last3":
        return _mean([float(e[f"{split}_miou"]) for e in epochs[-3:]])
    if rule == "max":
        return max(float(e[f"{split}_miou"]) for e in epochs)
    if rule == "val_loss":
        return -float(epochs[-1]["val_loss"])
    raise ValueError(f"rule must be one of last, best, last3, max, val_loss; got {rule!r}")


# ---------------------------------------------------------------------------------------------
# the set as a table


@dataclass(frozen=True)
class NetworkFigures:
    """One network's reference figures over its seeds (mIoU as fractions)."""

    network: str
    arch_hash: str
    params: int
    macs: float
    latency_ms: float | None
    seeds: tuple[int, ...]
    val: tuple[float, ...]
    heldout: tuple[float, ...]
    val_bootstrap_std: float
    heldout_bootstrap_std: float

    @property
    def val_mean(self) -> float:
        return _mean(self.val)

    @property
    def heldout_mean(self) -> float:
        return _mean(self.heldout)

    @property
    def val_seed_std(self) -> float:
        return _std(self.val)

    @property
    def heldout_seed_std(self) -> float:
        return _std(self.heldout)

    def mean(self, split: str) -> float:
        return self.val_mean if split == "val" else self.heldout_mean


def by_network(rows: Iterable[Mapping[str, Any]], rule: str = "last") -> list[NetworkFigures]:
    """The set grouped by network (in first-seen order), seeds in order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["network"], []).append(row)
    out = []
    for name, runs in groups.items():
        runs = sorted(runs, key=lambda r: int(r["seed"]))
        first = runs[0]
        boot = {}
        for split in SPLITS:
            stds = [
                frame_bootstrap(r["frames"][split], samples=300)[0]
                for r in runs
                if r.get("frames", {}).get(split)
            ]
            boot[split] = _mean(stds)
        latency = first.get("latency") or {}
        out.append(
            NetworkFigures(
                network=name,
                arch_hash=first["arch_hash"],
                params=int(first.get("params", 0)),
                macs=float(first.get("macs_360x480", 0.0)),
                latency_ms=latency.get("median_ms"),
                seeds=tuple(int(r["seed"]) for r in runs),
                val=tuple(figure(r, "val", rule) for r in runs),
                heldout=tuple(figure(r, "heldout", rule) for r in runs),
                val_bootstrap_std=boot["val"],
                heldout_bootstrap_std=boot["heldout"],
            )
        )
    return out


def seed_ceiling(
    rows: Iterable[Mapping[str, Any]], split: str, rule: str = "last"
) -> tuple[float, int]:
    """Kendall tau between the ranking by seed A and by seed B of the same recipe.

    Over the networks with at least two seeds, the first two seeds of each; no proxy can rank
    the reference better than the reference ranks itself. Returns ``(tau, networks)``.
    """
    from jetsearch.fidelity import kendall_tau

    nets = [n for n in by_network(rows, rule) if len(n.seeds) >= 2]
    if len(nets) < 3:
        return float("nan"), len(nets)
    a = [n.val[0] if split == "val" else n.heldout[0] for n in nets]
    b = [n.val[1] if split == "val" else n.heldout[1] for n in nets]
    return kendall_tau(a, b), len(nets)
