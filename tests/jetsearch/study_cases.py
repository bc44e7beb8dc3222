"""Tiny study files for the tests that run whole studies (local, Ray, PostgreSQL), and what
every multi-fidelity run of one must show."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from jetsearch.distributed import import_ray
from jetsearch.rungs import RungLadder, promotions_due, rung_study_name
from jetsearch.spec import merge_mappings
from jetsearch.storage import open_storage

REPO = Path(__file__).resolve().parents[2]


def write_study(directory: Path, name: str = "small", **changes) -> Path:
    """``studies/local.yaml`` shrunk to trials of a second or two (one rung), with ``changes``
    merged in."""
    base = yaml.safe_load((REPO / "studies" / "local.yaml").read_text())
    small = merge_mappings(
        base,
        {
            "space": "tiny",
            "data": None,
            "synthetic": {"train_images": 8, "val_images": 4},
            "train": {"epochs": 1, "size": [48, 64], "batch_size": 8, "threads": 1},
            "latency": {
                "input_size": [64, 64],
                "budget_ms": 1000,
                "runs": 5,
                "warmup_s": 0.05,
                "threads": 1,
                "cache": str(directory / f"{name}-latency.sqlite"),
            },
            "enqueue_presets": [],
        },
    )
    # One fidelity unless a test asks for rungs: the local study's rungs train longer, and its
    # recipe for the synthetic scenes would replace the test's own train: keys and rungs.
    small.pop("rungs", None)
    small.pop("eta", None)
    small["synthetic"].pop("train", None)
    small["synthetic"].pop("rungs", None)
    small["train"].pop("holdout", None)  # the synthetic scenes have no sequences to hold out
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merge_mappings(small, changes), sort_keys=False))
    return path


# Latency from the roofline estimate alone (the nano profile): deterministic, a few hundredths
# of a second per network at 64x64, where the tiny space's networks estimate at 1.1-1.8 ms and
# the nano preset at about 3.0 ms.
ESTIMATE_LATENCY = {"providers": ["estimate"], "device_profile": "nano", "cache": None}
TIGHT = 0.44  # x the nano preset (about 1.30 ms): about one tiny network in four is under it
NOTHING = 0.1  # x the nano preset (about 0.30 ms): no tiny network is under it


def write_relative_study(directory: Path, factor: float, name: str = "small") -> Path:
    """:func:`write_study` with its latency estimated and its budget ``factor`` x the nano
    preset's."""
    latency = {"budget_ms": None, "budget_relative_to": "nano", "budget_factor": factor}
    return write_study(directory, name, latency={**ESTIMATE_LATENCY, **latency})


def check_promotions(storage: Path, eta: int, name: str = "small", mode: str = "pareto") -> None:
    """Every due promotion is there, none twice, and each trained the network it links to.

    As in ASHA a network is promoted while it is in its rung's top 1/eta, so a network that
    was in the top early and was pushed out later stays promoted: what must hold at the end is
    that the current top 1/eta is all promoted.
    """
    opened = open_storage(str(storage))
    rung0, rung1 = (
        optuna.load_study(study_name=rung_study_name(name, k), storage=opened) for k in (0, 1)
    )
    points, _ = RungLadder([rung0, rung1], eta, None, mode).points(0)
    top = set(promotions_due(points, set(), eta, mode=mode))
    # A promoted trial whose process was killed is failed ("owner died") and its network run
    # again as a retry (retry_of): a retry is not a second promotion. A trial that found the
    # promotion it meant to train taken by another process is pruned before it has a network.
    promoted = [
        t.user_attrs["arch_hash"]
        for t in rung1.trials
        if "promoted_from_trial" in t.user_attrs and "retry_of" not in t.user_attrs
    ]
    assert len(promoted) == len(set(promoted)), "a network was promoted twice"
    for t in rung1.trials:
        if "promoted_from_trial" not in t.user_attrs:
            assert t.state == optuna.trial.TrialState.PRUNED
            assert t.user_attrs["pruned_reason"] == "no promoted network was waiting at this rung"
        if t.state == optuna.trial.TrialState.FAIL:
            assert t.user_attrs["failure_reason"] == "owner died"
            assert t.user_attrs["outcome"] == "failed: owner died"  # no longer "running"
    assert top and top <= set(promoted), (top, promoted)
    assert set(promoted) <= {p.key for p in points}
    for t in rung1.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        source = rung0.trials[t.user_attrs["promoted_from_trial"]]
        assert source.user_attrs["arch_hash"] == t.user_attrs["arch_hash"]
        a, b = (yaml.safe_load(x.user_attrs["config_yaml"]) for x in (source, t))
        a.pop("name"), b.pop("name")  # sampled configs are named after their trial
        assert a == b
        assert t.user_attrs["rung"] == 1 and t.user_attrs["promoted_from_rung"] == 0
        # Latency is measured once per network: the promoted trial got it from the cache.
        assert "from-cache" in t.user_attrs["latency_flags"]
        assert t.user_attrs["latency_median_ms"] == source.user_attrs["latency_median_ms"]


def _ray_missing() -> str | None:
    """Why Ray cannot run here (its install hint), or None when it can."""
    from jetsearch.spec import StudyError

    try:
        import_ray()
    except StudyError as err:
        return str(err)
    return None


RAY_MISSING = _ray_missing()
needs_ray = pytest.mark.skipif(RAY_MISSING is not None, reason=RAY_MISSING or "")
