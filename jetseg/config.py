"""Typed, frozen configuration of one JetSeg network, its YAML form and its architecture hash.

A :class:`JetSegConfig` is pure data: ``build_model(config)`` (in :mod:`jetseg.model`) is the one
place that turns it into modules. Configs are validated when they are built, whether from Python
or from YAML, and every problem is reported with its full key path::

    >>> load_config({"stages": [{"jetconv": {"branches": [{"kernel": 4}]}}]})
    Traceback (most recent call last):
    ...
    ConfigError: invalid JetSeg config:
      stages[0].jetconv.branches[0].kernel: 4 is not one of 3, 5, 7

``arch_hash(config)`` digests everything that changes the network (not its name), so two configs
that build the same network share a hash whatever their key order or origin.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

ACTIVATIONS = ("reu", "tanhexp", "relu", "hardswish", "silu")
ATTENTIONS = ("none", "cbam", "sam", "eca")
KERNELS = (3, 5, 7)
DILATION_RANGE = (1, 16)
STEM_KINDS = ("jetconv", "conv3x3")

Activation = Literal["reu", "tanhexp", "relu", "hardswish", "silu"]
Attention = Literal["none", "cbam", "sam", "eca"]
Groups = int | Literal["auto"]

PRESETS_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A config that cannot describe a network; ``problems`` lists ``(key_path, message)``."""

    def __init__(
        self,
        problems: list[tuple[str, str]],
        source: str | None = None,
        what: str = "JetSeg config",
    ) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" ({source})" if source else ""
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in self.problems]
        super().__init__(f"invalid {what}{where}:\n" + "\n".join(lines))


def _rng(low: int, high: int) -> dict[str, int]:
    return {"min": low, "max": high}


def _choices(*values: Any) -> dict[str, tuple[Any, ...]]:
    return {"choices": values}


@dataclass(frozen=True)
class BranchConfig:
    """One CDDC branch: depthwise ``k x 1`` and ``1 x k`` with dilation ``d``, then ``k2 x k2``."""

    kernel: int = field(default=3, metadata=_choices(*KERNELS))
    dilation: int = field(default=1, metadata=_rng(*DILATION_RANGE))
    square_kernel: int = field(default=3, metadata=_choices(*KERNELS))


@dataclass(frozen=True)
class JetConvConfig:
    """One to three CDDC branches fused hierarchically, then a grouped pointwise conv.

    ``groups`` is the group count of that pointwise conv: ``auto`` picks a convenient divisor
    (see :func:`auto_groups`), an integer must divide both of its widths.
    """

    branches: tuple[BranchConfig, ...] = (BranchConfig(),)
    groups: Groups = "auto"


@dataclass(frozen=True)
class StemConfig:
    """Stage S0, the input block: a JetConv from RGB at stride 2, or a plain 3x3 stride-2 conv."""

    kind: Literal["jetconv", "conv3x3"] = "jetconv"
    width: int = field(default=16, metadata=_rng(1, 1024))
    activation: Activation = "reu"
    jetconv: JetConvConfig = JetConvConfig()


@dataclass(frozen=True)
class StageConfig:
    """A sequence of JetBlocks; the first one changes width and applies the stride.

    ``dilations`` optionally multiplies every branch dilation block by block (RegSeg-style
    growing dilations, typically with ``stride: 1`` in the last stage); empty means all 1.
    ``groups`` is the group count of the block's 1x1 expand and reduce convs and of the channel
    shuffle between them.
    """

    depth: int = field(default=1, metadata=_rng(1, 32))
    width: int = field(default=32, metadata=_rng(1, 2048))
    stride: Literal[1, 2] = 2
    expansion: int = field(default=2, metadata=_rng(1, 8))
    dilations: tuple[int, ...] = ()
    groups: Groups = "auto"
    jetconv: JetConvConfig = JetConvConfig()
    attention: Attention = "none"
    attention_reduction: int = field(default=4, metadata=_rng(1, 64))
    activation: Activation = "reu"


@dataclass(frozen=True)
class DecoderConfig:
    """RegSeg-style decoder.

    ``taps`` name the encoder features (0 = stem, 1.. = stages) that feed the low (1/4), mid
    (1/8) and deep (1/16) heads. The mid and deep heads share ``head_width`` because they are
    added; ``low_width`` is the 1/4 head that is concatenated.
    """

    taps: tuple[int, int, int] = (1, 2, 3)
    low_width: int = field(default=8, metadata=_rng(1, 1024))
    head_width: int = field(default=64, metadata=_rng(1, 1024))
    fuse_width: int = field(default=64, metadata=_rng(1, 1024))
    out_width: int = field(default=64, metadata=_rng(1, 1024))
    separable: bool = False
    activation: Activation = "relu"


@dataclass(frozen=True)
class JetSegConfig:
    """A whole JetSeg network: stem (S0), JetNet stages (S1..), decoder and class count.

    ``name`` is a label only; it does not enter :func:`arch_hash`.
    """

    name: str = "jetseg"
    num_classes: int = field(default=11, metadata=_rng(1, 1000))
    in_channels: int = field(default=3, metadata=_rng(1, 16))
    stem: StemConfig = StemConfig()
    stages: tuple[StageConfig, ...] = (
        StageConfig(depth=1, width=32, attention="cbam"),
        StageConfig(depth=2, width=64, attention="sam"),
        StageConfig(depth=2, width=128, attention="eca"),
    )
    decoder: DecoderConfig = DecoderConfig()

    def __post_init__(self) -> None:
        problems = _check_tree(self, "")
        problems += _check_rules(self)
        if problems:
            raise ConfigError(problems)

    # Widths as the network sees them; build_model and the checks share these.
    def stage_in_width(self, index: int) -> int:
        """Input width of stage ``index`` (0-based over ``stages``)."""
        return self.stem.width if index == 0 else self.stages[index - 1].width

    def feature_widths(self) -> tuple[int, ...]:
        """Width of every encoder feature: the stem, then each stage."""
        return (self.stem.width, *(s.width for s in self.stages))

    def feature_strides(self) -> tuple[int, ...]:
        """Output stride of every encoder feature: the stem, then each stage."""
        strides = [2]
        for stage in self.stages:
            strides.append(strides[-1] * stage.stride)
        return tuple(strides)


# ---------------------------------------------------------------------------------------------
# group counts


def common_divisors(a: int, b: int) -> list[int]:
    """All positive integers that divide both ``a`` and ``b``, ascending."""
    g = math.gcd(a, b)
    return [d for d in range(1, g + 1) if g % d == 0]


def auto_groups(in_width: int, out_width: int) -> int:
    """The "convenient number of groups" for a grouped 1x1 conv between two widths.

    Among the common divisors of the two widths, the one closest to the mean of those common
    divisors (ties go to the smaller, which mixes more channels). For 32 -> 64 the common
    divisors are 1, 2, 4, 8, 16, 32 (mean 10.5), so 8 groups.
    """
    divisors = common_divisors(in_width, out_width)
    mean = sum(divisors) / len(divisors)
    return min(divisors, key=lambda d: (abs(d - mean), d))


def resolve_groups(groups: Groups, in_width: int, out_width: int) -> int:
    """An explicit group count as is, or ``auto_groups`` for ``"auto"``."""
    return auto_groups(in_width, out_width) if groups == "auto" else int(groups)


# ---------------------------------------------------------------------------------------------
# validation


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _coerce(value: Any, tp: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Convert a YAML value to the annotated type, recording problems instead of raising."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append((path, f"expected a mapping, got {_describe(value)}"))
            return None
        return _from_mapping(tp, value, path, problems)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return value
        allowed = ", ".join(_describe(a) for a in args)
        problems.append((path, f"{_describe(value)} is not one of {allowed}"))
        return None
    if origin in (Union, types.UnionType):
        sub: list[tuple[str, str]] = []
        for option in args:
            attempt: list[tuple[str, str]] = []
            result = _coerce(value, option, path, attempt)
            if not attempt:
                return result
            sub += attempt
        allowed = " or ".join(_option_name(o) for o in args)
        problems.append((path, f"{_describe(value)} is not {allowed}"))
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append((path, f"expected a list, got {_describe(value)}"))
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        else:
            if len(value) != len(args):
                problems.append((path, f"expected {len(args)} items, got {len(value)}"))
                return None
            item_types = list(args)
        return tuple(
            _coerce(v, t, f"{path}[{i}]", problems)
            for i, (v, t) in enumerate(zip(value, item_types, strict=True))
        )
    if tp is type(None):
        if value is None:
            return None
        problems.append((path, f"expected nothing (null), got {_describe(value)}"))
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.append((path, f"expected a number, got {_describe(value)}"))
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append((path, f"expected true or false, got {_describe(value)}"))
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append((path, f"expected an integer, got {_describe(value)}"))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        problems.append((path, f"expected a string, got {_describe(value)}"))
        return None
    raise TypeError(f"unsupported config field type {_type_name(tp)} at {path}")


def _option_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(_describe(a) for a in typing.get_args(tp))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp is type(None):
        return "null"
    return names.get(tp, _type_name(tp))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_mapping(cls: type, data: dict, path: str, problems: list[tuple[str, str]]) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    for key in unknown:
        problems.append((_join(path, str(key)), f"unknown key; allowed keys: {', '.join(names)}"))
    kwargs = {}
    before = len(problems)
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = _join(path, f.name)
            count = len(problems)
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key, problems)
            if len(problems) == count:
                problems += _check_meta(f, kwargs[f.name], key)
    if len(problems) > before or unknown:
        return None
    try:
        return _construct(cls, kwargs)
    except ConfigError as err:  # nested rules of JetSegConfig are checked there with full paths
        problems.extend((_join(path, p) if p else path, m) for p, m in err.problems)
        return None


def _construct(cls: type, kwargs: dict[str, Any]) -> Any:
    return cls(**kwargs)


def _check_meta(f: dataclasses.Field, value: Any, key: str) -> list[tuple[str, str]]:
    """The choices and ranges a field's metadata declares."""
    meta = f.metadata
    if value is None:
        return []
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        return [(key, f"{_describe(value)} is not one of {allowed}")]
    if "min" in meta and not meta["min"] <= value <= meta["max"]:
        return [
            (key, f"{value} is out of range; {meta['min']} <= value <= {meta['max']} must hold")
        ]
    return []


def _check_tree(obj: Any, path: str) -> list[tuple[str, str]]:
    """Types, ranges and choices of every field below ``obj`` (for configs built in Python)."""
    problems: list[tuple[str, str]] = []
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = _join(path, f.name)
        before = len(problems)
        _coerce(value, hints[f.name], key, problems)
        if len(problems) > before:
            continue
        problems += _check_meta(f, value, key)
        if dataclasses.is_dataclass(value):
            problems += _check_tree(value, key)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    problems += _check_tree(item, f"{key}[{i}]")
    return problems


def _check_groups(
    groups: Groups, in_width: int, out_width: int, path: str, what: str
) -> list[tuple[str, str]]:
    if groups == "auto":
        return []
    if groups < 1 or in_width % groups or out_width % groups:
        allowed = ", ".join(str(d) for d in common_divisors(in_width, out_width))
        return [
            (
                path,
                f"{groups} does not divide both widths of the {what} "
                f"({in_width} -> {out_width}); allowed: auto, {allowed}",
            )
        ]
    return []


def _check_jetconv(jc: JetConvConfig, width: int, path: str) -> list[tuple[str, str]]:
    problems = []
    if not 1 <= len(jc.branches) <= 3:
        problems.append((f"{path}.branches", f"needs 1 to 3 branches, got {len(jc.branches)}"))
        return problems
    problems += _check_groups(jc.groups, width, width, f"{path}.groups", "JetConv pointwise conv")
    return problems


def _check_rules(cfg: JetSegConfig) -> list[tuple[str, str]]:
    """Rules that tie fields together: group counts, dilation lists, decoder taps."""
    problems: list[tuple[str, str]] = []
    if cfg.stem.kind == "jetconv":
        # The stem's JetConv works on the RGB channels, its pointwise goes to the stem width.
        jc = cfg.stem.jetconv
        if not 1 <= len(jc.branches) <= 3:
            problems.append(
                ("stem.jetconv.branches", f"needs 1 to 3 branches, got {len(jc.branches)}")
            )
        else:
            problems += _check_groups(
                jc.groups,
                cfg.in_channels,
                cfg.stem.width,
                "stem.jetconv.groups",
                "stem pointwise conv",
            )
    if not 1 <= len(cfg.stages) <= 6:
        problems.append(("stages", f"needs 1 to 6 stages, got {len(cfg.stages)}"))
    for i, stage in enumerate(cfg.stages):
        path = f"stages[{i}]"
        in_width = cfg.stage_in_width(i)
        problems += _check_groups(
            stage.groups, in_width, stage.width, f"{path}.groups", "block's 1x1 convs"
        )
        if stage.dilations:
            if len(stage.dilations) != stage.depth:
                problems.append(
                    (
                        f"{path}.dilations",
                        f"has {len(stage.dilations)} entries but depth is {stage.depth}; "
                        "give one per block or leave it empty",
                    )
                )
            for j, d in enumerate(stage.dilations):
                if not DILATION_RANGE[0] <= d <= DILATION_RANGE[1]:
                    low, high = DILATION_RANGE
                    problems.append(
                        (f"{path}.dilations[{j}]", f"{d} is out of range {low}..{high}")
                    )
        # Every block's JetConv works on the expanded width of that block.
        hidden_widths = {in_width * stage.expansion, stage.width * stage.expansion}
        for hidden in sorted(hidden_widths):
            problems += _check_jetconv(stage.jetconv, hidden, f"{path}.jetconv")
    n_features = len(cfg.stages) + 1
    taps = cfg.decoder.taps
    for j, tap in enumerate(taps):
        if not 0 <= tap < n_features:
            problems.append(
                (
                    f"decoder.taps[{j}]",
                    f"{tap} names no encoder feature; 0 (stem) to {n_features - 1} are allowed",
                )
            )
    if not problems and not taps[0] < taps[1] < taps[2]:
        problems.append(
            ("decoder.taps", f"must name shallow, mid and deep features in order, got {list(taps)}")
        )
    return _dedupe(problems)


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# YAML I/O


def parse_dataclass(cls: type, data: Any, *, source: str | None = None, what: str) -> Any:
    """Build any frozen config dataclass from plain data with the same key-path errors.

    Fields may be ints, floats, bools, strings, ``None``, Literals, unions of those, tuples and
    nested dataclasses; ``field(metadata=...)`` ``choices`` / ``min`` / ``max`` are enforced.
    """
    if not isinstance(data, dict):
        raise ConfigError([("", "expected a mapping at the top level")], source, what)
    problems: list[tuple[str, str]] = []
    obj = _from_mapping(cls, data, "", problems)
    if problems:
        raise ConfigError(problems, source, what)
    return obj


def config_to_dict(config: Any, *, include_name: bool = True) -> dict[str, Any]:
    """Plain-data form of a config (lists, dicts, ints, strings), ready for YAML or JSON."""

    def convert(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, tuple):
            return [convert(v) for v in obj]
        return obj

    data = convert(config)
    if not include_name:
        data.pop("name", None)
    return data


def load_config(source: str | Path | dict[str, Any]) -> JetSegConfig:
    """A JetSegConfig from a preset name, a YAML file path or a plain mapping.

    Preset names (``nano``, ``agx``, ``workstation``) resolve wherever a path is accepted.
    Missing keys take their defaults; unknown keys and invalid values raise :class:`ConfigError`
    listing every problem with its key path.
    """
    label = None
    if isinstance(source, dict):
        data = source
    else:
        path = resolve_config_path(source)
        label = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError([("", f"not valid YAML: {err}")], label) from err
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError([("", "the file must hold a mapping at the top level")], label)
        data = {"name": path.stem, **data}
    problems: list[tuple[str, str]] = []
    config = _from_mapping(JetSegConfig, data, "", problems)
    if problems:
        raise ConfigError(problems, label)
    return config


def preset_names() -> list[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A built-in preset name or an existing YAML path, as a path; a clear error otherwise."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a config file nor a built-in preset "
        f"({', '.join(preset_names())})"
    )


def save_config(config: JetSegConfig, path: str | Path) -> Path:
    """Write a config as YAML (atomically: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dump_config(config)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def dump_config(config: JetSegConfig) -> str:
    """The YAML text of a config, with a header comment naming its architecture hash."""
    header = f"# JetSeg config {config.name}; arch_hash {arch_hash(config)}\n"
    return header + yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


def arch_hash(config: JetSegConfig, length: int = 16) -> str:
    """Stable hex digest of everything that changes the network (the name excluded).

    Group counts are hashed as resolved integers, so ``auto`` and the explicit count it
    resolves to hash alike: they build the same network.
    """
    canonical = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def _canonical(config: JetSegConfig) -> dict[str, Any]:
    """The config as data with every spelling of the same network made identical."""
    data = config_to_dict(config, include_name=False)
    if data["stem"]["kind"] != "jetconv":
        del data["stem"]["jetconv"]
    else:
        del data["stem"]["jetconv"]["groups"]
    for stage, raw in zip(data["stages"], config.stages, strict=True):
        del stage["groups"]
        del stage["jetconv"]["groups"]
        stage["dilations"] = list(raw.dilations) or [1] * raw.depth
        if raw.attention != "cbam":
            del stage["attention_reduction"]
    data["resolved_groups"] = resolved_group_counts(config)
    return data


def resolved_group_counts(config: JetSegConfig) -> list[int]:
    """Every group count the network uses, in build order, ``auto`` resolved."""
    counts = []
    if config.stem.kind == "jetconv":
        jc = config.stem.jetconv
        counts.append(resolve_groups(jc.groups, config.in_channels, config.stem.width))
    for i, stage in enumerate(config.stages):
        for b in range(stage.depth):
            cin = config.stage_in_width(i) if b == 0 else stage.width
            hidden = cin * stage.expansion
            counts.append(resolve_groups(stage.groups, cin, hidden))
            counts.append(resolve_groups(stage.jetconv.groups, hidden, hidden))
            counts.append(resolve_groups(stage.groups, hidden, stage.width))
    return counts


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that re-validates (configs are frozen)."""
    return dataclasses.replace(config, **changes)
