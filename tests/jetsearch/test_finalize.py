"""jetsearch finalize on a tiny synthetic study: trains, re-measures, reports every network."""

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


RECIPE = ("--epochs", "1", "--size", "32x48")


@pytest.mark.slow
def test_finalize_writes_a_report_naming_every_network_it_trained(tmp_path):
    spec = write_study(tmp_path)
    storage = tmp_path / "s.log"
    out = _jetsearch("study", "--target", str(spec), "--trials", "3", "--storage", str(storage))
    assert out.returncode == 0, out.stdout + out.stderr
    final = tmp_path / "final"
    done = _finalize(storage, final, "--top", "2", "--with-presets", "nano", *RECIPE)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((final / "report.json").read_text())
    names = [n["name"] for n in report["networks"]]
    assert names[-1] == "preset-nano" and 2 <= len(names) <= 3
    assert {n["kind"] for n in report["networks"]} == {"found", "preset"}
    text = (final / "report.md").read_text()
    for n in report["networks"]:
        assert n["name"] in text
        assert (final / n["name"] / "best.pt").is_file()  # a resumable run directory each
        assert n["latency_median_ms"] > 0 and n["val_miou"] is not None
    assert "1 epochs at 32x48" in report["recipe"] and "flip" in report["recipe"]
    assert (final / "front_final.png").read_bytes()[:4] == b"\x89PNG"
    # Running it again resumes: nothing is trained twice, the report is the same networks.
    trained = {n: (final / n / "best.pt").stat().st_mtime_ns for n in names}
    again = _finalize(storage, final, "--top", "2", "--with-presets", "nano", *RECIPE)
    assert again.returncode == 0, again.stderr
    assert {n: (final / n / "best.pt").stat().st_mtime_ns for n in names} == trained
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
    assert not (tmp_path / "f").exists()


def test_the_found_networks_are_the_front_without_the_presets():
    from jetsearch.finalize import FinalizeError, choose
    from jetsearch.report import TrialRow

    def row(number, miou, latency, preset=None):
        return TrialRow(
            number=number,
            state="COMPLETE",
            miou=miou,
            latency_ms=latency,
            provenance="measured-local",
            params=1000,
            macs=10**6,
            feasible=True,
            preset=preset,
            arch_hash=f"h{number}",
            duplicate_of=None,
            reason=None,
            synthetic=False,
        )

    # The preset (trial 0) dominates trial 2; the found front is trials 1 and 2 all the same,
    # since the preset is trained as a preset (--with-presets), never as a found network.
    rows = [row(0, 0.40, 10.0, preset="nano"), row(1, 0.30, 5.0), row(2, 0.35, 12.0)]
    assert sorted(r.number for r in choose(rows, 3)) == [1, 2]
    assert [r.number for r in choose(rows, 1)][0] in (1, 2)
    with pytest.raises(FinalizeError, match="other than the presets"):
        choose([row(0, 0.4, 10.0, preset="nano")], 3)
