"""Search spaces: loading, checks with key paths, define-by-run sampling, enqueueing presets."""

from __future__ import annotations

import copy
import math
import re

import optuna
import pytest
import torch
import yaml

from jetsearch.space import SearchSpace, SpaceError, load_space, space_dir, space_names
from jetseg.config import ConfigError, JetSegConfig, arch_hash, config_to_dict, load_config
from jetseg.model import build_model

torch.set_num_threads(2)
optuna.logging.set_verbosity(optuna.logging.WARNING)

BUILTIN = ("jetseg", "nano", "agx", "tiny")
PRESETS = ("nano", "agx", "workstation")
N_STAGES = 3


def _trials(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n: int) -> list:
    """``(params, user_attrs, distributions, config)`` of ``n`` trials, each told a value."""
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space.sample(trial)
        # Something TPE can learn from: small, shallow networks score best.
        study.tell(trial, float(sum(s.width * s.depth for s in config.stages)))
        out.append((dict(trial.params), dict(trial.user_attrs), trial.distributions, config))
    return out


@pytest.fixture(scope="module")
def jetseg_space() -> SearchSpace:
    return load_space("jetseg")


@pytest.fixture(scope="module")
def random_trials(jetseg_space):
    return _trials(jetseg_space, optuna.samplers.RandomSampler(seed=0), 2000)


# ---------------------------------------------------------------------------------------------
# built-in spaces


def test_builtin_spaces_are_found_and_load():
    assert set(BUILTIN) <= set(space_names())
    sizes = {}
    for name in BUILTIN:
        space = load_space(name)
        assert space.name == name
        assert space.source == str(space_dir() / f"{name}.yaml")
        names = [n for n, _ in space.dimensions()]
        assert names and len(names) == len(set(names))
        sizes[name] = space.size_estimate()
    # The device spaces are narrower than the full one, and tiny is the smallest.
    assert sizes["tiny"] < sizes["nano"] < sizes["jetseg"]
    assert sizes["agx"] < sizes["jetseg"]


def test_a_path_is_accepted_where_a_name_is_and_dirs_do_not_shadow_names(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text((space_dir() / "tiny.yaml").read_text().replace("name: tiny", "name: mine"))
    assert load_space(path).name == "mine"
    assert load_space(str(path)).size_estimate() == load_space("tiny").size_estimate()
    # A folder that happens to share a space's name (the jetseg package!) is not a space file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert load_space("tiny").name == "tiny"
    with pytest.raises(FileNotFoundError, match="neither a search space file nor a built-in"):
        load_space("no-such-space")
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        load_space(tmp_path / "missing.yaml")


def test_space_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("stem: {width: {choice: [8, 16]}}\n")
    monkeypatch.setenv("JETSEARCH_SPACE_DIR", str(tmp_path))
    assert space_dir() == tmp_path
    assert space_names() == ["mine"]
    space = load_space("mine")
    assert space.dimensions() == [("stem.width", "one of 8, 16")]


def test_tiny_space_stays_tiny():
    for config in load_space("tiny").random_configs(100, seed=5):
        assert 8 <= config.stem.width <= 16
        for stage in config.stages:
            assert stage.depth == 1 and 8 <= stage.width <= 16
        dec = config.decoder
        assert all(8 <= w <= 16 for w in (dec.low_width, dec.head_width, dec.fuse_width))
        assert 8 <= dec.out_width <= 16


# ---------------------------------------------------------------------------------------------
# sampling


@pytest.mark.slow
def test_thousands_of_random_samples_are_valid_and_distinct(random_trials):
    configs = [config for *_, config in random_trials]
    assert all(isinstance(c, JetSegConfig) for c in configs)
    # Valid by construction: nothing had to be repaired after sampling.
    assert not [attrs for _, attrs, *_ in random_trials if "space_remapped" in attrs]
    assert len({arch_hash(c) for c in configs}) == len(configs)


@pytest.mark.slow
def test_random_samples_reach_every_dimension_and_every_value_bound(jetseg_space, random_trials):
    seen: dict[str, set] = {}
    distributions = {}
    for params, _, dists, _ in random_trials:
        for name, value in params.items():
            seen.setdefault(name, set()).add(value)
        distributions.update(dists)
    assert set(seen) == {name for name, _ in jetseg_space.dimensions()}
    for name, dist in distributions.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            assert seen[name] == set(dist.choices), name
        else:
            assert (min(seen[name]), max(seen[name])) == (dist.low, dist.high), name


def _assert_conditionals(params: dict, config: JetSegConfig) -> None:
    """Each conditional knob is a parameter exactly when it applies to this config."""
    stem_is_jetconv = config.stem.kind == "jetconv"
    assert ("stem.jetconv.branches.count" in params) == stem_is_jetconv
    jetconvs = [("stem.jetconv", config.stem.jetconv)] if stem_is_jetconv else []
    jetconvs += [(f"stages.{i}.jetconv", s.jetconv) for i, s in enumerate(config.stages)]
    for prefix, jetconv in jetconvs:
        count = len(jetconv.branches)
        assert params[f"{prefix}.branches.count"] == count
        for b in range(3):
            for knob in ("kernel", "dilation", "square_kernel"):
                assert (f"{prefix}.branches.{b}.{knob}" in params) == (b < count)
            if b < count:
                assert params[f"{prefix}.branches.{b}.kernel"] == jetconv.branches[b].kernel
    for i, stage in enumerate(config.stages):
        assert (f"stages.{i}.attention_reduction" in params) == (stage.attention == "cbam")
    last = config.stages[-1]
    for b in range(8):
        assert (f"stages.2.dilations.{b}" in params) == (b < last.depth)
    assert [params[f"stages.2.dilations.{b}"] for b in range(last.depth)] == list(last.dilations)


def test_conditional_knobs_are_sampled_only_when_they_apply(random_trials):
    for params, *_, config in random_trials:
        _assert_conditionals(params, config)
    counts = [params["stages.1.jetconv.branches.count"] for params, *_ in random_trials]
    assert {1, 2, 3} <= set(counts)


def test_one_and_three_branches_name_their_parameters(jetseg_space):
    # agx's S2 has three branches with kernels 3, 5, 7.
    params = jetseg_space.params_for(load_config("agx"))
    three = optuna.trial.FixedTrial(params)
    config = jetseg_space.sample(three)
    assert [b.kernel for b in config.stages[1].jetconv.branches] == [3, 5, 7]
    assert three.params["stages.1.jetconv.branches.2.kernel"] == 7
    one = optuna.trial.FixedTrial({**params, "stages.1.jetconv.branches.count": 1})
    config = jetseg_space.sample(one)
    assert [b.kernel for b in config.stages[1].jetconv.branches] == [3]
    assert "stages.1.jetconv.branches.0.kernel" in one.params
    assert "stages.1.jetconv.branches.1.kernel" not in one.params
    assert "stages.1.jetconv.branches.2.kernel" not in one.params


@pytest.mark.slow
def test_tpe_samples_are_valid_and_follow_the_conditionals(jetseg_space):
    trials = _trials(jetseg_space, optuna.samplers.TPESampler(seed=0, n_startup_trials=10), 200)
    for params, attrs, _, config in trials:
        assert isinstance(config, JetSegConfig) and "space_remapped" not in attrs
        _assert_conditionals(params, config)
    assert len({arch_hash(c) for *_, c in trials}) > 190


def test_sampled_networks_build_and_run(random_trials):
    image = torch.randn(1, 3, 64, 64)
    for *_, config in random_trials[:20]:
        model = build_model(config).eval()
        with torch.inference_mode():
            logits = model(image)
        assert logits.shape == (1, config.num_classes, 64, 64)
        assert torch.isfinite(logits).all()


def test_random_configs_are_deterministic_and_diverse(jetseg_space):
    first = [arch_hash(c) for c in jetseg_space.random_configs(40, seed=7)]
    again = [arch_hash(c) for c in jetseg_space.random_configs(40, seed=7)]
    other = [arch_hash(c) for c in jetseg_space.random_configs(40, seed=8)]
    assert first == again
    assert len(set(first)) == 40
    assert not set(first) & set(other)


def test_sampled_configs_are_named_after_the_space_and_trial():
    configs = load_space("tiny").random_configs(3, seed=0)
    assert [c.name for c in configs] == ["tiny-0", "tiny-1", "tiny-2"]


# ---------------------------------------------------------------------------------------------
# enqueueing known configs


def _replay(space: SearchSpace, config: JetSegConfig) -> JetSegConfig:
    """Enqueue ``config`` in a fresh study, then sample the trial it becomes."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(space.params_for(config))
    return space.sample(study.ask())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_inside_the_full_space_and_replays(jetseg_space, preset):
    config = load_config(preset)
    replayed = _replay(jetseg_space, config)
    assert arch_hash(replayed) == arch_hash(config)


@pytest.mark.parametrize("preset", ["nano", "agx"])
def test_device_presets_are_inside_their_device_spaces(preset):
    config = load_config(preset)
    assert arch_hash(_replay(load_space(preset), config)) == arch_hash(config)


def test_a_config_outside_the_space_names_every_knob_outside(tmp_path):
    with pytest.raises(SpaceError) as err:
        load_space("nano").params_for(load_config("workstation"))
    paths = {path for path, _ in err.value.problems}
    assert {"stem.width", "stages[2].width", "stages[2].depth"} <= paths
    assert "config 'workstation' lies outside search space 'nano'" in str(err.value)
    assert "stem.width: 24 is outside the space (one of 8, 16)" in str(err.value)


def test_other_spellings_of_the_same_network_are_inside():
    # tiny fixes the stem's groups to auto (1 for 3 -> 8 channels) and the first stages'
    # dilations to []; an explicit 1 and [1] build the same network.
    data = config_to_dict(load_space("tiny").random_configs(1, seed=0)[0])
    data["stem"]["kind"] = "jetconv"
    data["stem"]["width"] = 8
    data["stem"]["jetconv"]["groups"] = 1
    data["stages"][0]["dilations"] = [1]
    config = load_config(data)
    space = load_space("tiny")
    assert arch_hash(_replay(space, config)) == arch_hash(config)
    data["stages"][0]["dilations"] = [2]
    with pytest.raises(SpaceError, match=re.escape("stages[0].dilations: [2] is outside")):
        space.params_for(load_config(data))


# ---------------------------------------------------------------------------------------------
# mistakes in a space file

BASE = {
    "stem": {"kind": "jetconv", "width": {"choice": [8, 16]}},
    "stages": [
        {
            "depth": {"int": [1, 2]},
            "width": {"int": [16, 32], "step": 8},
            "expansion": {"choice": [1, 2]},
            "groups": {"choice": ["auto", 1, 8]},
            "jetconv": {
                "branches": {"count": {"int": [1, 3]}, "kernel": {"choice": [3, 5, 7]}},
                "groups": {"choice": ["auto", 8]},
            },
        },
        {"depth": 1, "width": 32, "jetconv": {"branches": {"count": 2, "kernel": 5}}},
        {"depth": 2, "width": 48, "dilations": {"per_block": {"choice": [1, 2]}}},
    ],
    "decoder": {"head_width": {"choice": [16, 32]}},
}


def _write(tmp_path, data) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _changed(keys: tuple, value) -> dict:
    data = copy.deepcopy(BASE)
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return data


def test_the_base_of_the_mistakes_is_a_valid_space(tmp_path):
    space = load_space(_write(tmp_path, BASE))
    assert space.name == "space"
    assert len(space.random_configs(30, seed=0)) == 30


MISTAKES = [
    # unknown keys, checked against the config's fields
    (("stages", 0, "widht"), 16, "stages[0].widht", "unknown key; allowed keys: depth, width"),
    (("decoder", "taps_"), [1, 2, 3], "decoder.taps_", "unknown key"),
    # a choice with a value the config refuses
    (
        ("stages", 1, "jetconv", "branches", "kernel"),
        {"choice": [3, 4]},
        "stages[1].jetconv.branches.kernel.choice",
        "4 is not one of 3, 5, 7",
    ),
    (("stages", 0, "attention"), {"choice": ["cbam", "se"]}, "stages[0].attention.choice", "'se'"),
    # impossible bounds
    (
        ("stages", 0, "width"),
        {"int": [32, 16], "step": 8},
        "stages[0].width.int",
        "low <= high must hold, got low=32, high=16",
    ),
    (("stages", 0, "width"), {"int": [16, 36], "step": 8}, "stages[0].width.int", "multiple of"),
    (("stages", 0, "expansion"), {"int": [1, 9]}, "stages[0].expansion.int", "9 is out of range"),
    # dimension specs with unknown or clashing keys
    (
        ("stages", 0, "width"),
        {"int": [16, 32], "steps": 8},
        "stages[0].width.steps",
        "unknown key in an int dimension; allowed: int, step, log",
    ),
    (
        ("stages", 0, "depth"),
        {"int": [1, 2], "choice": [1, 2]},
        "stages[0].depth",
        "one dimension",
    ),
    (("stages", 0, "depth"), {"range": [1, 2]}, "stages[0].depth", "expected a fixed value"),
    (
        ("stages", 0, "width"),
        {"float": [16.0, 32.0]},
        "stages[0].width",
        "a float dimension cannot set this field, which takes an integer",
    ),
    (("stages", 0, "depth"), {"choice": [1, 1]}, "stages[0].depth.choice", "1 appears twice"),
    # group counts that do not divide a width they can meet
    (
        ("stages", 0, "groups"),
        {"choice": ["auto", 1, 16]},
        "stages[0].groups.choice",
        "16 does not divide stem.width=8",
    ),
    (
        ("stages", 0, "width"),
        {"int": [12, 36], "step": 12},
        "stages[0].groups.choice",
        "8 does not divide stages[0].width=12",
    ),
    (
        ("stages", 0, "jetconv", "groups"),
        {"choice": ["auto", 16]},
        "stages[0].jetconv.groups.choice",
        "16 does not divide stem.width=8 x stages[0].expansion=1 = 8",
    ),
    (
        ("stem", "jetconv"),
        {"groups": {"choice": ["auto", 2]}},
        "stem.jetconv.groups.choice",
        "2 does not divide in_channels=3",
    ),
    # fixed values of the wrong type
    (("stages", 1, "width"), "wide", "stages[1].width", "expected an integer, got 'wide'"),
    (("decoder", "separable"), 2, "decoder.separable", "expected true or false, got 2"),
    (("stem",), [8], "stem", "expected a mapping"),
    # lists and conditional knobs
    (
        ("stages", 0, "dilations"),
        [1, 2],
        "stages[0].dilations",
        "[1, 2] has 2 entries but stages[0].depth can be 1",
    ),
    (
        ("stages", 2, "dilations"),
        {"per_block": {"choice": [1, 32]}},
        "stages[2].dilations.per_block.choice",
        "32 is out of range",
    ),
    (
        ("stages", 0, "jetconv", "branches", "count"),
        {"int": [1, 4]},
        "stages[0].jetconv.branches.count.int",
        "4 is out of range",
    ),
    (
        ("stages", 1, "jetconv", "branches"),
        {"kernel": 3},
        "stages[1].jetconv.branches.count",
        "missing",
    ),
    (
        ("decoder", "taps"),
        {"choice": [[1, 2, 3], [2, 1, 3]]},
        "decoder.taps.choice",
        "[2, 1, 3] must name shallow, mid and deep features in order",
    ),
    (("decoder", "taps"), [1, 2, 4], "decoder.taps", "4 names no encoder feature"),
]


@pytest.mark.parametrize(("keys", "value", "path", "message"), MISTAKES)
def test_each_mistake_is_refused_with_its_key_path(tmp_path, keys, value, path, message):
    source = _write(tmp_path, _changed(keys, value))
    with pytest.raises(SpaceError) as err:
        load_space(source)
    assert any(p == path and message in m for p, m in err.value.problems), err.value.problems
    assert source in str(err.value)


def test_every_mistake_of_a_file_is_listed_at_once(tmp_path):
    data = _changed(("stages", 0, "widht"), 16)
    data["decoder"]["separable"] = "no"
    with pytest.raises(SpaceError) as err:
        load_space(_write(tmp_path, data))
    assert [p for p, _ in err.value.problems] == ["stages[0].widht", "decoder.separable"]


def test_not_yaml_and_not_a_mapping_are_refused(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stem: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SpaceError, match="mapping at the top level"):
        load_space(path)


# ---------------------------------------------------------------------------------------------
# display


def test_dimensions_say_when_conditional_knobs_apply(jetseg_space):
    described = dict(jetseg_space.dimensions())
    assert described["stages.1.width"] == "int 32..192 step 16"
    assert described["stages.1.jetconv.branches.2.kernel"] == (
        "one of 3, 5, 7; when stages.1.jetconv.branches.count >= 3"
    )
    assert described["stages.0.jetconv.branches.0.kernel"] == "one of 3, 5, 7"
    assert described["stages.2.dilations.7"].endswith("when stages.2.depth >= 8")
    assert described["stages.0.attention_reduction"].endswith("when stages.0.attention is cbam")
    assert described["stem.jetconv.branches.1.kernel"].endswith(
        "when stem.kind is jetconv and stem.jetconv.branches.count >= 2"
    )


def test_size_estimate_counts_conditional_knobs_where_they_apply(tmp_path):
    data = {
        "stem": {"kind": "conv3x3"},
        "stages": [
            {
                "depth": {"int": [1, 2]},
                "dilations": {"per_block": {"choice": [1, 2]}},
                "jetconv": {"branches": {"count": {"int": [1, 2]}, "kernel": {"choice": [3, 5]}}},
                "attention": {"choice": ["none", "cbam"]},
                "attention_reduction": {"choice": [2, 4, 8]},
            },
            {"stride": 1},
            {"stride": 1},
        ],
    }
    space = load_space(_write(tmp_path, data))
    # attention: none, or cbam with 3 reductions = 4; depth 1 or 2 with a dilation per block
    # = 2 + 4 = 6; one or two branches with a kernel each = 2 + 4 = 6.
    assert space.size_estimate() == pytest.approx(math.log10(4 * 6 * 6))
    assert len(space.dimensions()) == 1 + 2 + 1 + 2 + 2


# ---------------------------------------------------------------------------------------------
# valid by construction: nothing to repair after sampling


def test_a_space_that_could_sample_a_broken_config_is_refused_with_every_problem(tmp_path):
    # The rules of jetseg.rules are checked at load time against every combination of the
    # values they read, with the per-key checks, so one load lists every problem.
    data = _changed(("stages", 1, "groups"), {"choice": ["auto", 3]})  # 3 divides no width
    data["stages"][0]["widht"] = 16
    data["stages"][2]["expansion"] = 0
    data["decoder"]["taps"] = {"choice": [[1, 2, 3], [3, 2, 1]]}
    with pytest.raises(SpaceError) as err:
        load_space(_write(tmp_path, data))
    assert isinstance(err.value, ConfigError)
    assert [path for path, _ in err.value.problems] == [
        "stages[0].widht",
        "stages[2].expansion",
        "stages[1].groups.choice",
        "decoder.taps.choice",
    ]
    text = str(err.value)
    assert "stages[2].expansion: 0 is out of range; 1 <= value <= 8 must hold" in text
    assert "3 does not divide stages[0].width=16, a width of the stages[1] 1x1 convs" in text
    assert "[3, 2, 1] must name shallow, mid and deep features in order" in text


def test_a_sample_that_breaks_a_rule_is_an_error_not_a_repair():
    # Unreachable from a loaded space; if the load-time check ever had a gap, the study stops
    # with the config's own problems instead of training another network than it recorded.
    space = load_space("nano")
    data = config_to_dict(load_config("nano"))
    data["stages"][1]["groups"] = 3  # divides neither 16 nor 32
    with pytest.raises(SpaceError, match="search space 'nano' produced an invalid config") as err:
        space._build(data)
    assert err.value.problems[0][0] == "stages[1].groups"
    assert "3 does not divide both widths" in err.value.problems[0][1]
