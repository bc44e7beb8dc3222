"""Promotion between rungs: exactly the non-dominated fraction, idempotent, crash-safe."""

from __future__ import annotations

import optuna
import pytest

from jetsearch.fronts import Point
from jetsearch.rungs import RungLadder, promotions_due, rung_study_name, split_rung_name


def hand_made() -> list[Point]:
    # Nine networks. The non-dominated front is {a, b, c}: a is fastest, c most accurate,
    # b between them; every other one is dominated by one of those three.
    return [
        Point("a", 0.40, 5.0),
        Point("b", 0.50, 8.0),
        Point("c", 0.60, 12.0),
        Point("d", 0.39, 6.0),
        Point("e", 0.45, 9.0),
        Point("f", 0.55, 13.0),
        Point("g", 0.30, 7.0),
        Point("h", 0.35, 11.0),
        Point("i", 0.20, 14.0),
    ]


def test_promotion_picks_exactly_the_non_dominated_third():
    assert sorted(promotions_due(hand_made(), set(), eta=3)) == ["a", "b", "c"]


def test_promotion_skips_what_is_already_promoted_and_grows_with_the_rung():
    pts = hand_made()
    assert promotions_due(pts, {"a", "b", "c"}, eta=3) == []
    # With eta 2 the quota is 4: the front (3) plus the best of the second front by crowding.
    due = promotions_due(pts, {"a", "b", "c"}, eta=2)
    assert len(due) == 1 and due[0] in {"d", "e", "f"}
    assert promotions_due(pts[:2], set(), eta=3) == []


def test_promotion_never_takes_a_dominated_network_before_a_front_one():
    pts = hand_made()
    # Quota 1 of 9 at eta 9: one of the front, never a dominated network.
    assert promotions_due(pts, set(), eta=9)[0] in {"a", "b", "c"}
    with pytest.raises(ValueError, match="eta"):
        promotions_due(pts, set(), eta=1)


def test_budget_mode_promotes_the_most_accurate_third_whatever_their_latency():
    # The non-dominated third is {a, b, c}; by mIoU alone it is {c, f, b}.
    assert promotions_due(hand_made(), set(), eta=3, mode="budget") == ["c", "f", "b"]
    # Equal mIoU: the faster first.
    tied = [Point("slow", 0.5, 9.0), Point("fast", 0.5, 4.0), Point("low", 0.1, 1.0)]
    assert promotions_due(tied, set(), eta=2, mode="budget") == ["fast"]
    with pytest.raises(ValueError, match="mode"):
        promotions_due(tied, set(), eta=2, mode="fastest")


def test_rung_names_round_trip():
    assert rung_study_name("agx", 0) == "agx"
    assert rung_study_name("agx", 2) == "agx:rung2"
    assert split_rung_name("agx:rung2") == ("agx", 2)
    assert split_rung_name("my:study") == ("my:study", 0)


def make_ladder(storage, rungs=3, eta=3, budget=None):
    studies = [
        optuna.create_study(
            storage=storage,
            study_name=rung_study_name("s", k),
            directions=["maximize", "minimize"],
            load_if_exists=True,
        )
        for k in range(rungs)
    ]
    return RungLadder(studies, eta=eta, budget_ms=budget)


def add_trained(study, key, miou, latency, rung=0):
    dist = optuna.distributions.CategoricalDistribution(
        ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"net": key},
            distributions={"net": dist},
            values=[miou, latency],
            user_attrs={"arch_hash": key, "latency_ms": latency, "rung": rung},
        )
    )


def test_ladder_enqueues_each_promotion_once_in_a_real_storage(tmp_path):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.log"))
    )
    ladder = make_ladder(storage)
    for p in hand_made()[:6]:
        add_trained(ladder.studies[0], p.key, p.miou, p.latency_ms)
    first = ladder.promote()
    # 6 // 3 = 2 of the front a, b, c: its two ends first (crowding distance is infinite there).
    assert sorted(p.arch_hash for p in first) == ["a", "c"]
    assert ladder.waiting_rung() == 1
    # Running the step again (a restarted process) promotes nothing more.
    assert ladder.promote() == []
    again = make_ladder(storage)  # as a new process would see the storage
    assert again.promote() == []
    waiting = again.studies[1].get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["arch_hash"] for t in waiting) == ["a", "c"]
    assert {t.user_attrs["promoted_from_rung"] for t in waiting} == {0}

    # Each waiting trial trains the network it links to: its sampled parameter is the source's.
    def objective(trial):
        net = trial.suggest_categorical("net", list("abcdefghi"))
        assert net == trial.user_attrs["arch_hash"]
        return 0.9, 1.0

    again.studies[1].optimize(objective, n_trials=2)
    done = again.studies[1].get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["net"] for t in done) == ["a", "c"]
    assert again.waiting_rung() is None


def test_over_budget_networks_are_never_promoted(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    ladder = make_ladder(storage, budget=10.0)
    for p in hand_made():
        add_trained(ladder.studies[0], p.key, p.miou, p.latency_ms)
    promoted = {p.arch_hash for p in ladder.promote()}
    # Feasible (<= 10 ms): a, b, d, e, g; quota 5 // 3 = 1, and c (12 ms) may not be it.
    assert len(promoted) == 1 and promoted <= {"a", "b"}
