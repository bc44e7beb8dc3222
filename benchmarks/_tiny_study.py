"""``studies/local.yaml`` shrunk to trials of seconds (tiny space, synthetic scenes), for the
benchmarks that run whole studies many times (scale, soak)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jetsearch.spec import merge_mappings

REPO = Path(__file__).resolve().parents[1]


def tiny_study(
    directory: Path, *, train_images: int, val_images: int, epochs: int, **changes: Any
) -> dict:
    """The shrunk study as a mapping (latency cache in ``directory``), ``changes`` merged in."""
    base = yaml.safe_load((REPO / "studies" / "local.yaml").read_text())
    # It runs on the synthetic scenes: the study's rungs for them, no sequence held out, and the
    # train: keys below instead of the scenes' own recipe.
    scenes = base.get("synthetic", {})
    if "rungs" in scenes:
        base["rungs"] = scenes["rungs"]
    base["synthetic"] = {}
    base.get("train", {}).pop("holdout", None)
    small = {
        "space": "tiny",
        "data": None,
        "synthetic": {"train_images": train_images, "val_images": val_images},
        "train": {"epochs": epochs, "size": [48, 64], "batch_size": 8, "threads": 1},
        "latency": {
            "input_size": [64, 64],
            "budget_ms": 1000,
            "runs": 5,
            "warmup_s": 0.05,
            "threads": 1,
            "cache": str(directory / "latency.sqlite"),
        },
        "enqueue_presets": [],
    }
    return merge_mappings(merge_mappings(base, small), changes)
