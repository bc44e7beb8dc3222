"""A latency budget relative to a preset, resolved once per study, and ``--trials`` counting
trained networks while the ones over the budget are rejected before training.

The studies here are ``study_cases.write_relative_study``'s tiny ones, with the roofline
estimate (the ``nano`` profile at 64x64) as their only provider: deterministic latencies, a few
hundredths of a second each. The tiny space's networks estimate at 1.1-1.8 ms there and the
nano preset at about 3.0 ms: ``TIGHT`` leaves about one network in four under the budget,
``NOTHING`` none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import optuna
import pytest
from study_cases import NOTHING, TIGHT, write_relative_study, write_study

from jetsearch.budget import DEFAULT_MAX_REJECTED, TrialCount, is_rejected, preset_latency
from jetsearch.cli import EXIT_OK, EXIT_USAGE, main
from jetsearch.latency.chain import LatencyChain
from jetsearch.run import prepare_study, run_study, run_worker_process
from jetsearch.spec import StudyError, load_study_spec, spec_from_dict, study_budget
from jetsearch.storage import open_rung_studies, open_storage
from jetseg import list_presets
from jetseg.config import ConfigError

COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED


def _study(storage: Path, name: str = "small") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


# ---------------------------------------------------------------------------------------------
# the spec


@pytest.mark.parametrize(
    ("latency", "mode", "key", "words"),
    [
        (
            {"budget_ms": 20, "budget_relative_to": "nano"},
            "pareto",
            "latency.budget_relative_to",
            "give one of budget_ms and budget_relative_to, not both; got budget_ms=20.0, "
            "budget_relative_to='nano'",
        ),
        ({}, "budget", "latency.budget_ms", "budget mode needs a latency budget"),
        (
            {"budget_relative_to": "nanoo"},
            "pareto",
            "latency.budget_relative_to",
            f"'nanoo' is not a preset; known presets: {', '.join(list_presets())}",
        ),
        (
            {"budget_relative_to": "nano", "budget_factor": 0},
            "pareto",
            "latency.budget_factor",
            "value > 0 must hold",
        ),
        (
            {"budget_relative_to": "nano", "budget_factor": -1.5},
            "pareto",
            "latency.budget_factor",
            "value > 0 must hold",
        ),
        (
            {"budget_ms": 20, "budget_factor": 0.5},
            "pareto",
            "latency.budget_factor",
            "budget_factor scales budget_relative_to, which is not set; got budget_factor=0.5",
        ),
    ],
)
def test_the_budget_keys_are_checked_at_construction_naming_key_rule_and_value(
    latency, mode, key, words
):
    with pytest.raises(ConfigError) as err:
        spec_from_dict({"name": "s", "target": "local", "mode": mode, "latency": latency})
    messages = dict(err.value.problems)
    assert key in messages, err.value.problems
    assert words in messages[key]


def test_a_budget_relative_to_a_preset_is_a_valid_budget_for_budget_mode():
    spec = spec_from_dict(
        {"name": "s", "target": "agx", "mode": "budget", "latency": {"budget_relative_to": "agx"}}
    )
    assert spec.latency.budget_ms is None and spec.latency.has_budget
    assert spec.latency.budget_rule() == {"relative_to": "agx", "factor": 1.0}


def test_the_board_studies_state_their_budget_relative_to_their_preset():
    assert load_study_spec("nano").latency.budget_rule() == {"relative_to": "nano", "factor": 1.0}
    assert load_study_spec("agx").latency.budget_rule() == {"relative_to": "agx", "factor": 1.0}
    assert load_study_spec("local").latency.budget_rule() == {"budget_ms": 60.0}


def test_a_study_file_with_an_unknown_preset_creates_nothing(tmp_path, capsys):
    spec = write_study(tmp_path, latency={"budget_ms": None, "budget_relative_to": "nanoo"})
    storage = tmp_path / "s.log"
    argv = ["study", "--target", str(spec), "--trials", "1", "--storage", str(storage)]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "latency.budget_relative_to: 'nanoo' is not a preset; known presets:" in err
    assert not storage.exists() and not (tmp_path / "s.log.artifacts").exists()


# ---------------------------------------------------------------------------------------------
# resolved once, stored, read back


def test_a_relative_budget_is_the_presets_latency_times_the_factor_resolved_once(tmp_path):
    spec = load_study_spec(write_relative_study(tmp_path, 0.5))
    storage = str(tmp_path / "s.log")
    chain = LatencyChain(spec)
    try:  # the preset as a trial of the study would measure it
        preset_ms = preset_latency(spec, chain, "nano").median_ms
    finally:
        chain.close()

    prepared = prepare_study(spec, storage=storage)
    prepared.latency.close()
    assert prepared.budget.budget_ms == pytest.approx(0.5 * preset_ms)
    study = _study(tmp_path / "s.log")
    assert study.user_attrs["budget_ms"] == prepared.budget.budget_ms
    source = study.user_attrs["budget_source"]
    assert source.startswith(f"nano preset x0.5: {0.5 * preset_ms:.2f} ms (")
    assert f"the preset {preset_ms:.2f} ms" in source and "estimated" in source
    assert "nano profile" in source
    assert study.user_attrs["budget_rule"] == {"relative_to": "nano", "factor": 0.5}
    assert "feasible means" in study.user_attrs["feasibility"]
    assert f"{prepared.budget.budget_ms:g}" in study.user_attrs["feasibility"]

    # Resumed with a file that now says 2x: the stored budget holds, with a warning.
    changed = dataclasses.replace(
        spec, latency=dataclasses.replace(spec.latency, budget_factor=2.0)
    )
    with pytest.warns(UserWarning, match="keeps the latency budget it started with"):
        again = prepare_study(changed, storage=storage)
    again.latency.close()
    assert again.budget == prepared.budget
    assert study_budget(_study(tmp_path / "s.log")) == prepared.budget


def test_a_trial_process_never_resolves_the_budget_itself(tmp_path):
    spec = load_study_spec(write_relative_study(tmp_path, 0.5))
    opened = open_rung_studies(spec, str(tmp_path / "s.log"))  # never prepared: no budget
    with pytest.raises(StudyError, match="no resolved latency budget yet"):
        run_worker_process(spec, opened, 1, None, 0)
    assert opened.study.trials == []


@pytest.mark.slow
def test_a_resumed_study_runs_its_trials_under_the_stored_budget(tmp_path):
    spec = load_study_spec(write_relative_study(tmp_path, TIGHT))
    storage = str(tmp_path / "s.log")
    prepared = prepare_study(spec, storage=storage)
    prepared.latency.close()
    budget = prepared.budget.budget_ms
    # The file now says 3x (every tiny network would be under it); the study keeps its budget.
    loose = dataclasses.replace(spec, latency=dataclasses.replace(spec.latency, budget_factor=3))
    with pytest.warns(UserWarning, match="keeps the latency budget"):
        run_study(loose, trials=1, storage=storage)
    trials = _study(tmp_path / "s.log").trials
    for t in trials:
        assert t.constraints["latency_ms"] == pytest.approx(t.user_attrs["latency_ms"] - budget)
        assert t.user_attrs["feasible"] is (t.user_attrs["latency_ms"] <= budget)
    assert [t.state for t in trials].count(COMPLETE) == 1


# ---------------------------------------------------------------------------------------------
# --trials counts trained networks


def _trial(state, number: int, feasible: bool | None, **attrs) -> optuna.trial.FrozenTrial:
    user_attrs = dict(attrs)
    if feasible is not None:
        user_attrs["feasible"] = feasible
    values = [0.3, 1.0] if state == COMPLETE else None
    return optuna.trial.create_trial(
        state=state, values=values, user_attrs=user_attrs, params={}, distributions={}
    )


def test_what_trials_counts_and_what_it_does_not():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for state, feasible, attrs in [
        (COMPLETE, True, {}),  # trained
        (PRUNED, False, {"outcome": "rejected: over budget (2.00 ms > 1.00 ms)"}),
        # written by an earlier version: pruned over the budget before training
        (PRUNED, False, {"pruned_reason": "over the latency budget before training"}),
        (COMPLETE, True, {"duplicate_of": 0}),  # a duplicate of a trained network counts
        (PRUNED, True, {"pruned_reason": "pruned after epoch 1 by the pruner"}),  # trained
        (optuna.trial.TrialState.FAIL, None, {}),  # failed before its latency: neither
        (PRUNED, False, {}),
        (PRUNED, False, {}),
    ]:
        study.add_trial(_trial(state, len(study.trials), feasible, **attrs))
    count = TrialCount.of(study)
    assert (count.counted, count.rejected, count.rejected_in_a_row) == (3, 4, 2)
    assert [is_rejected(t) for t in study.trials] == [
        False, True, True, False, False, False, True, True,
    ]  # fmt: skip
    assert count.reached(3, DEFAULT_MAX_REJECTED, 1.0)
    assert not count.reached(4, DEFAULT_MAX_REJECTED, 1.0)
    with pytest.raises(StudyError) as err:
        count.reached(4, 2, 1.0)
    message = str(err.value)
    assert "the last 2 networks drawn in a row were over the latency budget (1.00 ms)" in message
    assert "3 of 4 trials trained" in message and "raise --max-rejected (now 2)" in message


def test_a_space_with_nothing_under_the_budget_stops_with_a_message(tmp_path):
    spec = load_study_spec(write_relative_study(tmp_path, NOTHING))
    storage = str(tmp_path / "s.log")
    with pytest.raises(StudyError, match=r"raise --max-rejected \(now 3\)"):
        run_study(spec, trials=2, storage=storage, max_rejected=3)
    trials = _study(tmp_path / "s.log").trials
    assert [t.state for t in trials] == [PRUNED] * 3
    for t in trials:
        assert t.user_attrs["outcome"].startswith("rejected: over budget (")
        assert t.user_attrs["outcome"].endswith(" ms)")
        assert t.constraints["latency_ms"] > 0
        assert "val_miou" not in t.user_attrs and "train_time_s" not in t.user_attrs
    # Resumed as it was, it stops at once (the count is the storage's); a higher cap goes on.
    with pytest.raises(StudyError, match="the last 3 networks"):
        run_study(spec, trials=2, storage=storage, max_rejected=3)
    assert len(_study(tmp_path / "s.log").trials) == 3
    with pytest.raises(StudyError, match="the last 4 networks"):
        run_study(spec, trials=2, storage=storage, max_rejected=4)
    assert len(_study(tmp_path / "s.log").trials) == 4


@pytest.fixture(scope="module")
def tight_study(tmp_path_factory) -> tuple[Path, str]:
    """``jetsearch study --trials 3`` under a budget that most tiny networks are over."""
    directory = tmp_path_factory.mktemp("tight")
    storage = directory / "s.log"
    spec = write_relative_study(directory, TIGHT)
    argv = ["study", "--target", str(spec), "--trials", "3", "--storage", str(storage)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == EXIT_OK
    return storage, out.getvalue()


def test_trials_counts_trained_networks_and_records_the_rejected_ones(tight_study):
    storage, out = tight_study
    study = _study(storage)
    budget = study.user_attrs["budget_ms"]
    trials = study.trials
    complete = [t for t in trials if t.state == COMPLETE]
    rejected = [t for t in trials if t.state == PRUNED]
    assert (
        len(complete) == 3 and len(rejected) >= 1 and len(complete) + len(rejected) == len(trials)
    )
    for t in complete:
        assert t.user_attrs["feasible"] is True and t.user_attrs["latency_ms"] <= budget
        assert t.user_attrs["outcome"] == "completed" and "val_miou" in t.user_attrs
    for t in rejected:
        latency = t.user_attrs["latency_ms"]
        assert t.user_attrs["outcome"] == (
            f"rejected: over budget ({latency:.2f} ms > {budget:.2f} ms)"
        )
        assert t.user_attrs["feasible"] is False and latency > budget
        assert t.constraints["latency_ms"] == pytest.approx(latency - budget)
        assert "train_time_s" not in t.user_attrs
    # What the run printed counts trained trials: the lines, the start and the end.
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(lines) == len(trials)
    assert lines[-1].endswith(f"| 3/3 trained, {len(rejected)} rejected, ETA 0:00:00"), lines
    assert "latency budget: nano preset x0.44: " in out
    assert "done: 3 new trials trained in" in out
    assert f"{len(rejected)} networks rejected over the budget (3 trained in the study)" in out


def test_show_prints_the_budget_its_source_and_the_counts(tight_study, capsys):
    storage, _ = tight_study
    study = _study(storage)
    rejected = sum(1 for t in study.trials if t.state == PRUNED)
    assert main(["show", "--study", "small", "--storage", str(storage)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"latency budget: {study.user_attrs['budget_source']}" in out
    assert (
        "networks trained within the budget: 3 at rung 0; rejected before training (over the "
        f"budget): {rejected}"
    ) in out


@pytest.mark.slow
def test_parallel_processes_count_trained_trials_together(tmp_path):
    spec = load_study_spec(write_relative_study(tmp_path, TIGHT))
    run = run_study(spec, trials=3, storage=str(tmp_path / "s.log"), jobs=2)
    study = _study(tmp_path / "s.log")
    count = TrialCount.of(study)
    # Two processes may each start a last trial at once: one more than asked can finish.
    assert 3 <= count.counted <= 4 and count.rejected >= 1
    assert (run.finished_before, run.finished_after) == (0, count.counted)
    assert run.rejected == count.rejected
    assert all(t.state in (COMPLETE, PRUNED) for t in study.trials)


def test_the_command_line_caps_rejections_as_the_run_loop_does():
    from jetsearch.cli import build_parser

    args = build_parser().parse_args(["study", "--target", "local"])
    assert args.max_rejected == DEFAULT_MAX_REJECTED
    assert (
        build_parser()
        .parse_args(["study", "--target", "local", "--max-rejected", "7"])
        .max_rejected
        == 7
    )


def test_a_rejection_prints_the_digits_that_tell_latency_and_budget_apart():
    from jetsearch.budget import over_budget

    assert over_budget(2.0, 1.0) == "over budget (2.00 ms > 1.00 ms)"
    assert over_budget(9.7042, 9.6981) == "over budget (9.704 ms > 9.698 ms)"
