"""Tiny study files for the tests that run whole studies (local, Ray, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import yaml

from jetsearch.study import merge_mappings

REPO = Path(__file__).resolve().parents[2]


def write_study(directory: Path, name: str = "small", **changes) -> Path:
    """``studies/local.yaml`` shrunk to trials of a second or two (one rung), with ``changes``
    merged in."""
    base = yaml.safe_load((REPO / "studies" / "local.yaml").read_text())
    small = merge_mappings(
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
    # One fidelity unless a test asks for rungs: the local study's rungs train longer.
    small.pop("rungs", None)
    small.pop("eta", None)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merge_mappings(small, changes), sort_keys=False))
    return path
