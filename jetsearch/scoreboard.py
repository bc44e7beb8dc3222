"""What the proxy scoreboard measured for a rung's recipe, for ``jetsearch show`` to print.

``benchmarks/proxy_fidelity.py --write-scoreboard`` scores training recipes against the
reference set and writes the summary here, as data shipped with the built-in studies
(``studies/scoreboard.json``)::

    {"reference": "benchmarks/reference/camvid-v1.jsonl", "networks": 12, "machine": "...",
     "date": "...", "ceiling": {"val": 0.71, "heldout": 0.64},
     "recipes": [{"name": "r0", "recipe": {"epochs": 2, "size": [96, 128], "frames": 128},
                  "rule": "last", "tau_val": .., "tau_heldout": .., "tau_heldout_low": ..,
                  "tau_heldout_high": .., "seconds_per_network": ..}, ...]}

A rung matches a recipe when its epochs, size, frame count, augmentation and peak learning rate
are the same; a rung no recipe matches has no measured fidelity, and ``show`` says so rather than
guess. A recipe trained with a second seed also carries ``seed_sd_val``: the spread of one
training's val score under it, which a trial of that rung adds to its mIoU's uncertainty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCOREBOARD_FILE = "scoreboard.json"


@dataclass(frozen=True)
class RecipeFidelity:
    """The scoreboard's figures for one recipe: how it ranks the reference set."""

    name: str
    rule: str
    tau_val: float
    tau_heldout: float
    tau_heldout_low: float
    tau_heldout_high: float
    seconds_per_network: float
    networks: int
    ceiling_heldout: float
    seed_sd_val: float | None = None

    def describe(self) -> str:
        return (
            f"scoreboard: recipe {self.name} ranks the reference set's {self.networks} networks "
            f"with Kendall tau {self.tau_heldout:+.2f} [{self.tau_heldout_low:+.2f}, "
            f"{self.tau_heldout_high:+.2f}] on the held-out sequence ({self.tau_val:+.2f} on "
            f"val; ceiling {self.ceiling_heldout:+.2f})"
        )


# The scoreboard's recipes train with AdamW at its default peak rate unless they say otherwise.
PROXY_LR = 2e-3


def recipe_key(recipe: Mapping[str, Any]) -> tuple:
    """What makes two recipes the same training: epochs, size, frames, augmentation, peak lr."""
    frames = recipe.get("frames", recipe.get("train_images"))
    augment = bool(recipe.get("augment") or recipe.get("random_scale"))
    lr = float(recipe.get("lr") or PROXY_LR)
    size = tuple(int(v) for v in recipe["size"])
    return (int(recipe["epochs"]), size, frames, augment, round(lr, 8))


def budget_recipe(budget: Any) -> dict[str, Any]:
    """A rung's training (a :class:`jetsearch.spec.TrialBudget`) as a scoreboard recipe."""
    from jetseg.train_config import DEFAULT_LR

    return {
        "epochs": budget.epochs,
        "size": budget.size,
        "train_images": budget.train_images,
        "random_scale": budget.random_scale,
        "lr": budget.lr if budget.lr is not None else DEFAULT_LR[budget.optimizer],
    }


def load_scoreboard(path: str | Path) -> dict[str, Any] | None:
    """The scoreboard file, or None when there is none (nothing measured yet)."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def fidelity_of(recipe: Mapping[str, Any], scoreboard: Mapping[str, Any] | None):
    """The scoreboard's :class:`RecipeFidelity` of ``recipe``, or None when unmeasured."""
    if not scoreboard:
        return None
    key = recipe_key(recipe)
    for entry in scoreboard.get("recipes", []):
        if recipe_key(entry["recipe"]) == key:
            return RecipeFidelity(
                name=entry["name"],
                rule=entry["rule"],
                tau_val=entry["tau_val"],
                tau_heldout=entry["tau_heldout"],
                tau_heldout_low=entry["tau_heldout_low"],
                tau_heldout_high=entry["tau_heldout_high"],
                seconds_per_network=entry["seconds_per_network"],
                networks=int(scoreboard["networks"]),
                ceiling_heldout=scoreboard["ceiling"]["heldout"],
                seed_sd_val=entry.get("seed_sd_val"),
            )
    return None
