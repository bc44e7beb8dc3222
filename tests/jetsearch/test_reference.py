"""The reference set's format: it round-trips, a resumed run appends without repeating a pair,
and the figures the scoreboard reads from it (rules, bootstrap, the seed ceiling) are right."""

from __future__ import annotations

import json
import math

import pytest

from jetsearch.reference import (
    FORMAT,
    ReferenceError,
    append_reference,
    by_network,
    figure,
    frame_bootstrap,
    miou_from_counts,
    read_reference,
    seed_ceiling,
)


def make_row(network: str, seed: int, val: list[float], heldout: list[float]) -> dict:
    epochs = [
        {"epoch": i + 1, "val_miou": v, "heldout_miou": h, "val_loss": 1.0 - v}
        for i, (v, h) in enumerate(zip(val, heldout, strict=True))
    ]
    frames = [[[10, 5], [1, 2], [2, 1]], [[8, 6], [2, 1], [1, 3]]]
    return {
        "format": FORMAT,
        "network": network,
        "seed": seed,
        "arch_hash": f"hash-{network}",
        "params": 1000,
        "macs_360x480": 1e8,
        "latency": {"median_ms": 5.0},
        "recipe": {"epochs": len(val)},
        "epochs": epochs,
        "best": {"epoch": 1},
        "last": {"epoch": len(val)},
        "frames": {"val": frames, "heldout": frames},
        "wall_s": 60.0,
    }


def test_a_line_round_trips_and_a_resumed_run_cannot_repeat_a_pair(tmp_path):
    path = tmp_path / "ref.jsonl"
    assert read_reference(path) == []
    first = make_row("a", 0, [0.1, 0.2], [0.05, 0.1])
    append_reference(path, first)
    append_reference(path, make_row("a", 1, [0.1, 0.3], [0.05, 0.2]))
    rows = read_reference(path)
    assert rows[0] == json.loads(json.dumps(first))
    assert [(r["network"], r["seed"]) for r in rows] == [("a", 0), ("a", 1)]
    with pytest.raises(ReferenceError, match="a seed 0 is already"):
        append_reference(path, make_row("a", 0, [0.5], [0.5]))
    assert len(read_reference(path)) == 2


def test_a_file_with_a_repeated_pair_or_a_missing_key_is_refused_with_its_line(tmp_path):
    path = tmp_path / "ref.jsonl"
    row = make_row("a", 0, [0.1], [0.1])
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ReferenceError, match=r"ref.jsonl:2: a seed 0 appears twice"):
        read_reference(path)
    del row["epochs"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ReferenceError, match=r"ref.jsonl:1: missing keys \['epochs'\]"):
        read_reference(path)


def test_scoring_rules_read_the_epochs_as_named():
    row = make_row("a", 0, [0.1, 0.5, 0.3, 0.4], [0.2, 0.1, 0.3, 0.6])
    assert figure(row, "heldout", "last") == 0.6
    assert figure(row, "heldout", "best") == 0.1  # the epoch val ranks first (0.5)
    assert figure(row, "heldout", "last3") == pytest.approx((0.1 + 0.3 + 0.6) / 3)
    assert figure(row, "heldout", "max") == 0.6
    assert figure(row, "val", "val_loss") == pytest.approx(-0.6)
    with pytest.raises(ValueError, match="rule must be one of"):
        figure(row, "val", "median")


def test_miou_and_bootstrap_from_frame_counts():
    # class 0: tp 18, fp 3, fn 3 -> 18/24; class 1: tp 11, fp 3, fn 4 -> 11/18
    frames = [[[10, 5], [1, 2], [2, 1]], [[8, 6], [2, 1], [1, 3]]]
    tp = [18, 11]
    assert miou_from_counts(tp, [3, 3], [3, 4]) == pytest.approx((18 / 24 + 11 / 18) / 2)
    std, width = frame_bootstrap(frames, samples=200)
    assert 0 < std < 0.1 and width > 0
    same = [frames[0], frames[0]]
    assert frame_bootstrap(same, samples=50) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_seed_ceiling_is_the_tau_between_two_seeds_rankings():
    rows = []
    # Seed 1 ranks four networks exactly as seed 0 does, except one swapped pair.
    seed0 = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    seed1 = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.4}
    for name in seed0:
        rows.append(make_row(name, 0, [seed0[name]], [seed0[name]]))
        rows.append(make_row(name, 1, [seed1[name]], [seed1[name]]))
    tau, count = seed_ceiling(rows, "heldout")
    assert count == 4
    assert tau == pytest.approx(4 / 6)  # 5 concordant, 1 discordant of 6 pairs
    nets = by_network(rows)
    assert [n.network for n in nets] == ["a", "b", "c", "d"]
    assert nets[1].heldout == (0.2, 0.3)
    assert nets[1].heldout_mean == pytest.approx(0.25)
    assert nets[1].heldout_seed_std == pytest.approx(math.sqrt(0.005))


def test_the_scoreboard_agreement_on_a_hand_made_table():
    from jetsearch.fidelity import mean_rank, rank_agreement

    perfect = rank_agreement([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5], samples=200)
    assert perfect["tau"] == 1.0 and perfect["rho"] == 1.0
    assert perfect["tau_low"] == perfect["tau_high"] == 1.0
    reversed_ = rank_agreement([5, 4, 3, 2, 1], [0.1, 0.2, 0.3, 0.4, 0.5], samples=200)
    assert reversed_["tau"] == -1.0 and reversed_["tau_high"] == -1.0
    swapped = rank_agreement([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4], samples=200)
    assert swapped["tau"] == pytest.approx(4 / 6)
    assert swapped["rho"] == pytest.approx(0.8)
    assert swapped["tau_low"] <= swapped["tau"] <= swapped["tau_high"]
    # Two proxies combined by their mean rank: (1+2)/2, (2+1)/2, (3+3)/2.
    assert mean_rank([10, 20, 30], [0.2, 0.1, 0.3]) == [1.5, 1.5, 3.0]


def test_zero_cost_scores_need_no_training_and_take_seconds():
    import torch

    from jetsearch.zerocost import ZERO_COST_NAMES, zero_cost_scores
    from jetseg.config import load_config

    torch.manual_seed(0)
    images = torch.randn(4, 3, 48, 64)
    labels = torch.randint(0, 12, (4, 48, 64))
    result = zero_cost_scores(
        load_config("nano"), images, labels, ignore_index=11, count_size=(48, 64)
    )
    assert set(result["scores"]) == set(ZERO_COST_NAMES)
    assert result["scores"]["params"] == 31678
    assert all(math.isfinite(v) and v > 0 for v in result["scores"].values())
    # Seconds, not the minutes a training takes (a loose bound for a loaded machine).
    assert sum(result["seconds"].values()) < 60
    # The same seed scores the same untrained network the same way.
    again = zero_cost_scores(
        load_config("nano"), images, labels, ignore_index=11, count_size=(48, 64)
    )
    assert again["scores"] == pytest.approx(result["scores"])
