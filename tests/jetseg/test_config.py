"""Config validation with key paths, YAML round trips and arch_hash."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from jetseg.config import (
    ConfigError,
    JetSegConfig,
    arch_hash,
    config_to_dict,
    load_config,
    preset_names,
    save_config,
)


def _base() -> dict:
    return config_to_dict(load_config("nano"))


def _set(data: dict, path: list, value) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    "path,value,message",
    [
        (
            ["stages", 2, "jetconv", "branches", 1, "kernel"],
            4,
            "stages[2].jetconv.branches[1].kernel: 4 is not one of 3, 5, 7",
        ),
        (
            ["stages", 0, "jetconv", "branches", 0, "square_kernel"],
            9,
            "stages[0].jetconv.branches[0].square_kernel: 9 is not one of 3, 5, 7",
        ),
        (
            ["stages", 1, "jetconv", "branches", 0, "dilation"],
            0,
            "stages[1].jetconv.branches[0].dilation: 0 is out of range",
        ),
        (
            ["stages", 1, "groups"],
            3,
            "stages[1].groups: 3 does not divide both widths of the block's 1x1 convs (16 -> 32)",
        ),
        (
            ["stages", 1, "jetconv", "groups"],
            5,
            "stages[1].jetconv.groups: 5 does not divide both widths",
        ),
        (["stem", "jetconv", "groups"], 2, "stem.jetconv.groups: 2 does not divide both widths"),
        (
            ["stages", 0, "attention"],
            "se",
            "stages[0].attention: 'se' is not one of 'none', 'cbam'",
        ),
        (["stages", 0, "activation"], "gelu", "stages[0].activation: 'gelu' is not one of 'reu'"),
        (["stages", 0, "stride"], 3, "stages[0].stride: 3 is not one of 1, 2"),
        (["stages", 0, "depth"], "two", "stages[0].depth: expected an integer, got 'two'"),
        (["stages", 0, "width"], 0, "stages[0].width: 0 is out of range"),
        (
            ["stages", 2, "dilations"],
            [1, 2, 4],
            "stages[2].dilations: has 3 entries but depth is 2",
        ),
        (["stages", 0, "widht"], 16, "stages[0].widht: unknown key; allowed keys: depth, width"),
        (["decoder", "taps"], [1, 2, 7], "decoder.taps[2]: 7 names no encoder feature"),
        (
            ["decoder", "taps"],
            [2, 1, 3],
            "decoder.taps: must name shallow, mid and deep features in order",
        ),
        (["decoder", "separable"], "yes", "decoder.separable: expected true or false"),
        (["stem", "kind"], "conv5x5", "stem.kind: 'conv5x5' is not one of 'jetconv', 'conv3x3'"),
        (
            ["stages", 0, "jetconv", "branches"],
            [{"kernel": 3}] * 4,
            "stages[0].jetconv.branches: needs 1 to 3 branches, got 4",
        ),
        (["stages"], [], "stages: needs 1 to 6 stages, got 0"),
    ],
)
def test_every_invalid_value_names_its_key_path(path, value, message):
    data = _set(_base(), path, value)
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert message in str(err.value), str(err.value)


def test_all_problems_are_reported_at_once_and_the_file_is_named(tmp_path):
    data = _base()
    data["stages"][0]["jetconv"]["branches"][0]["kernel"] = 4
    data["decoder"]["colour"] = "red"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "stages[0].jetconv.branches[0].kernel: 4" in text
    assert "decoder.colour: unknown key" in text
    assert len(err.value.problems) == 2


def test_configs_built_in_python_are_validated_too():
    with pytest.raises(ConfigError, match=r"stages\[0\]\.expansion: 0 is out of range"):
        JetSegConfig(stages=(dataclasses.replace(JetSegConfig().stages[0], expansion=0),))


def test_not_yaml_and_missing_files_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="neither a config file nor a built-in preset"):
        load_config("no-such-preset")


def test_presets_resolve_by_name_and_yaml_round_trips(tmp_path):
    assert preset_names() == ["agx", "nano", "workstation"]
    for name in preset_names():
        config = load_config(name)
        assert config.name == name
        path = save_config(config, tmp_path / f"{name}.yaml")
        again = load_config(path)
        assert again == config
        assert arch_hash(again) == arch_hash(config)


def test_arch_hash_ignores_key_order_name_and_equivalent_spellings():
    data = _base()
    reordered = {k: data[k] for k in reversed(list(data))}
    reordered["stages"] = [{k: s[k] for k in reversed(list(s))} for s in data["stages"]]
    reordered["name"] = "another-name"
    assert arch_hash(load_config(reordered)) == arch_hash(load_config(data))
    # Explicit per-block dilations of 1 and explicit groups equal to "auto" build the same net.
    data2 = _base()
    data2["stages"][0]["dilations"] = [1]
    assert arch_hash(load_config(data2)) == arch_hash(load_config(data))


def test_arch_hash_is_stable_across_processes():
    here = arch_hash(load_config("agx"))
    code = "from jetseg.config import arch_hash, load_config; print(arch_hash(load_config('agx')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == here


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


_ALTERNATIVES = {
    "kind": ["conv3x3", "jetconv"],
    "activation": ["silu", "reu"],
    "attention": ["none", "cbam"],
    "kernel": [7, 3],
    "square_kernel": [7, 3],
    "stride": [1, 2],
    "separable": [True, False],
}


def _mutations():
    base = _base()
    for path, value in _leaves(base):
        key = path[-1]
        if key == "name" or path[:2] == ("stem", "jetconv") and key == "groups":
            continue  # the stem's pointwise conv reads 3 channels: 1 group is the only choice
        if key in _ALTERNATIVES:
            new = next(v for v in _ALTERNATIVES[key] if v != value)
        elif key == "taps":
            new = [0, 2, 3]
        elif key == "dilations":
            new = [2] * len(
                _get(base, path[:-1])["dilations"] or [1] * _get(base, path[:-1])["depth"]
            )
        elif key == "groups":
            new = 1
        elif key == "attention_reduction":
            continue  # only meaningful with cbam: tested below
        elif isinstance(value, int):
            new = value * 2 if key not in ("in_channels",) else 1
        else:
            continue
        yield ".".join(map(str, path)), path, new


def _get(data, path):
    for k in path:
        data = data[k]
    return data


def test_arch_hash_changes_after_any_single_knob():
    base_hash = arch_hash(load_config(_base()))
    seen = {}
    for label, path, new in _mutations():
        data = _set(_base(), list(path), new)
        if path[-1] == "depth" and _get(data, path[:-1]).get("dilations"):
            _get(data, path[:-1])["dilations"] = [1] * new
        h = arch_hash(load_config(data))
        assert h != base_hash, f"changing {label} to {new} left arch_hash unchanged"
        seen[label] = h
    assert len(seen) > 40
    cbam = _base()
    cbam["stages"][0]["attention_reduction"] = 2  # stage 0 uses cbam in nano
    assert arch_hash(load_config(cbam)) != base_hash
