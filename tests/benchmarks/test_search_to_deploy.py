"""The search-to-deploy benchmark runs its whole path (study, finalize over seeds, the
comparison table) in its smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_smoke_run_goes_from_study_to_the_comparison_table(tmp_path):
    presets = tmp_path / "presets"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "search_to_deploy.py"),
            "--smoke",
            "--out",
            str(tmp_path / "s2d"),
            "--write-preset",
            "smoke-found",
            "--preset-dir",
            str(presets),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "s2d" / "final" / "report.json").read_text())
    assert report["seeds"] == 2 and report["networks"][-1]["name"] == "preset-nano"
    lines = done.stdout.splitlines()
    assert sum(line.startswith("machine: CPU") for line in lines) == 2
    assert any(line.startswith("network ") and "vs nano (Welch t, p)" in line for line in lines)
    for n in report["networks"]:
        row = next(line for line in lines if line.startswith(n["name"] + " "))
        assert "measured" in row and " ± " in row
    wins = [n for n in report["networks"] if n["verdicts"].get("nano", {}).get("verdict") == "win"]
    assert (presets / "smoke-found.yaml").is_file() == bool(wins)
    assert ("target met" if wins else "target NOT met") in done.stdout
