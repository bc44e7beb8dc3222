"""Choosing from the reference set on val, judging fresh seeds on held-out, the preset it writes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bench_loader import load_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jetsearch"))
from test_reference import make_row  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def cr():
    yield from load_benchmark("confirm_reference")


def row(network: str, seed: int, val: float, heldout: float, source: str = "space nano") -> dict:
    return make_row(network, seed, [val], [heldout]) | {"source": source}


LATENCY = {
    "fast": {"ms": 1.0, "source": "estimated"},
    "best-but-slow": {"ms": 9.0, "source": "estimated"},
    "good": {"ms": 2.0, "source": "estimated"},
    "agx-preset": {"ms": 3.0, "source": "estimated"},
}


def reference() -> list[dict]:
    return [
        row("fast", 0, 0.40, 0.20),
        row("fast", 1, 0.42, 0.21),
        row("best-but-slow", 0, 0.60, 0.30),
        row("best-but-slow", 1, 0.60, 0.30),
        row("good", 0, 0.50, 0.25),
        row("good", 1, 0.48, 0.24),
        row("good", 2, 0.10, 0.10),  # a later seed does not take part in the choice
        row("agx-preset", 0, 0.70, 0.22, source="preset agx"),
        row("agx-preset", 1, 0.70, 0.23, source="preset agx"),
        row("agx-preset", 2, 0.70, 0.22, source="preset agx"),
    ]


def test_the_choice_is_the_best_val_of_seeds_0_and_1_within_the_budget_never_a_preset(cr):
    chosen = cr.choose(reference(), LATENCY, budget_ms=3.0)
    assert chosen["network"] == "good"
    assert chosen["val_choice"] == pytest.approx(0.49)
    assert (chosen["feasible"], chosen["drawn"]) == (2, 3)
    assert cr.choose(reference(), LATENCY, budget_ms=10.0)["network"] == "best-but-slow"
    with pytest.raises(SystemExit, match="within 0.500 ms"):
        cr.choose(reference(), LATENCY, budget_ms=0.5)


def _judged(cr, fresh_heldout: list[float], latency: dict | None = None) -> dict:
    fresh = [row("good", 2 + k, 0.5, h) for k, h in enumerate(fresh_heldout)]
    chosen = cr.choose(reference(), LATENCY, budget_ms=3.0)
    budget = {"budget_ms": 3.0}
    return cr.judge_target("agx", chosen, reference(), fresh, latency or LATENCY, budget)


def test_fresh_seeds_are_judged_on_held_out_against_every_seed_of_the_preset(cr):
    won = _judged(cr, [0.26, 0.27, 0.265])
    assert won["verdict"] == "win" and won["fresh_seeds"] == [2, 3, 4]
    assert won["preset_seeds"] == [0, 1, 2]
    # seeds 0 and 1 chose the network: the verdict reads only the fresh seeds
    assert won["choice_seeds_heldout"] == [0.25, 0.24]
    assert won["heldout"] == [0.26, 0.27, 0.265]
    line = cr.markdown([won]).splitlines()[-1]
    assert "| 25.0, 24.0 | 26.5 ± 0.5 (seeds 2, 3, 4) | 22.3 ± 0.6 (0, 1, 2) | win:" in line
    tie = _judged(cr, [0.20, 0.26, 0.23])
    assert tie["verdict"] == "tie"
    slower = _judged(cr, [0.26, 0.27, 0.265], LATENCY | {"good": {"ms": 3.5, "source": "e"}})
    assert slower["verdict"] == "slower"
    assert _judged(cr, [])["verdict"] is None


def test_a_win_is_written_as_a_preset_that_loads_and_carries_its_provenance(cr, tmp_path):
    from jetseg.config import dump_config, load_config, read_provenance

    result = _judged(cr, [0.26, 0.27, 0.265])
    path = cr.write_preset(result, dump_config(load_config("nano")), tmp_path)
    assert path.name == "agx-found.yaml"
    config = load_config(path)
    assert config.name == "agx-found"
    provenance = read_provenance(path)
    assert provenance["network"] == "good" and provenance["seeds"] == [2, 3, 4]
    assert provenance["beat"]["preset_seeds"] == [0, 1, 2]
    assert provenance["choice"]["seeds"] == [0, 1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "agx", "--seeds", "1", "2"], "--seeds must be fresh"),
        (["--target", "orin"], "--target orin: no studies/orin.yaml"),
    ],
)
def test_bad_arguments_stop_before_anything_is_written(cr, tmp_path, capsys, argv, message):
    out = tmp_path / "confirm.jsonl"
    with pytest.raises(SystemExit) as stop:
        cr.main([*argv, "--out", str(out), "--runs", str(tmp_path / "runs")])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
