"""Multi-fidelity studies: rungs of longer training, promotion of a rung's best.

A study with ``rungs`` in its YAML trains every trial at rung 0 (the cheapest recipe).
Whenever a rung holds ``n`` finished networks, the best ``n // eta`` of them are trained again
at the next rung: in ``pareto`` mode by non-dominated sorting of mIoU against latency under the
budget, crowding distance within a front (MO-ASHA, Schmucker et al. 2021); in ``budget`` mode,
where every trained network is within the budget and only accuracy is maximised, by mIoU
(ASHA, Li et al. 2020). Each rung is its own Optuna study
(``NAME``, ``NAME:rung1``, ``NAME:rung2``, ...) in the same storage, so optuna-dashboard shows
every rung; a promotion is an ``enqueue_trial`` of the network's parameters into the next
rung's study, with user attributes linking it to its source (``arch_hash``,
``promoted_from_trial``, ``promoted_from_rung``).

Promotions are derived from what the storage holds, never from memory: a network is promoted
when it is among a rung's best and no trial of the next rung (waiting, running or finished)
has its ``arch_hash``. Running the promotion step again therefore does nothing new, and a
study killed between two promotions finds the missing ones when it starts again: none is lost
and none is done twice.

See ``docs/multi-fidelity.md`` for the design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jetsearch.fronts import DEFAULT_ALPHA, Point, ranked

RUNG_SEPARATOR = ":rung"


def rung_study_name(base: str, rung: int) -> str:
    """The Optuna study of ``rung``: the base name itself for rung 0."""
    return base if rung == 0 else f"{base}{RUNG_SEPARATOR}{rung}"


def split_rung_name(study_name: str) -> tuple[str, int]:
    """``("agx", 2)`` for ``"agx:rung2"``, ``("agx", 0)`` for ``"agx"``."""
    base, sep, tail = study_name.rpartition(RUNG_SEPARATOR)
    if sep and tail.isdigit():
        return base, int(tail)
    return study_name, 0


MODES = ("pareto", "budget")


def promotions_due(
    points: Sequence[Point],
    promoted: set[str],
    eta: int,
    alpha: float = DEFAULT_ALPHA,
    mode: str = "pareto",
) -> list[str]:
    """Keys of the points to promote now: the best ``len(points) // eta`` not yet promoted.

    ``points`` are a rung's finished, feasible networks (one point per network); ``promoted``
    the keys already present at the next rung. As in ASHA the quota grows with the rung, so a
    network that enters the top ``1/eta`` later is promoted then. Best is the non-dominated
    order in ``pareto`` mode, the highest mIoU (the faster first among equal ones) in
    ``budget`` mode.
    """
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    quota = len(points) // eta
    if mode == "budget":
        order = sorted(points, key=lambda p: (-p.miou, p.latency_ms, p.key))
    else:
        order = ranked(points, alpha)
    best = order[:quota]
    return [p.key for p in best if p.key not in promoted]


def trial_point(trial: Any, budget_ms: float | None) -> Point | None:
    """A finished, trained trial as a :class:`Point` (None for anything else)."""
    attrs = trial.user_attrs
    if trial.state.name != "COMPLETE" or not trial.values or attrs.get("arch_hash") is None:
        return None
    latency = attrs.get("latency_median_ms", attrs.get("latency_ms"))
    if latency is None:
        return None
    # Trials store their timed runs flat (latency_samples_ms); older ones in a "latency" dict.
    samples = (
        attrs.get("latency_samples_ms") or (attrs.get("latency") or {}).get("samples_ms") or ()
    )
    violation = 0.0 if budget_ms is None else max(0.0, latency - budget_ms)
    return Point(
        key=attrs["arch_hash"],
        miou=float(trial.values[0]),
        latency_ms=float(latency),
        samples=tuple(samples),
        feasible=violation == 0.0,
        violation=violation,
        miou_sd=float(attrs.get("val_miou_sd") or 0.0),
    )


@dataclass
class Promotion:
    """One network enqueued at a higher rung."""

    arch_hash: str
    from_rung: int
    from_trial: int
    to_rung: int


class RungLadder:
    """The rung studies of one multi-fidelity study, and the promotion step between them.

    Args:
        studies: the Optuna studies of rungs 0, 1, ... (``rung_study_name``), already created.
        eta: promote the best ``1/eta`` of each rung.
        budget_ms: the latency budget; over-budget networks are never promoted.
        mode: the study's mode, what "best" means (:func:`promotions_due`).
    """

    def __init__(
        self, studies: Sequence[Any], eta: int, budget_ms: float | None, mode: str = "pareto"
    ) -> None:
        if len(studies) < 1:
            raise ValueError("a ladder needs at least one rung")
        self.studies = list(studies)
        self.eta = eta
        self.budget_ms = budget_ms
        self.mode = mode

    def points(self, rung: int) -> tuple[list[Point], dict[str, Any]]:
        """The rung's finished feasible networks (first trial per network) and their trials."""
        points, trials = [], {}
        for t in self.studies[rung].get_trials(deepcopy=False):
            p = trial_point(t, self.budget_ms)
            if p is not None and p.feasible and p.key not in trials:
                points.append(p)
                trials[p.key] = t
        return points, trials

    def present(self, rung: int) -> set[str]:
        """arch_hashes with any trial (waiting, running, finished or failed) at ``rung``."""
        return {
            t.user_attrs["arch_hash"]
            for t in self.studies[rung].get_trials(deepcopy=False)
            if "arch_hash" in t.user_attrs
        }

    def promote(self) -> list[Promotion]:
        """Enqueue every promotion that is due, lowest rung first; returns what it enqueued."""
        done: list[Promotion] = []
        for rung in range(len(self.studies) - 1):
            points, trials = self.points(rung)
            due = promotions_due(points, self.present(rung + 1), self.eta, mode=self.mode)
            for key in due:
                source = trials[key]
                self.studies[rung + 1].enqueue_trial(
                    dict(source.params),
                    user_attrs={  # in the order the dashboard lists them
                        "rung": rung + 1,
                        **(
                            {"preset": source.user_attrs["preset"]}
                            if "preset" in source.user_attrs
                            else {}
                        ),
                        "arch_hash": key,
                        "promoted_from_rung": rung,
                        "promoted_from_trial": source.number,
                    },
                )
                done.append(Promotion(key, rung, source.number, rung + 1))
        return done

    def waiting_rung(self) -> int | None:
        """The highest rung with a promoted network waiting to be trained, if any."""
        for rung in range(len(self.studies) - 1, 0, -1):
            states = [t.state.name for t in self.studies[rung].get_trials(deepcopy=False)]
            if "WAITING" in states:
                return rung
        return None
