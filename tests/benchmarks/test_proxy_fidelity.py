"""The proxy scoreboard over a hand-made reference: which networks and proxies it scores."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from bench_loader import load_benchmark

from jetsearch.reference import append_reference

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jetsearch"))
from test_reference import make_row  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def pf():
    yield from load_benchmark("proxy_fidelity")


def proxy_row(network: str, val: float) -> dict:
    epochs = [{"epoch": 1, "val_miou": val, "heldout_miou": val, "val_loss": 1 - val}]
    recipe = {"epochs": 1, "size": [60, 80]}
    return {"network": network, "seed": 0, "epochs": epochs, "wall_s": 2.0, "proxy": recipe}


def test_scores_every_proxy_on_the_networks_they_share_and_names_the_lagging_one(
    tmp_path, pf, capsys
):
    finals = {f"n{i}": (0.1 * i, 0.1 * i + 0.01) for i in range(1, 6)}
    finals["half"] = (0.9, None)  # one seed so far: not in the yardstick yet
    path = tmp_path / "camvid-v1.jsonl"
    for name, pair in finals.items():
        for seed, value in enumerate(pair):
            if value is not None:
                row = make_row(name, seed, [value, value], [value, value])
                row["recipe"] = {"epochs": 2, "size": [120, 160]}
                append_reference(path, row)
    proxies = tmp_path / "proxies"
    proxies.mkdir()
    # "good" ranks all five like the reference, "reversed" backwards on four of them (the
    # fifth not trained yet: 4 of 5 is over the 3/4 coverage), "lagging" covers two.
    good = [proxy_row(f"n{i}", 0.01 * i) for i in range(1, 6)]
    reversed_ = [proxy_row(f"n{i}", -0.01 * i) for i in range(1, 5)]
    lagging = [proxy_row(f"n{i}", 0.01 * i) for i in range(1, 3)]
    for name, rows in {"good": good, "reversed": reversed_, "lagging": lagging}.items():
        (proxies / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert pf.main(["--reference", str(path), "--combinations", "0", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "scored on the 4 networks" in out, out
    assert "left out (cover under 3/4 of those networks yet): lagging" in out, out
    table = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("good last", "reversed last", "lagging last"):
            table[cells[0]] = cells
    assert set(table) == {"good last", "reversed last"}, out
    # proxy | s/network | share | tau val [90%] | rho val | tau held-out [90%] | rho | ceiling
    assert table["good last"][1] == "2.0"
    assert table["good last"][5].startswith("+1.00")
    assert table["reversed last"][5].startswith("-1.00")
    assert table["good last"][7] == "+1.00 / +1.00"  # seeds 0 and 1 rank alike here


def test_a_recipe_trained_with_two_seeds_reports_its_own_noise(pf):
    rows = [proxy_row(f"n{i}", v) for i, v in enumerate([0.1, 0.2, 0.3, 0.4])]
    seed1 = [proxy_row(f"n{i}", v) | {"seed": 1} for i, v in enumerate([0.12, 0.18, 0.41, 0.35])]
    noise = pf.proxy_seed_noise(rows + seed1)
    assert noise["networks"] == 4
    assert noise["self_tau"] == pytest.approx(4 / 6)  # one pair of six swapped
    # mean |difference| (0.02 + 0.02 + 0.11 + 0.05) / 4 = 0.05; one training's sd from it:
    assert noise["seed_sd"] == pytest.approx(0.05 * math.sqrt(math.pi) / 2)
    assert pf.proxy_seed_noise(rows) is None  # one seed: no noise to measure
    # ... and the scoreboard gets a column of the two seeds' mean, at the two trainings' cost
    columns = pf.proxy_columns([], {"r": rows + seed1})
    values, cost = columns["r x2-seeds best"]
    assert values["n2"] == pytest.approx((0.3 + 0.41) / 2) and cost == 4.0
    assert columns["r best"][0]["n2"] == 0.3 and columns["r best"][1] == 2.0


def test_rungs_are_the_cheapest_recipes_that_reach_the_targets(pf):
    def row(name, cost, tau):
        return {
            "proxy": f"{name} best",
            "cost_s": cost,
            "share": cost / 600,
            "heldout": {"tau": tau, "tau_low": tau - 0.2, "tau_high": tau + 0.1},
        }

    rows = [
        row("a", 5, 0.65),
        row("b", 10, 0.7),
        row("c", 40, 0.85),
        row("d", 60, 0.9),
        row("e", 200, 0.95),
    ]
    lines = pf.choose_rungs(rows)
    # top: within 60 s, cheapest reaching 0.8 -> c; rung 0: within 40/3 s, cheapest >= 0.6 -> a
    assert lines[0].startswith("rung 0: a (the cheapest with held-out tau >= 0.6)")
    assert lines[1].startswith("top rung: c (the cheapest with held-out tau >= 0.8)")
    assert "0.067 of the reference's work" in lines[1]
    lines = pf.choose_rungs([row("a", 5, 0.3), row("b", 30, 0.5), row("e", 200, 0.95)])
    assert lines[1].startswith("top rung: b (none reaches held-out tau 0.8: the best found)")
    assert lines[0].startswith("rung 0: a (none reaches held-out tau 0.6: the best found)")


def test_a_recipes_nominal_share_of_the_reference_counts_epochs_pixels_and_frames(pf):
    reference = {"epochs": 30, "size": [120, 160]}
    assert pf.nominal_share(reference, reference) == 1.0
    # 2 epochs at a quarter... of the pixels (60x80): 2/30 * 1/4
    assert pf.nominal_share({"epochs": 2, "size": [60, 80]}, reference) == pytest.approx(1 / 60)
    fewer = pf.nominal_share({"epochs": 30, "size": [120, 160], "frames": 133}, reference)
    assert fewer == pytest.approx((133 + 202 / 3) / (266 + 202 / 3))


def test_a_recipe_whose_seeds_disagree_is_not_a_rung(pf):
    def row(name, share, tau):
        band = {"tau": tau, "tau_low": tau - 0.2, "tau_high": tau + 0.1}
        return {"proxy": f"{name} best", "cost_s": 1.0, "share": share, "heldout": band}

    rows = [row("lucky", 0.01, 0.7), row("steady", 0.02, 0.62), row("top", 0.08, 0.85)]
    assert pf.choose_rungs(rows)[0].startswith("rung 0: lucky")
    lines = pf.choose_rungs(rows, self_tau={"lucky": -0.1, "steady": 0.4})
    assert lines[0].startswith("rung 0: steady (the cheapest with held-out tau >= 0.6)")
