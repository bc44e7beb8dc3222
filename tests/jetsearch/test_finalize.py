"""jetsearch finalize on a tiny synthetic study: trains over seeds, re-measures, judges, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from study_cases import write_study

REPO = Path(__file__).resolve().parents[2]


def _jetsearch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jetsearch.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def _finalize(storage: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return _jetsearch(
        "finalize", "--study", "small", "--storage", str(storage), "--out", str(out), *options
    )


RECIPE = ("--epochs", "1", "--size", "32x48", "--seeds", "2", "--rounds", "2")


@pytest.mark.slow
def test_finalize_trains_every_network_over_seeds_resumes_and_judges_it(tmp_path):
    spec = write_study(tmp_path)
    storage = tmp_path / "s.log"
    out = _jetsearch("study", "--target", str(spec), "--trials", "3", "--storage", str(storage))
    assert out.returncode == 0, out.stdout + out.stderr
    final = tmp_path / "final"
    presets = tmp_path / "presets"
    options = ("--top", "2", "--with-presets", "nano", *RECIPE)
    write = ("--write-preset", "small-found", "--preset-dir", str(presets))
    done = _finalize(storage, final, *options, *write)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((final / "report.json").read_text())
    names = [n["name"] for n in report["networks"]]
    assert names[-1] == "preset-nano" and 2 <= len(names) <= 3
    assert {n["kind"] for n in report["networks"]} == {"found", "preset"}
    assert report["seeds"] == 2 and report["comparison"]["baseline"] == "nano"
    # The synthetic scenes hold no sequences out: the verdicts compare val mIoU, and say so.
    assert report["comparison"]["metric"] == "val_miou"
    text = (final / "report.md").read_text()
    assert "Welch" in text and "±" in text and "vs nano" in text
    for n in report["networks"]:
        assert n["name"] in text
        # Two trainings, each a resumable run directory of its own.
        assert [s["seed"] for s in n["seeds"]] == [0, 1]
        for seed in (0, 1):
            assert (final / n["name"] / f"seed{seed}" / "best.pt").is_file()
        vals = [s["val_miou"] for s in n["seeds"]]
        assert n["val_miou"] == pytest.approx(sum(vals) / 2)
        assert n["val_miou_sd"] == pytest.approx(abs(vals[0] - vals[1]) / 2**0.5)
        # Measured here: two interleaved rounds, the median of their medians.
        assert n["latency_source"] == "measured-local" and len(n["latency_rounds_ms"]) == 2
        assert n["latency_median_ms"] > 0 and n["params"] > 0 and n["macs"] > 0
        if n["kind"] == "found":
            verdict = n["verdicts"]["nano"]
            assert verdict["verdict"] in ("win", "tie", "loss", "slower"), verdict
            assert verdict["latency"]["rounds"] == 2 and verdict["test"].startswith("Welch")
            assert verdict["reason"] in done.stdout
    assert "1 epochs at 32x48" in report["recipe"] and "flip" in report["recipe"]
    assert (final / "front_final.png").read_bytes()[:4] == b"\x89PNG"
    # A derived preset exactly when a found network beat nano; nothing written otherwise.
    wins = [
        n
        for n in report["networks"]
        if n.get("verdicts", {}).get("nano", {}).get("verdict") == "win"
    ]
    assert (presets / "small-found.yaml").is_file() == bool(wins)
    assert report["derived_preset"]["message"] in done.stdout
    if not wins:
        assert "no derived preset written" in report["derived_preset"]["message"]

    # Running it again resumes: nothing is trained twice, nor measured; the same networks.
    runs = sorted(final.glob("*/seed*/best.pt"))
    assert len(runs) == 2 * len(names)
    trained = {p: p.stat().st_mtime_ns for p in runs}
    again = _finalize(storage, final, *options)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in runs} == trained
    assert "latency: kept from" in again.stdout
    assert [n["name"] for n in json.loads((final / "report.json").read_text())["networks"]] == names


@pytest.mark.slow
def test_finalize_refuses_bad_input_before_training(tmp_path):
    spec = write_study(tmp_path)
    storage = tmp_path / "s.log"
    assert (
        _jetsearch(
            "study", "--target", str(spec), "--trials", "1", "--storage", str(storage)
        ).returncode
        == 0
    )
    bad = _finalize(storage, tmp_path / "f", "--top", "0", *RECIPE)
    assert bad.returncode == 2 and "--top" in bad.stderr
    unknown = _finalize(storage, tmp_path / "f", "--with-presets", "tx2", *RECIPE)
    assert unknown.returncode == 2 and "not a preset" in unknown.stderr
    no_seeds = _finalize(storage, tmp_path / "f", *RECIPE, "--seeds", "0")
    assert no_seeds.returncode == 2 and "--seeds" in no_seeds.stderr
    alone = _finalize(storage, tmp_path / "f", *RECIPE, "--write-preset", "x-found")
    assert alone.returncode == 2 and "needs a preset to beat" in alone.stderr
    paper = _finalize(
        storage, tmp_path / "f", "--with-presets", "nano", *RECIPE, "--write-preset", "agx"
    )
    assert paper.returncode == 2 and "not a derived preset" in paper.stderr
    assert not (tmp_path / "f").exists()


def _row(number, miou, latency, **fields):
    """A finished trial as the report reads it; ``fields`` override the defaults."""
    from jetsearch.report import TrialRow

    base = dict(
        number=number,
        state="COMPLETE",
        miou=miou,
        latency_ms=latency,
        provenance="measured-local",
        params=1000,
        macs=10**6,
        feasible=True,
        preset=None,
        arch_hash=f"h{number}",
        duplicate_of=None,
        reason=None,
        synthetic=False,
    )
    return TrialRow(**{**base, **fields})


def test_the_found_networks_are_the_front_without_the_presets():
    from jetsearch.finalize import FinalizeError, choose

    row = _row
    # The preset (trial 0) dominates trial 2; the found front is trials 1 and 2 all the same,
    # since the preset is trained as a preset (--with-presets), never as a found network.
    rows = [row(0, 0.40, 10.0, preset="nano"), row(1, 0.30, 5.0), row(2, 0.35, 12.0)]
    assert sorted(r.number for r in choose(rows, 3, "front")) == [1, 2]
    assert [r.number for r in choose(rows, 1, "front")][0] in (1, 2)
    for by in ("front", "miou"):
        with pytest.raises(FinalizeError, match="other than the presets"):
            choose([row(0, 0.4, 10.0, preset="nano")], 3, by)
    with pytest.raises(FinalizeError, match="--choose 'best'"):
        choose(rows, 3, "best")


def test_finalize_chooses_the_most_accurate_networks_of_the_highest_rung_by_default():
    """mIoU inside each other's spread collapse a noise-aware front to its fastest network;
    finalize, which must beat a preset in accuracy, takes the most accurate instead."""
    from jetsearch.finalize import choose

    def row(number, miou, latency, rung=1, **fields):
        return _row(number, miou, latency, rung=rung, miou_sd=0.05, **fields)

    # mIoU inside each other's spread: the fastest dominates the rest, the front is one network
    rows = [
        row(1, 0.30, 8.0),
        row(2, 0.33, 10.0),
        row(3, 0.36, 12.0),
        row(4, 0.50, 9.0, rung=0),  # a better figure at a lower rung: not comparable
        row(5, 0.60, 9.0, feasible=False),
        row(6, 0.36, 12.0, duplicate_of=3, arch_hash="h3"),
    ]
    same_rung = [r for r in rows if r.rung == 1]
    assert [r.number for r in choose(same_rung, 3, "front")] == [1]  # the collapse
    assert [r.number for r in choose(rows, 3)] == [3, 2, 1]
    assert [r.number for r in choose(rows, 5)] == [3, 2, 1, 4]
