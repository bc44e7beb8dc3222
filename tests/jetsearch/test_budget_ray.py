"""The Ray backend under a budget relative to a preset: the driver resolves it once, the
workers read it from the storage, and ``trials`` counts trained networks (test_budget.py has
the studies and the local backend)."""

from __future__ import annotations

import optuna
import pytest
from study_cases import (
    NOTHING,
    TIGHT,
    needs_ray,
    write_relative_study,
)

from jetsearch.budget import TrialCount
from jetsearch.distributed import RayOptions, run_study_ray
from jetsearch.spec import StudyError, load_study_spec
from jetsearch.storage import open_storage

COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED


def _study(storage) -> optuna.Study:
    return optuna.load_study(study_name="small", storage=open_storage(str(storage)))


pytestmark = [
    pytest.mark.slow,
    needs_ray,
]


def test_ray_workers_count_trained_trials_under_the_stored_budget(local_ray, tmp_path):
    spec = load_study_spec(write_relative_study(tmp_path, TIGHT))
    run = run_study_ray(
        spec, trials=2, storage=str(tmp_path / "s.log"), options=RayOptions(workers=2)
    )
    study = _study(tmp_path / "s.log")
    budget = study.user_attrs["budget_ms"]
    count = TrialCount.of(study)
    assert 2 <= count.counted <= 3 and count.rejected >= 1
    assert (run.finished_after, run.rejected) == (count.counted, count.rejected)
    for t in study.trials:
        assert t.state in (COMPLETE, PRUNED)
        assert t.constraints["latency_ms"] == pytest.approx(t.user_attrs["latency_ms"] - budget)
        if t.state == PRUNED:
            assert t.user_attrs["outcome"].startswith("rejected: over budget (")


def test_ray_stops_a_study_with_nothing_under_the_budget_with_its_message(local_ray, tmp_path):
    spec = load_study_spec(write_relative_study(tmp_path, NOTHING))
    with pytest.raises(StudyError) as err:
        run_study_ray(
            spec,
            trials=2,
            storage=str(tmp_path / "s.log"),
            options=RayOptions(workers=1),
            max_rejected=3,
        )
    assert str(err.value).startswith("study stopped: the last 3 networks drawn in a row")
    assert "raise --max-rejected (now 3)" in str(err.value)
    assert TrialCount.of(_study(tmp_path / "s.log")).counted == 0
