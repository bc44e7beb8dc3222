"""A found network replaces a preset only on a win beyond the seed spread and no slower.

Hand-made finalize rows (the figures a finalize over three seeds would have produced) go
through the same judging and preset writing that ``jetsearch finalize --write-preset`` runs;
the derived preset is written into a temporary preset folder, loaded by name, built and shown.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from study_cases import write_study

import jetseg
from jetsearch.cli import main
from jetsearch.finalize import (
    FinalizeError,
    FinalRow,
    SeedRun,
    check_preset_name,
    full_recipe,
    judge_networks,
    report_header,
    write_derived_preset,
)
from jetsearch.spec import load_study_spec
from jetseg.config import PRESET_PATH_ENV, config_to_dict, load_config, read_provenance

PRESET_HELD_OUT = [0.38, 0.41, 0.37]
PRESET_ROUNDS = [10.0, 10.4, 10.1, 10.3, 10.2]


def _row(name, kind, heldout, rounds, source="measured-local"):
    row = FinalRow(
        name=name,
        kind=kind,
        arch_hash=f"h-{name}",
        trial=None if kind == "preset" else 7,
        params=30_000,
        macs=3_000_000,
        proxy_rung=0,
        proxy_val_miou=0.2,
        proxy_heldout_miou=0.15,
        proxy_latency_ms=rounds[0],
    )
    row.seeds = [
        SeedRun(seed=k, run_dir=f"/runs/{name}/seed{k}", val_miou=v + 0.1, heldout_miou=v,
                train_time_s=60.0, epochs=30)
        for k, v in enumerate(heldout)
    ]  # fmt: skip
    row.summarise()
    row.latency_rounds_ms = list(rounds)
    row.latency_median_ms = sorted(rounds)[len(rounds) // 2]
    row.latency_p90_ms = max(rounds)
    row.latency_source = source
    row.latency_device = "a CPU (onnxruntime, fp32)"
    return row


def _found_config():
    data = config_to_dict(load_config("nano"))
    data["stages"][0]["activation"] = "silu"  # another network than the preset
    data["name"] = "trial-7"
    return load_config(data)


def _judged(tmp_path, found: FinalRow):
    preset = _row("preset-nano", "preset", PRESET_HELD_OUT, PRESET_ROUNDS)
    rows = [found, preset]
    judge_networks(rows, metric="heldout_miou")
    spec = load_study_spec(write_study(tmp_path))
    recipe = full_recipe(
        spec, epochs=30, minutes=None, size=(64, 64), augment=True, holdout=("0001TP",),
        progress=False,
    )  # fmt: skip
    report = report_header(
        "small", spec, recipe, data="../shared/camvid", holdout=("0001TP",), seeds=3, rounds=5,
        metric="heldout_miou", baseline="nano",
    )  # fmt: skip
    report["networks"] = [dataclasses.asdict(r) for r in rows]
    return rows, report


def test_a_higher_mean_inside_the_seed_spread_is_a_tie_and_writes_no_preset(tmp_path):
    # 2.3 points higher on average, but the seeds spread over 9 points: Welch p = 0.24.
    found = _row("trial-7", "found", [0.42, 0.36, 0.45], [9.8, 10.1, 9.9, 10.0, 10.1])
    rows, report = _judged(tmp_path, found)
    verdict = found.verdicts["nano"]
    assert found.heldout_miou > rows[1].heldout_miou
    assert verdict["verdict"] == "tie", verdict["reason"]
    assert verdict["p_value"] == pytest.approx(0.24235, abs=1e-4)
    assert "inside the seed spread" in verdict["reason"]
    presets = tmp_path / "presets"
    path, message = write_derived_preset(
        report, rows, {"trial-7": _found_config()}, "nano-found", presets
    )
    assert path is None and not presets.exists()
    assert "no derived preset written" in message and "inside the seed spread" in message


def test_a_clear_gap_that_is_slower_is_not_a_win():
    # Far better, but slower at the median and in most rounds.
    found = _row("trial-7", "found", [0.47, 0.49, 0.48], [10.6, 10.2, 10.5, 10.7, 10.4])
    preset = _row("preset-nano", "preset", PRESET_HELD_OUT, PRESET_ROUNDS)
    judge_networks([found, preset], metric="heldout_miou")
    assert found.verdicts["nano"]["verdict"] == "slower"
    assert found.verdicts["nano"]["latency"]["faster_rounds"] == 1
    # Clearly worse and no slower is a loss; measured against estimated is never compared.
    worse = _row("trial-8", "found", [0.30, 0.31, 0.29], [9.0] * 5)
    estimated = _row("trial-9", "found", [0.47, 0.49, 0.48], [5.0], source="estimated")
    judge_networks([worse, estimated, preset], metric="heldout_miou")
    assert worse.verdicts["nano"]["verdict"] == "loss"
    assert estimated.verdicts["nano"]["verdict"] == "untested"
    assert "not comparable" in estimated.verdicts["nano"]["reason"]


def test_a_win_writes_a_derived_preset_that_loads_by_name_and_shows_its_provenance(
    tmp_path, monkeypatch, capsys
):
    found = _row("trial-7", "found", [0.47, 0.49, 0.48], [9.8, 10.1, 9.9, 10.0, 10.5])
    rows, report = _judged(tmp_path, found)
    assert found.verdicts["nano"]["verdict"] == "win", found.verdicts["nano"]["reason"]
    presets = tmp_path / "presets"
    path, message = write_derived_preset(
        report, rows, {"trial-7": _found_config()}, "nano-found", presets
    )
    assert path == presets / "nano-found.yaml" and path.is_file()
    assert f"JETSEG_PRESET_PATH={presets}" in message

    provenance = read_provenance(path)
    assert provenance["study"] == "small" and provenance["network"] == "trial-7"
    assert provenance["latency"]["measured"] is True
    assert provenance["latency"]["source"] == "measured-local"
    assert provenance["heldout_miou"]["mean"] == pytest.approx(0.48)
    assert provenance["heldout_miou"]["sd"] == pytest.approx(0.01)
    assert provenance["seeds"] == [0, 1, 2]
    assert provenance["beat"]["preset"] == "nano"
    assert provenance["beat"]["p_value"] < 0.10 and "Welch" in provenance["beat"]["test"]
    assert provenance["beat"]["faster_rounds"] == "4/5"
    assert provenance["machine"].startswith("CPU ") and provenance["created_at"]

    # By name, once its folder is on the preset path, as every other preset.
    assert "nano-found" not in jetseg.list_presets()
    monkeypatch.setenv(PRESET_PATH_ENV, str(presets))
    assert "nano-found" in jetseg.list_presets() and "nano" in jetseg.list_presets()
    assert jetseg.list_presets("*-found") == ["nano-found"]
    config = jetseg.load_config("nano-found")
    assert config.name == "nano-found" and config.stages[0].activation == "silu"
    model = jetseg.build_model("nano-found").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 11, 64, 96)
    assert jetseg.preset_provenance("nano-found") == provenance
    assert jetseg.preset_provenance("nano") is None

    assert main(["model", "show", "nano-found", "--size", "64x64"]) == 0
    shown = capsys.readouterr().out
    assert "nano-found" in shown and "derived preset" in shown and "S0 stem" in shown
    assert f"provenance ({path})" in shown
    assert "study: small" in shown and "preset: nano" in shown and "p_value:" in shown


def test_write_preset_refuses_a_paper_presets_name_but_rewrites_a_derived_one(tmp_path):
    with pytest.raises(FinalizeError, match="not a derived preset"):
        check_preset_name("nano", tmp_path)
    with pytest.raises(FinalizeError, match="a preset name is"):
        check_preset_name("../evil", tmp_path)
    derived = tmp_path / "nano-found.yaml"
    derived.write_text("# provenance:\n#   study: s\nname: nano-found\n")
    assert check_preset_name("nano-found", tmp_path) == derived
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    with pytest.raises(FinalizeError, match="not a derived preset"):
        check_preset_name("mine", tmp_path)
