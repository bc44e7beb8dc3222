"""Typed, frozen configuration of one JetSeg network, its YAML form and its architecture hash.

A :class:`JetSegConfig` is pure data: ``build_model(config)`` (in :mod:`jetseg.model`) is the one
place that turns it into modules. Configs are validated when they are built, whether from Python
or from YAML, and every problem is reported with its full key path::

    >>> load_config({"stages": [{"jetconv": {"branches": [{"kernel": 4}]}}]})
    Traceback (most recent call last):
    ...
    ConfigError: invalid JetSeg config:
      stages[0].jetconv.branches[0].kernel: 4 is not one of 3, 5, 7

The checks are those of every config (:mod:`jetseg.validation`: field metadata, Literal types,
and the rules that tie fields together, here those of :mod:`jetseg.rules`), so the rules come
with the per-key problems in one error. ``arch_hash(config)`` digests everything that changes the
network (not its name), so two configs that build the same network share a hash whatever their
key order or origin. :func:`resolve_named_file` is how presets, search spaces and studies turn a
built-in name or a path into a file, and :func:`read_yaml_mapping` how they read it: within a
size limit, as UTF-8, with aliases bounded (:class:`BoundedSafeLoader`), the file named in every
error.

Presets are looked up by name in the built-in folder, then in each folder of
``$JETSEG_PRESET_PATH`` (:func:`preset_dirs`). A derived preset (one that ``jetsearch finalize
--write-preset`` wrote) carries where it came from as a ``# provenance:`` comment block above the
config, so every loader reads it as a plain config and :func:`read_provenance` reads the block.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from jetseg import rules
from jetseg.fileio import MIB, FileTooLargeError, format_bytes, read_bytes_bounded
from jetseg.rules import DILATION_RANGE, auto_groups, common_divisors, resolve_groups
from jetseg.validation import ConfigError, Problem, known, parse, validate

__all__ = [
    "ACTIVATIONS",
    "ATTENTIONS",
    "DILATION_RANGE",
    "KERNELS",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "PRESETS_DIR",
    "PRESET_PATH_ENV",
    "PROVENANCE_MARKER",
    "STEM_KINDS",
    "BoundedSafeLoader",
    "BranchConfig",
    "ConfigError",
    "DecoderConfig",
    "JetConvConfig",
    "JetSegConfig",
    "StageConfig",
    "StemConfig",
    "YAMLTooLargeError",
    "arch_hash",
    "auto_groups",
    "common_divisors",
    "config_file",
    "config_to_dict",
    "dump_config",
    "load_config",
    "load_yaml_text",
    "preset_dirs",
    "preset_names",
    "provenance_header",
    "read_provenance",
    "read_yaml_mapping",
    "resolve_groups",
    "resolve_named_file",
    "resolved_group_counts",
    "save_config",
    "yaml_names",
]

ACTIVATIONS = ("reu", "tanhexp", "relu", "hardswish", "silu")
ATTENTIONS = ("none", "cbam", "sam", "eca")
KERNELS = (3, 5, 7)
STEM_KINDS = ("jetconv", "conv3x3")

Activation = Literal["reu", "tanhexp", "relu", "hardswish", "silu"]
Attention = Literal["none", "cbam", "sam", "eca"]
Groups = int | Literal["auto"]

PRESETS_DIR = Path(__file__).parent / "presets"
# More preset folders, os.pathsep-separated, searched after the built-in one.
PRESET_PATH_ENV = "JETSEG_PRESET_PATH"
# The first line of a derived preset's provenance block (a YAML mapping, commented out).
PROVENANCE_MARKER = "# provenance:"


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
    dilations: tuple[int, ...] = field(default=(), metadata=_rng(*DILATION_RANGE))
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
        validate(self, what="JetSeg config")

    @staticmethod
    def cross_field_problems(values: Any) -> list[Problem]:
        """The rules of :mod:`jetseg.rules` that tie this config's fields together."""
        return _network_problems(values)

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
# cross-field rules


def _network_problems(cfg: Any) -> list[Problem]:
    """Group counts against widths, branch and stage counts, dilation lists, decoder taps.

    ``cfg`` may be partly broken (see :func:`jetseg.validation.known`): a rule runs when the
    values it reads passed their own checks, so these come with the per-key problems.
    """
    problems: list[Problem] = []

    def add(path: str, problem: str | None) -> None:
        if problem and (path, problem) not in problems:
            problems.append((path, problem))

    stem = cfg.stem
    if stem.kind == "jetconv":
        # The stem's JetConv works on the RGB channels, its pointwise goes to the stem width.
        add("stem.jetconv.branches", _branch_count(stem.jetconv))
        groups = stem.jetconv.groups
        if not _branch_count(stem.jetconv) and known(groups, cfg.in_channels, stem.width):
            problem = rules.groups_problem(
                groups, cfg.in_channels, stem.width, "stem pointwise conv"
            )
            add("stem.jetconv.groups", problem)
    stages = cfg.stages
    if not isinstance(stages, tuple):
        return problems
    add("stages", rules.stage_count_problem(len(stages)))
    for i, stage in enumerate(stages):
        path = f"stages[{i}]"
        in_width = stem.width if i == 0 else stages[i - 1].width
        if known(stage.groups, in_width, stage.width):
            problem = rules.groups_problem(stage.groups, in_width, stage.width, "block's 1x1 convs")
            add(f"{path}.groups", problem)
        if known(stage.dilations, stage.depth):
            add(f"{path}.dilations", rules.dilations_problem(stage.dilations, stage.depth))
        jetconv = stage.jetconv
        add(f"{path}.jetconv.branches", _branch_count(jetconv))
        if _branch_count(jetconv) or not known(in_width, stage.width, stage.expansion):
            continue
        # Every block's JetConv works on the expanded width of that block.
        for hidden in rules.block_hidden_widths(in_width, stage.width, stage.expansion):
            if known(jetconv.groups):
                problem = rules.groups_problem(
                    jetconv.groups, hidden, hidden, "JetConv pointwise conv"
                )
                add(f"{path}.jetconv.groups", problem)
    taps = cfg.decoder.taps
    if known(taps):
        n_features = len(stages) + 1
        outside = [(j, rules.tap_problem(tap, n_features)) for j, tap in enumerate(taps)]
        for j, problem in outside:
            add(f"decoder.taps[{j}]", problem)
        if not any(problem for _, problem in outside) and not rules.taps_in_order(taps):
            add("decoder.taps", f"{rules.TAPS_ORDER_RULE}, got {list(taps)}")
    return problems


def _branch_count(jetconv: Any) -> str | None:
    branches = jetconv.branches
    return rules.branch_count_problem(len(branches)) if isinstance(branches, tuple) else None


# ---------------------------------------------------------------------------------------------
# files: built-in names or paths, YAML


def yaml_names(directory: Path) -> list[str]:
    """The names of the YAML files in ``directory`` (the built-in presets, spaces, studies)."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def resolve_named_file(name_or_path: str | Path, directory: Path, what: str, builtin: str) -> Path:
    """A built-in name (``<directory>/<name>.yaml``) or a YAML file path, as a path.

    Presets, search spaces and studies resolve alike: an existing file is used as is, a path
    ending in ``.yaml`` / ``.yml`` must exist, anything else is a built-in name (so a folder
    that shares a name does not shadow it). The errors name ``what`` the file is (``config``,
    ``search space``, ``study``) and list the built-in ``builtin`` names::

        'x' is neither a config file nor a built-in preset (agx, nano, workstation)
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml"):
        raise FileNotFoundError(f"{what} file {path} does not exist")
    named = directory / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    listed = ", ".join(yaml_names(directory)) or f"none found in {directory}"
    raise FileNotFoundError(
        f"{str(name_or_path)!r} is neither a {what} file nor a built-in {builtin} ({listed})"
    )


# Limits of every config, space and study YAML the tool reads. The largest built-in one is under
# 5 KB and 450 values; a value past these limits is a mistake or an attack, and the config walk
# and its messages grow with the expanded document, so it is refused before it is built.
MAX_YAML_BYTES = MIB
MAX_YAML_VALUES = 10_000
MAX_YAML_DEPTH = 64


class YAMLTooLargeError(yaml.composer.ComposerError):
    """A YAML document over :class:`BoundedSafeLoader`'s limits (a ``yaml.YAMLError``)."""


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that bounds a document's size as its aliases expand it.

    Aliases stay allowed (one anchor shared by several rungs or stages is ordinary YAML), but
    each counts as the full copy of what it names, since that is what the config walk visits
    and what a message prints: the document, expanded, may hold at most ``max_values`` values
    (scalars, lists and mappings) nested at most ``max_depth`` deep. The count is kept while
    the document is composed, so a "billion laughs" bomb (a list of 9 strings, a list of 9
    aliases of it, and so on 9 deep: 9**9 values from a 1 KB file) is refused after a few
    hundred nodes, in milliseconds and without building anything; an alias to a value that
    contains it (a recursive structure, which no config can hold) is refused too. Refusing
    aliases outright would be simpler but would reject sensible files; counting them costs
    one dictionary entry per anchor.
    """

    max_values = MAX_YAML_VALUES
    max_depth = MAX_YAML_DEPTH

    def compose_document(self) -> yaml.Node:
        self._values = 0  # values of the document so far, aliases expanded
        self._depth = 0  # nesting of the node being composed
        self._deepest = 0  # deepest expanded nesting inside the node being composed
        self._extents: dict[int, tuple[int, int]] = {}  # anchored node -> (values, height)
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is the composer's own error
                extent = self._extents.get(id(target))
                if extent is None:  # anchored but not finished: an ancestor of this alias
                    raise YAMLTooLargeError(
                        None,
                        None,
                        f"alias *{event.anchor} refers to a value that contains it; a config "
                        "cannot be recursive",
                        event.start_mark,
                    )
                self._grow(extent[0], self._depth + extent[1], event)
            return super().compose_node(parent, index)
        self._depth += 1
        values_before, deepest_outside = self._values, self._deepest
        self._deepest = 0
        self._grow(1, self._depth, event)
        node = super().compose_node(parent, index)
        if event.anchor is not None:
            height = self._deepest - self._depth + 1
            self._extents[id(node)] = (self._values - values_before, height)
        self._deepest = max(deepest_outside, self._deepest)
        self._depth -= 1
        return node

    def fetch_flow_collection_start(self, token_class: type) -> None:
        # The scanner looks up to 1024 characters ahead for a key, across every open bracket:
        # refusing deep flow nesting here keeps "[[[[..." from costing it a second.
        if self.flow_level >= self.max_depth:
            raise YAMLTooLargeError(
                None, None, f"values are nested more than {self.max_depth} deep", self.get_mark()
            )
        super().fetch_flow_collection_start(token_class)

    def _grow(self, values: int, depth: int, event: yaml.Event) -> None:
        self._values += values
        self._deepest = max(self._deepest, depth)
        if self._values > self.max_values:
            raise YAMLTooLargeError(
                None,
                None,
                f"the document holds more than {self.max_values} values once its aliases are "
                "expanded (a YAML alias bomb?)"
                if isinstance(event, yaml.AliasEvent)
                else f"the document holds more than {self.max_values} values",
                event.start_mark,
            )
        if depth > self.max_depth:
            raise YAMLTooLargeError(
                None, None, f"values are nested more than {self.max_depth} deep", event.start_mark
            )


def load_yaml_text(text: str, name: str | None = None) -> Any:
    """``yaml.safe_load(text)`` within :class:`BoundedSafeLoader`'s limits.

    For YAML text that did not come from a file, such as a trial's stored ``config_yaml``.
    ``name`` (a file name) replaces ``<unicode string>`` in the positions of error messages.
    Raises ``yaml.YAMLError`` (:class:`YAMLTooLargeError` for a document over the limits).
    """
    loader = BoundedSafeLoader(text)
    if name is not None:
        loader.name = name  # read whenever a mark (an error's position) is made
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml_mapping(
    path: Path,
    error: Callable[[Sequence[Problem], str], Exception] = ConfigError,
    *,
    max_bytes: int = MAX_YAML_BYTES,
) -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file is an empty mapping).

    The one reader of config, space and study files. A file over ``max_bytes`` is refused
    before it is read, one that is not UTF-8 text or not YAML, or a document past the limits of
    :class:`BoundedSafeLoader` (an alias bomb), after; each raises ``error(problems,
    str(path))``, as does a file whose top level is not a mapping.
    """
    try:
        raw = read_bytes_bounded(path, max_bytes, "YAML file")
    except FileTooLargeError as err:
        problem = (
            f"the file is {format_bytes(err.size)} ({err.size} bytes), over the limit of "
            f"{format_bytes(err.limit)} for a YAML file"
        )
        raise error([("", problem)], str(path)) from None
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error([("", f"cannot read the file: {err.strerror or err}")], str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(
            [("", f"not UTF-8 text: byte {raw[err.start]:#04x} at offset {err.start}")],
            str(path),
        ) from None
    try:
        data = load_yaml_text(text, str(path))
    except YAMLTooLargeError as err:
        raise error([("", f"refused: {err}")], str(path)) from None
    except yaml.YAMLError as err:
        raise error([("", f"not valid YAML: {err}")], str(path)) from err
    except ValueError as err:  # a scalar PyYAML cannot convert: an int of 5000 digits, a date
        raise error([("", f"not valid YAML: {err}")], str(path)) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error([("", "the file must hold a mapping at the top level")], str(path))
    return data


# ---------------------------------------------------------------------------------------------
# YAML I/O


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


def load_config(source: str | Path | Mapping[str, Any]) -> JetSegConfig:
    """A JetSegConfig from a preset name, a YAML file path or a plain mapping.

    Preset names (``nano``, ``agx``, ``workstation``, and those in ``$JETSEG_PRESET_PATH``)
    resolve wherever a path is accepted (:func:`config_file`). Missing keys take their
    defaults; unknown keys, invalid values and broken rules raise :class:`ConfigError` listing
    every problem with its key path.
    """
    label = None
    if isinstance(source, Mapping):
        data = source
    else:
        path = config_file(source)
        label = str(path)
        data = {"name": path.stem, **read_yaml_mapping(path)}
    return parse(JetSegConfig, data, source=label, what="JetSeg config")


def preset_dirs() -> list[Path]:
    """The folders presets are looked up in, in order: the built-in one, then each folder of
    ``$JETSEG_PRESET_PATH`` (``os.pathsep``-separated; empty entries are skipped).

    The built-in folder comes first, so the paper's presets keep their names wherever derived
    presets are kept.
    """
    extra = os.environ.get(PRESET_PATH_ENV, "")
    dirs = [PRESETS_DIR]
    for entry in extra.split(os.pathsep):
        if entry and Path(entry) not in dirs:
            dirs.append(Path(entry))
    return dirs


def preset_names() -> list[str]:
    """Names of the presets in every preset folder (:func:`preset_dirs`), sorted."""
    return sorted({name for directory in preset_dirs() for name in yaml_names(directory)})


def config_file(source: str | Path) -> Path:
    """The YAML file of a config path or a preset name (the first folder of
    :func:`preset_dirs` that holds ``<name>.yaml``); as :func:`resolve_named_file` for paths."""
    path = Path(source)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return resolve_named_file(path, PRESETS_DIR, "config", "preset")
    for directory in preset_dirs():
        named = directory / f"{source}.yaml"
        if named.is_file():
            return named
    listed = ", ".join(preset_names()) or f"none found in {PRESETS_DIR}"
    raise FileNotFoundError(
        f"{str(source)!r} is neither a config file nor a built-in preset ({listed})"
    )


def provenance_header(provenance: Mapping[str, Any], summary: Sequence[str] = ()) -> str:
    """Comment lines for the top of a derived preset: ``summary`` (one comment line each),
    then ``provenance`` as a YAML mapping under :data:`PROVENANCE_MARKER`, every line commented
    out, so the config below it loads unchanged and :func:`read_provenance` reads it back."""
    body = yaml.safe_dump(
        {"provenance": _plain_data(provenance)},
        sort_keys=False,
        default_flow_style=None,  # lists of numbers on one line
        width=96,
    )
    lines = [f"# {line}" if line else "#" for line in summary]
    lines += [f"# {line}" for line in body.splitlines()]
    return "\n".join(lines) + "\n"


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The provenance block of a config file (see :func:`provenance_header`), or None.

    The block starts at the line ``# provenance:`` and ends at the first line that is not a
    comment. A block that is not a YAML mapping raises :class:`ConfigError` naming the file.
    """
    path = Path(path)
    lines = (
        read_bytes_bounded(path, MAX_YAML_BYTES, "YAML file")
        .decode("utf-8", errors="replace")
        .splitlines()
    )
    starts = [i for i, line in enumerate(lines) if line.rstrip() == PROVENANCE_MARKER]
    if not starts:
        return None
    # Blank lines first, so the positions in a YAML error are the file's line numbers.
    block = [""] * starts[0] + ["provenance:"]
    for line in lines[starts[0] + 1 :]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    problem = None
    try:
        data = load_yaml_text("\n".join(block), str(path))
    except (yaml.YAMLError, ValueError) as err:
        problem = f"not valid YAML: {err}"
    else:
        if not isinstance(data, dict) or not isinstance(data.get("provenance"), dict):
            problem = "must be a mapping (key: value lines, each after '# ')"
    if problem is not None:
        raise ConfigError([("provenance", problem)], str(path), "provenance block")
    return data["provenance"]


def _plain_data(data: Any) -> Any:
    """Mappings, lists, strings and numbers only (tuples become lists), for ``yaml.safe_dump``."""
    if isinstance(data, Mapping):
        return {str(k): _plain_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_plain_data(v) for v in data]
    return data


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
