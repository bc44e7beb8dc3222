"""The study YAML's dataclasses: written out, and kept in step with what they mirror."""

from __future__ import annotations

import dataclasses

import pytest

from jetsearch.latency.chain import PROVIDER_KINDS, MeasurementSettings, ProviderSpec
from jetsearch.spec import (
    SIZE_RULE,
    TRIAL_SET_FIELDS,
    LatencySpec,
    Rung,
    TrialBudget,
    load_study_spec,
)
from jetseg.config import ConfigError
from jetseg.train_config import TrainConfig
from jetseg.validation import field_types

STUDY_KEYS = ("train_images", "val_images", "threads")  # a study's own train: keys


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def test_trial_budget_covers_trainconfig_less_what_a_trial_sets() -> None:
    train = _fields(TrainConfig)
    budget = _fields(TrialBudget)
    expected = [name for name in train if name not in TRIAL_SET_FIELDS]
    # A field added to TrainConfig must be added here too (or to TRIAL_SET_FIELDS).
    assert list(budget) == [*expected, *STUDY_KEYS]
    train_types, budget_types = field_types(TrainConfig), field_types(TrialBudget)
    for name in expected:
        if name == "size":  # every trial trains at one size: the study cannot leave it out
            assert budget_types[name] == tuple[int, int]
            assert budget[name].metadata == SIZE_RULE
            continue
        assert budget_types[name] == train_types[name], name
        assert budget[name].metadata == train[name].metadata, name
        if name != "epochs":  # a study's own default: 3 short, comparable epochs
            assert budget[name].default == train[name].default, name
    assert TrialBudget().epochs == 3 and TrialBudget().size == (360, 480)
    # Every field reaches the trial's TrainConfig, and what a trial sets is set.
    config = TrialBudget(lr=0.004, schedule="cosine", holdout=("0001TP",)).train_config(seed=9)
    assert (config.lr, config.schedule, config.holdout, config.seed) == (
        0.004,
        "cosine",
        ("0001TP",),
        9,
    )
    assert (config.overlays, config.export_onnx, config.progress) == (0, False, False)


def test_a_rung_has_every_train_key_optional() -> None:
    budget, rung = _fields(TrialBudget), _fields(Rung)
    assert list(rung) == list(budget)
    budget_types, rung_types = field_types(TrialBudget), field_types(Rung)
    for name, f in rung.items():
        assert f.default is None, name
        assert f.metadata == budget[name].metadata, name
        assert rung_types[name] in (budget_types[name] | None, budget_types[name]), name
    assert Rung(epochs=4, size=(128, 160)).overrides() == {"epochs": 4, "size": (128, 160)}


def test_the_rules_of_train_hold_in_rungs_and_name_their_key(tmp_path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(
        "target: local\ntrain: {size: [48, 64]}\n"
        "rungs: [{epochs: 0}, {size: [8, 64], momentum: 1.5}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_study_spec(study)
    keys = {key for key, _ in err.value.problems}
    assert {"rungs[0].epochs", "rungs[1].size[0]", "rungs[1].momentum"} <= keys


def test_the_latency_settings_are_declared_once() -> None:
    settings = list(_fields(MeasurementSettings))
    # The study's latency section and the providers' spec are those settings plus their own.
    assert list(_fields(LatencySpec)) == [
        *settings,
        "input_size",
        "budget_ms",
        "budget_relative_to",
        "budget_factor",
        "providers",
    ]
    assert list(_fields(ProviderSpec)) == [*settings, "target"]
    assert issubclass(LatencySpec, MeasurementSettings)
    assert issubclass(ProviderSpec, MeasurementSettings)
    # A study names a precision and caches its measurements unless it says otherwise.
    assert (LatencySpec().precision, LatencySpec().cache) == ("fp16", "jetsearch-latency.sqlite")
    assert (ProviderSpec().precision, ProviderSpec().cache) == (None, None)
    spec = load_study_spec("local")
    provider = ProviderSpec.from_study(spec)
    assert provider.target == "local"
    assert all(getattr(provider, name) == getattr(spec.latency, name) for name in settings)
    assert PROVIDER_KINDS == ("workers", "local", "estimate")


def test_a_study_trains_with_its_synthetic_rungs_only_on_the_synthetic_scenes(tmp_path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(
        "target: local\ntrain: {epochs: 3, size: [64, 96], holdout: [0006R0]}\n"
        "rungs: [{epochs: 2}, {epochs: 8}]\n"
        "synthetic: {train_images: 32, train: {lr: 0.05, size: [48, 64], holdout: []},\n"
        "            rungs: [{epochs: 1}, {epochs: 4, size: [64, 80]}]}\n"
    )
    scenes = load_study_spec(study)
    assert [r.epochs for r in scenes.rungs] == [1, 4]
    assert scenes.train.lr == 0.05 and scenes.train.size == (48, 64)
    assert scenes.rung_budget(1).size == (64, 80) and scenes.rung_budget(1).holdout == ()
    assert scenes.synthetic.train_images == 32
    camvid = load_study_spec(study, data=str(tmp_path))
    assert [r.epochs for r in camvid.rungs] == [2, 8]
    assert camvid.train.lr is None and camvid.train.size == (64, 96)
    assert camvid.rung_budget(1).holdout == ("0006R0",)
    study.write_text("target: local\nsynthetic: {train: [1, 2]}\n")
    with pytest.raises(ConfigError) as err:
        load_study_spec(study)
    assert err.value.problems[0][0] == "synthetic.train" and str(study) in str(err.value)
    study.write_text("target: local\nsynthetic: {train: {lr: -1}}\n")
    with pytest.raises(ConfigError) as err:  # the scenes' keys obey train:'s rules
        load_study_spec(study)
    assert "train.lr" in {key for key, _ in err.value.problems}
