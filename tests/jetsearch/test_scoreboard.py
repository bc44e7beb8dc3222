"""A rung's recipe is looked up in the scoreboard by what makes it the same training."""

from __future__ import annotations

import json

import pytest

from jetsearch.scoreboard import fidelity_of, load_scoreboard, recipe_key

BOARD = {
    "networks": 12,
    "ceiling": {"val": 0.7, "heldout": 0.6},
    "recipes": [
        {
            "name": "r0",
            "recipe": {"epochs": 2, "size": [96, 128], "frames": 128},
            "rule": "best",
            "tau_val": 0.41,
            "tau_heldout": 0.33,
            "tau_heldout_low": 0.1,
            "tau_heldout_high": 0.55,
            "seconds_per_network": 31.0,
        }
    ],
}


def test_a_rung_finds_its_recipe_and_an_unmeasured_one_finds_none(tmp_path):
    path = tmp_path / "scoreboard.json"
    assert load_scoreboard(path) is None
    path.write_text(json.dumps(BOARD))
    board = load_scoreboard(path)
    rung = {"epochs": 2, "size": (96, 128), "train_images": 128, "random_scale": None}
    found = fidelity_of(rung, board)
    assert found is not None and found.name == "r0" and found.tau_heldout == 0.33
    assert "tau +0.33 [+0.10, +0.55] on the held-out sequence" in found.describe()
    assert "12 networks" in found.describe() and "ceiling +0.60" in found.describe()
    # Another frame count, size or augmentation is another training: not measured.
    assert fidelity_of(rung | {"train_images": None}, board) is None
    assert fidelity_of(rung | {"size": (128, 160)}, board) is None
    assert fidelity_of(rung | {"random_scale": (0.5, 2.0)}, board) is None
    assert fidelity_of(rung, None) is None
    # Another peak learning rate is another training; AdamW's default is the scoreboard's.
    assert fidelity_of(rung | {"lr": 0.05}, board) is None
    assert fidelity_of(rung | {"lr": 2e-3}, board) is not None


def test_recipe_key_reads_study_and_scoreboard_spellings_alike():
    study = {"epochs": 4, "size": [128, 160], "train_images": None}
    board = {"epochs": 4, "size": (128, 160)}
    assert recipe_key(study) == recipe_key(board)


def test_show_notes_name_the_scoreboard_figure_of_a_matching_rung(tmp_path, monkeypatch):
    import shutil

    from jetsearch.report import rung_fidelity_notes
    from jetsearch.spec import STUDIES_DIR_ENV, load_study_spec, studies_dir

    spec = load_study_spec("local")
    rung0 = spec.rung_budget(0)
    board = dict(BOARD)
    board["recipes"] = [
        dict(
            BOARD["recipes"][0],
            recipe={
                "epochs": rung0.epochs,
                "size": list(rung0.size),
                "frames": rung0.train_images,
                "lr": rung0.lr,
            },
        )
    ]
    folder = tmp_path / "studies"
    shutil.copytree(studies_dir(), folder)
    (folder / "scoreboard.json").write_text(json.dumps(board))
    monkeypatch.setenv(STUDIES_DIR_ENV, str(folder))
    notes = rung_fidelity_notes(spec)
    assert len(notes) == len(spec.rungs)
    assert notes[0].startswith(f"rung 0 ({rung0.epochs} epochs at {rung0.size[0]}x{rung0.size[1]}")
    assert "Kendall tau +0.33" in notes[0]
    # The built-in local study trains on the synthetic scenes: the CamVid figure is labelled.
    assert "this study trains on synthetic scenes" in notes[0]
    assert all("not on the proxy scoreboard" in note for note in notes[1:])


def test_a_trial_adds_its_recipes_seed_spread_to_the_frame_bootstrap(tmp_path, monkeypatch):
    import math
    import shutil

    from jetsearch.objective import Objective
    from jetsearch.scoreboard import budget_recipe
    from jetsearch.spec import STUDIES_DIR_ENV, load_study_spec, studies_dir
    from jetseg.metrics import bootstrap_miou

    # (frames, [TP, FP, FN], classes)
    counts = [[[50, 30], [5, 4], [5, 6]], [[40, 20], [9, 3], [2, 8]], [[45, 25], [6, 5], [4, 5]]]
    boot = bootstrap_miou(counts)[0]
    real = load_study_spec("local", data=str(tmp_path))  # any path: only "real data" matters
    recipe = budget_recipe(real.rung_budget(0))
    board = dict(BOARD)
    board["recipes"] = [
        dict(BOARD["recipes"][0], recipe=dict(recipe, size=list(recipe["size"])), seed_sd_val=0.02)
    ]
    folder = tmp_path / "studies"
    shutil.copytree(studies_dir(), folder)
    (folder / "scoreboard.json").write_text(json.dumps(board))
    monkeypatch.setenv(STUDIES_DIR_ENV, str(folder))

    def sd(spec, rung):
        return Objective(spec, None, None, None, budget_ms=None, rung=rung)._miou_sd(counts)

    assert sd(real, 0) == pytest.approx(math.hypot(boot, 0.02))
    assert sd(real, 1) == pytest.approx(boot)  # rung 1's recipe is not on this board
    assert sd(load_study_spec("local"), 0) == pytest.approx(boot)  # synthetic scenes
