"""The one validation engine (jetseg.validation) and the cross-field rules (jetseg.rules)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pytest

from jetseg import rules
from jetseg.config import (
    PRESETS_DIR,
    ConfigError,
    JetSegConfig,
    StageConfig,
    arch_hash,
    config_to_dict,
    load_config,
    resolve_named_file,
)
from jetseg.validation import INVALID, Partial, known, parse, validate, value_problems


@dataclass(frozen=True)
class Window:
    """A small config with every kind of field and one cross-field rule."""

    low: float = field(default=0.0, metadata={"min": 0})
    high: float = field(default=1.0, metadata={"lt": 10})
    kind: Literal["hann", "flat"] = "hann"
    taps: tuple[int, ...] = field(default=(), metadata={"min": 1, "max": 4})
    size: tuple[int, int] | None = field(default=None, metadata={"gt": 0})
    label: str = field(default="a", metadata={"choices": ("a", "b")})
    even: int = field(default=2, metadata={"check": lambda v: None if v % 2 == 0 else "odd"})

    @staticmethod
    def cross_field_problems(values: Any) -> list[tuple[str, str]]:
        low, high = values.low, values.high
        if known(low, high) and low > high:
            return [("", f"low <= high must hold, got low={low}, high={high}")]
        return []


@dataclass(frozen=True)
class Outer:
    """A top-level config: it checks the whole tree when built (nested ones never do)."""

    window: Window = Window()
    windows: tuple[Window, ...] = ()

    def __post_init__(self) -> None:
        validate(self, what="outer")


def test_every_problem_of_plain_data_comes_at_once_with_its_path():
    data = {
        "low": 3,
        "high": 12.0,  # breaks high < 10, so the low <= high rule cannot be read
        "kind": "box",
        "taps": [1, 5, "x"],
        "size": [0, 4],
        "label": "c",
        "even": 3,
        "extra": True,
    }
    with pytest.raises(ConfigError) as err:
        parse(Window, data, source="w.yaml", what="window")
    assert err.value.problems == [
        ("extra", "unknown key; allowed keys: low, high, kind, taps, size, label, even"),
        ("high", "12.0 is out of range; value < 10 must hold"),
        ("kind", "'box' is not one of 'hann', 'flat'"),
        ("taps[1]", "5 is out of range; 1 <= value <= 4 must hold"),
        ("taps[2]", "expected an integer, got 'x'"),
        ("size[0]", "0 is out of range; value > 0 must hold"),
        ("label", "'c' is not one of a, b"),
        ("even", "odd"),
    ]
    assert str(err.value).startswith("invalid window (w.yaml):\n  extra: unknown key")


def test_cross_field_rules_run_beside_broken_keys_and_inside_nested_configs():
    with pytest.raises(ConfigError) as err:
        parse(Outer, {"window": {"low": 5, "high": 2, "kind": 1}, "windows": [{}, 7]}, what="o")
    assert err.value.problems == [
        ("window.kind", "1 is not one of 'hann', 'flat'"),
        ("window", "low <= high must hold, got low=5.0, high=2.0"),
        ("windows[1]", "expected a mapping, got 7"),
    ]


def test_configs_built_in_python_are_checked_whole_and_normalised():
    built = Outer(windows=[Window(), Window(taps=[np.int64(2)], low=np.float32(0.5))])
    assert isinstance(built.windows, tuple) and built.windows[1].taps == (2,)
    assert type(built.windows[1].taps[0]) is int and type(built.windows[1].low) is float
    # Nested configs do not check themselves: the outer one reports the full path.
    with pytest.raises(ConfigError, match=r"invalid outer:\n  windows\[0\]\.low: -1.0 is out"):
        Outer(windows=(Window(low=-1.0),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.window = Window()


def test_optional_values_unions_and_non_finite_numbers():
    assert value_problems(None, tuple[int, int] | None) == []
    assert value_problems([1, "a"], tuple[int, int] | None) == [
        ("[1]", "expected an integer, got 'a'")
    ]
    assert value_problems(float("nan"), float | None) == [("", "expected a finite number, got nan")]
    groups = int | Literal["auto"]
    assert value_problems("auto", groups) == []
    assert value_problems("all", groups) == [("", "'all' is not an integer or 'auto'")]
    assert value_problems(True, int) == [("", "expected an integer, got True")]
    assert value_problems([1, 2], tuple[int, int, int]) == [("", "expected 3 items, got 2")]


def test_invalid_reads_as_invalid_all_the_way_down():
    partial = Partial(Window, {"low": INVALID, "high": 2.0})
    assert not known(partial.low, partial.high) and known(partial.high)
    assert INVALID.width.depth is INVALID and INVALID[3] is INVALID and list(INVALID) == []
    assert not known((1, INVALID)) and not known(partial)


def test_network_rules_come_with_the_per_key_problems():
    data = config_to_dict(load_config("nano"))
    data["stem"]["width"] = "wide"
    data["stages"][0]["jetconv"]["branches"][0]["kernel"] = 4
    data["stages"][1]["groups"] = 3  # a rule: 3 divides neither 16 nor 32
    data["stages"][2]["dilations"] = [1, 2, 4]  # a rule: depth is 2
    data["decoder"]["taps"] = [3, 1, 2]  # a rule: not in order
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert [path for path, _ in err.value.problems] == [
        "stem.width",
        "stages[0].jetconv.branches[0].kernel",
        "stages[1].groups",
        "stages[2].dilations",
        "decoder.taps",
    ]


def test_python_built_network_configs_are_normalised_and_hash_alike():
    listed = JetSegConfig(stages=[StageConfig(width=np.int64(32), dilations=[1])] * 3)
    plain = JetSegConfig(stages=(StageConfig(width=32, dilations=(1,)),) * 3)
    assert isinstance(listed.stages, tuple) and listed.stages[0].dilations == (1,)
    assert listed == plain and arch_hash(listed) == arch_hash(plain)


def test_the_rules_over_plain_values():
    assert rules.groups_problem("auto", 3, 16, "x") is None
    assert rules.groups_problem(8, 16, 32, "x") is None
    assert rules.groups_problem(3, 16, 32, "block's 1x1 convs") == (
        "3 does not divide both widths of the block's 1x1 convs (16 -> 32); "
        "allowed: auto, 1, 2, 4, 8, 16"
    )
    assert rules.group_count_problem(0) == "0 is not a group count; it must be at least 1"
    assert rules.undivided_width(8, (16, 12, 24)) == 12
    assert rules.block_hidden_widths(16, 32, 2) == (32, 64)
    assert rules.branch_count_problem(4) == "needs 1 to 3 branches, got 4"
    assert rules.stage_count_problem(0) == "needs 1 to 6 stages, got 0"
    assert rules.dilations_fit((), 3) and not rules.dilations_fit((1, 2), 3)
    assert rules.dilations_problem((1, 2), 3).startswith("has 2 entries but depth is 3")
    assert rules.tap_problem(4, 4) == "4 names no encoder feature; 0 (stem) to 3 are allowed"
    assert rules.taps_in_order((0, 1, 3)) and not rules.taps_in_order((1, 1, 3))


def test_one_resolver_for_built_in_names_and_paths(tmp_path, monkeypatch):
    assert resolve_named_file("nano", PRESETS_DIR, "config", "preset") == PRESETS_DIR / "nano.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text("{}\n")
    assert resolve_named_file(str(mine), PRESETS_DIR, "config", "preset") == mine
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nano").mkdir()  # a folder that shares a built-in name does not shadow it
    assert load_config("nano").name == "nano"
    with pytest.raises(FileNotFoundError) as err:
        resolve_named_file("nope", PRESETS_DIR, "config", "preset")
    assert str(err.value) == (
        "'nope' is neither a config file nor a built-in preset (agx, nano, workstation)"
    )
    with pytest.raises(FileNotFoundError, match=r"config file gone\.yaml does not exist"):
        resolve_named_file("gone.yaml", PRESETS_DIR, "config", "preset")
    with pytest.raises(FileNotFoundError, match=r"built-in space \(none found in "):
        resolve_named_file("x", tmp_path / "empty", "search space", "space")
