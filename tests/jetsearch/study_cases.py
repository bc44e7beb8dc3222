"""Tiny study files for the tests that run whole studies (local, Ray, PostgreSQL)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested mappings key by key."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_study(directory: Path, name: str = "small", **changes) -> Path:
    """``studies/local.yaml`` shrunk to trials of a second or two, with ``changes`` merged in."""
    base = yaml.safe_load((REPO / "studies" / "local.yaml").read_text())
    small = merge(
        base,
        {
            "space": "tiny",
            "data": None,
            "synthetic": {"train_images": 8, "val_images": 4},
            "train": {"epochs": 1, "size": [48, 64], "batch_size": 8, "threads": 1},
            "latency": {
                "input_size": [64, 64],
                "budget_ms": 1000,
                "runs": 5,
                "warmup_s": 0.05,
                "threads": 1,
                "cache": str(directory / f"{name}-latency.sqlite"),
            },
            "enqueue_presets": [],
        },
    )
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merge(small, changes), sort_keys=False))
    return path
