"""Search spaces: a YAML file shaped like a JetSeg config, sampled define-by-run by Optuna.

A space mirrors the config tree (``stem``, ``stages[i]``, ``decoder``, ``num_classes``, ...). Every
leaf is either a **fixed value**, written as in a config file and used as is, or a **dimension**:

=====================================  ===========================================================
``{choice: [a, b, c]}``                categorical; for list-valued fields (``taps``,
                                       ``dilations``) the choices are lists
``{int: [low, high]}``                 integer in ``low..high``; options ``step: s``,
                                       ``log: true`` (step 1 only)
``{float: [low, high]}``               real number; options ``step: s``, ``log: true``
=====================================  ===========================================================

Two knobs have their own form, because the number of their items is itself sampled:

* ``branches`` of a JetConv is either a list of branch mappings (a fixed branch count, each leaf
  fixed or searched) or ``{count: ..., kernel: ..., dilation: ..., square_kernel: ...}``: the
  count is sampled first and every existing branch samples its own kernel, dilation and square
  kernel from the shared spec (branch 3's kernel exists only in trials with 3 branches);
* ``dilations`` of a stage is a fixed list (``[]`` means all 1), a choice of lists, or
  ``{per_block: <leaf>}``: one multiplier per existing block, sampled after ``depth``.

Two further knobs are conditional: a stem's ``jetconv`` is sampled only when ``stem.kind`` is
``jetconv``, a stage's ``attention_reduction`` only when its ``attention`` is ``cbam``. A key left
out takes the config default. The top-level ``name`` names the sampled configs
(``<name>-<trial number>``); it defaults to the file name.

Worked example, a two-stage space::

    num_classes: 11
    stem: {kind: jetconv, width: {choice: [8, 16]},
           jetconv: {branches: [{kernel: 3, dilation: 1, square_kernel: 3}]}}
    stages:
    - depth: 1
      width: {int: [16, 32], step: 8}
      groups: {choice: [auto, 1, 2, 8]}
      jetconv:
        branches: {count: {int: [1, 3]}, kernel: {choice: [3, 5, 7]}, dilation: 1,
                   square_kernel: {choice: [3, 5]}}
      attention: {choice: [none, cbam]}
      attention_reduction: {choice: [2, 4]}
    - depth: {int: [1, 3]}
      width: 48
      stride: 1
      dilations: {per_block: {choice: [1, 2, 4]}}
    decoder: {taps: [0, 1, 2], head_width: {choice: [16, 32]}}

Its trials have the Optuna parameters ``stem.width``, ``stages.0.width``, ``stages.0.groups``,
``stages.0.jetconv.branches.count``, then ``stages.0.jetconv.branches.<i>.kernel`` and
``...<i>.square_kernel`` for each existing branch ``i < count``, ``stages.0.attention``,
``stages.0.attention_reduction`` (only when the attention is ``cbam``), ``stages.1.depth``,
``stages.1.dilations.<b>`` for each block ``b < depth``, and ``decoder.head_width``; 17 in all
(``SearchSpace.dimensions()`` lists them with their conditions). Choices that are lists reach
Optuna as their text (``"[1, 2, 3]"``) because Optuna stores scalars only.

Every sample is a valid config by construction. At load time every leaf value is checked against
the config's types and ranges, and every rule that ties fields together is checked against every
combination the space can produce. Put ``16`` among ``stages[0].groups`` above and the file is
refused, because ``stem.width`` can be 8::

    SpaceError: invalid search space (example.yaml):
      stages[0].groups.choice: 16 does not divide stem.width=8, a width of the stages[0] 1x1
      convs; explicit group counts must divide every width they can meet

Errors name the key path, the value and what was expected, like :class:`jetseg.config.ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from jetseg import rules
from jetseg.config import (
    BranchConfig,
    ConfigError,
    JetSegConfig,
    StageConfig,
    StemConfig,
    arch_hash,
    config_to_dict,
    load_config,
    read_yaml_mapping,
    resolve_named_file,
    yaml_names,
)
from jetseg.validation import (
    Problem,
    describe_type,
    field_types,
    unknown_key_problems,
    value_problems,
)

if TYPE_CHECKING:
    import optuna

SPACE_DIR_ENV = "JETSEARCH_SPACE_DIR"
# Fields sampled only when another field of the same mapping has one value.
_CONDITIONS: dict[tuple[type, str], tuple[str, Any]] = {
    (StemConfig, "jetconv"): ("kind", "jetconv"),
    (StageConfig, "attention_reduction"): ("attention", "cbam"),
}
_DIMENSION_KEYS = {
    "choice": ("choice",),
    "int": ("int", "step", "log"),
    "float": ("float", "step", "log"),
}


class SpaceError(ConfigError):
    """A space that could produce an invalid config, or a config outside a space.

    A :class:`jetseg.config.ConfigError`: ``problems`` lists ``(key_path, message)``.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        source: str | None = None,
        headline: str = "invalid search space",
    ) -> None:
        super().__init__(problems, source, "search space", headline=headline)


# ---------------------------------------------------------------------------------------------
# knobs: the leaves of a space


@dataclass(frozen=True)
class Fixed:
    """A leaf that every sample shares. ``value`` is plain data (lists frozen to tuples)."""

    path: str
    value: Any

    def values(self) -> Sequence[Any]:
        return (self.value,)

    def draw(self, trial: optuna.trial.BaseTrial) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return _same(value, self.value)

    def describe(self) -> str:
        return f"fixed {_show(self.value)}"


@dataclass(frozen=True)
class Dimension:
    """A searched leaf: an Optuna distribution under the parameter ``name``.

    ``path`` is where the dimension is written in the space file (for errors); ``name`` is the
    Optuna parameter, dot-separated with 0-based indices (``stages.1.jetconv.branches.2.kernel``).
    """

    name: str
    path: str
    kind: Literal["choice", "int", "float"]
    choices: tuple[Any, ...] = ()
    low: float = 0
    high: float = 0
    step: float | None = None
    log: bool = False

    def draw(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.kind == "choice":
            labels = [_label(c) for c in self.choices]
            picked = trial.suggest_categorical(self.name, labels)
            return self.choices[labels.index(picked)]
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> Sequence[Any] | None:
        """Every value it can take, or None for a continuous float."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "int":
            return range(int(self.low), int(self.high) + 1, int(self.step or 1))
        if self.step is None:
            return None
        count = round((self.high - self.low) / self.step)
        return [self.low + i * self.step for i in range(count + 1)]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(_same(value, c) for c in self.choices)
        if self.kind == "int":
            return _is_int(value) and value in self.values()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        if self.step is None:
            return self.low <= value <= self.high
        return any(math.isclose(value, v) for v in self.values())

    def param(self, value: Any) -> Any:
        """The Optuna parameter value that makes ``draw`` return ``value``."""
        return _label(value) if self.kind == "choice" else value

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(_show(c) for c in self.choices)
        text = f"{self.kind} {_show(self.low)}..{_show(self.high)}"
        if self.step not in (None, 1):
            text += f" step {_show(self.step)}"
        return text + (" (log)" if self.log else "")

    def count(self) -> float:
        values = self.values()
        return math.inf if values is None else len(values)


Knob = Fixed | Dimension


def _renamed(knob: Knob, name: str) -> Knob:
    return dataclasses.replace(knob, name=name) if isinstance(knob, Dimension) else knob


@dataclass(frozen=True)
class _Node:
    """A mapping of the config tree: one entry per dataclass field, in field order."""

    cls: type
    path: str
    fields: dict[str, Any]  # Knob | _Node | _Branches | _Dilations | tuple[_Node, ...]


@dataclass(frozen=True)
class _Branches:
    """JetConv branches: a count, then the knobs of each branch that exists."""

    path: str
    count: Knob
    per_branch: tuple[dict[str, Knob], ...]  # one entry per branch index the count can reach


@dataclass(frozen=True)
class _Dilations:
    """A stage's dilations: a whole list (fixed or chosen) or one knob per existing block."""

    path: str
    name: str
    whole: Knob | None
    per_block: Knob | None

    def block_knob(self, block: int) -> Knob:
        assert self.per_block is not None
        return _renamed(self.per_block, f"{self.name}.{block}")


# ---------------------------------------------------------------------------------------------
# small helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type, so that ``1`` never matches ``true``."""
    return type(a) is type(b) and a == b


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value.isidentifier() else repr(value)
    return str(value)


def _offending(value: Any) -> str:
    """A value that was refused, quoted when it is a string so that its type shows."""
    return repr(value) if isinstance(value, str) else _show(_freeze(value))


def _label(value: Any) -> Any:
    """A choice as Optuna stores it: lists become their text, scalars stay as they are."""
    return _show(value) if isinstance(value, tuple) else value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _applies(cls: type, field_name: str, values: Mapping[str, Any]) -> bool:
    condition = _CONDITIONS.get((cls, field_name))
    return condition is None or _same(values.get(condition[0]), condition[1])


def _field_default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    if isinstance(value, tuple):
        return [config_to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# leaf values against the config's types


def _value_problem(value: Any, tp: Any, meta: Mapping[str, Any]) -> str | None:
    """Why ``value`` cannot be the field's value, or None when it can (the configs' own check)."""
    problems = value_problems(value, tp, meta)
    if not problems:
        return None
    item, message = problems[0]
    return f"in {_offending(value)}: {message}" if item else message


def _takes(tp: Any, kind: type) -> bool:
    """Whether a field of type ``tp`` holds values of Python type ``kind``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return any(type(a) is kind for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return any(_takes(o, kind) for o in typing.get_args(tp))
    return tp is kind


class _Parser:
    """Turns the YAML form into nodes and knobs, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        if (path, message) not in self.problems:
            self.problems.append((path, message))

    # leaves --------------------------------------------------------------------------------

    def leaf(self, raw: Any, tp: Any, meta: Mapping[str, Any], path: str, name: str) -> Knob | None:
        if isinstance(raw, Mapping):
            return self.dimension(raw, tp, meta, path, name)
        error = _value_problem(raw, tp, meta)
        if error:
            self.problem(path, error)
            return None
        return Fixed(path, _freeze(raw))

    def dimension(
        self, raw: Mapping[str, Any], tp: Any, meta: Mapping[str, Any], path: str, name: str
    ) -> Dimension | None:
        kinds = [k for k in _DIMENSION_KEYS if k in raw]
        if len(kinds) != 1:
            self.problem(
                path,
                f"expected a fixed value or one dimension ({{choice: [...]}}, "
                f"{{int: [low, high]}} or {{float: [low, high]}}), got {dict(raw)}",
            )
            return None
        kind = kinds[0]
        ok = True
        for key in raw:
            if key not in _DIMENSION_KEYS[kind]:
                allowed = ", ".join(_DIMENSION_KEYS[kind])
                article = "an" if kind == "int" else "a"
                self.problem(
                    f"{path}.{key}",
                    f"unknown key in {article} {kind} dimension; allowed: {allowed}",
                )
                ok = False
        if kind == "choice":
            return self.choice(raw["choice"], tp, meta, path, name) if ok else None
        bounds = raw[kind]
        where = f"{path}.{kind}"
        number = _is_int if kind == "int" else _is_number
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(number, bounds))):
            what = "integer" if kind == "int" else "numeric"
            self.problem(where, f"expected [low, high] with {what} bounds, got {bounds!r}")
            return None
        low, high = bounds
        step, log = raw.get("step"), raw.get("log", False)
        if not isinstance(log, bool):
            self.problem(f"{path}.log", f"expected true or false, got {_offending(log)}")
            ok = False
        if low > high:
            self.problem(where, f"low <= high must hold, got low={low}, high={high}")
            ok = False
        if step is not None:
            if not (number(step) and step > 0):
                self.problem(
                    f"{path}.step", f"expected a positive {kind} step, got {_offending(step)}"
                )
                ok = False
            elif log is True:
                self.problem(f"{path}.step", "step and log: true cannot be combined")
                ok = False
            elif ok and not math.isclose((high - low) / step, round((high - low) / step)):
                self.problem(
                    where,
                    f"high - low must be a multiple of step, got low={low}, high={high}, "
                    f"step={step}",
                )
                ok = False
        if log is True and low <= 0:
            self.problem(where, f"log: true needs low > 0, got low={low}")
            ok = False
        if not _takes(tp, int if kind == "int" else float):
            self.problem(
                path,
                f"{'an int' if kind == 'int' else 'a float'} dimension cannot set "
                f"this field, which takes {describe_type(tp)}",
            )
            return None
        if not ok:
            return None
        dim = Dimension(name, path, kind, low=low, high=high, step=step, log=log)
        if kind == "int":
            restricted = typing.get_origin(tp) is Literal or "choices" in meta
            for value in dim.values() if restricted else (low, high):
                error = _value_problem(value, tp, meta)
                if error:
                    self.problem(where, error)
                    return None
        return dim

    def choice(
        self, raw: Any, tp: Any, meta: Mapping[str, Any], path: str, name: str
    ) -> Dimension | None:
        where = f"{path}.choice"
        if not isinstance(raw, list) or not raw:
            self.problem(where, f"expected a non-empty list of values, got {raw!r}")
            return None
        ok = True
        seen: list[Any] = []
        for value in raw:
            error = _value_problem(value, tp, meta)
            if error:
                self.problem(where, error)
                ok = False
            elif any(_same(_freeze(value), s) for s in seen):
                self.problem(where, f"{_show(_freeze(value))} appears twice")
                ok = False
            seen.append(_freeze(value))
        return Dimension(name, path, "choice", choices=tuple(seen)) if ok else None

    # mappings ------------------------------------------------------------------------------

    def node(self, cls: type, raw: Any, path: str, name: str) -> _Node | None:
        if not isinstance(raw, Mapping):
            self.problem(path, f"expected a mapping, got {_offending(raw)}")
            return None
        for problem in unknown_key_problems(cls, raw, path):
            self.problem(*problem)
        hints = field_types(cls)
        parsed: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = raw[f.name] if f.name in raw else _field_default(f)
            key, param = _join(path, f.name), _join(name, f.name)
            parsed[f.name] = self.field(cls, f, hints[f.name], value, key, param)
        # Fields that failed their own checks stay None: the cross-field rules still read the
        # others, so that one load reports every problem (load_space refuses the space).
        return _Node(cls, path, parsed)

    def field(
        self, cls: type, f: dataclasses.Field, tp: Any, raw: Any, path: str, name: str
    ) -> Any:
        if cls is JetSegConfig and f.name == "name":
            if not isinstance(raw, str):
                self.problem(path, f"expected a string (the name of sampled configs), got {raw!r}")
                return None
            return Fixed(path, raw)
        if f.name == "stages":
            return self.stages(raw, path)
        if f.name == "branches":
            return self.branches(raw, path, name)
        if f.name == "dilations":
            return self.dilations(raw, tp, f.metadata, path, name)
        if dataclasses.is_dataclass(tp):
            return self.node(tp, raw, path, name)
        return self.leaf(raw, tp, f.metadata, path, name)

    def stages(self, raw: Any, path: str) -> tuple[_Node, ...] | None:
        if not isinstance(raw, list):
            self.problem(path, f"expected a list of stage mappings, got {_offending(raw)}")
            return None
        count_problem = rules.stage_count_problem(len(raw))
        if count_problem:
            self.problem(path, count_problem)
            return None
        nodes = [
            self.node(StageConfig, s, f"{path}[{i}]", f"stages.{i}") for i, s in enumerate(raw)
        ]
        return tuple(nodes)

    def branch_knobs(self, raw: Mapping[str, Any], path: str, name: str) -> dict[str, Knob] | None:
        hints = field_types(BranchConfig)
        knobs = {}
        for f in dataclasses.fields(BranchConfig):
            value = raw.get(f.name, f.default)
            knobs[f.name] = self.leaf(
                value, hints[f.name], f.metadata, _join(path, f.name), _join(name, f.name)
            )
        return None if None in knobs.values() else knobs

    def branches(self, raw: Any, path: str, name: str) -> _Branches | None:
        allowed = [f.name for f in dataclasses.fields(BranchConfig)]
        if isinstance(raw, list):
            count_problem = rules.branch_count_problem(len(raw))
            if count_problem:
                self.problem(path, count_problem)
                return None
            listed = []
            for i, item in enumerate(raw):
                where = f"{path}[{i}]"
                if not isinstance(item, Mapping):
                    self.problem(where, f"expected a branch mapping, got {_offending(item)}")
                    return None
                for key in item:
                    if key not in allowed:
                        self.problem(
                            f"{where}.{key}", f"unknown key; allowed keys: {', '.join(allowed)}"
                        )
                listed.append(self.branch_knobs(item, where, f"{name}.{i}"))
            if None in listed or any(k not in allowed for item in raw for k in item):
                return None
            return _Branches(path, Fixed(path, len(raw)), tuple(listed))
        if not isinstance(raw, Mapping):
            self.problem(
                path, f"expected a list of branches or a {{count: ...}} mapping, got {raw!r}"
            )
            return None
        for key in raw:
            if key != "count" and key not in allowed:
                keys = ", ".join(["count", *allowed])
                self.problem(f"{path}.{key}", f"unknown key; allowed keys: {keys}")
        if "count" not in raw:
            self.problem(
                f"{path}.count", "missing: say how many branches (1 to 3), fixed or searched"
            )
            return None
        count_range = {"min": 1, "max": rules.MAX_BRANCHES}
        count = self.leaf(raw["count"], int, count_range, f"{path}.count", f"{name}.count")
        template = self.branch_knobs(raw, path, name)
        if count is None or template is None or any(k not in ["count", *allowed] for k in raw):
            return None
        per_branch = tuple(
            {key: _renamed(knob, f"{name}.{i}.{key}") for key, knob in template.items()}
            for i in range(max(count.values()))
        )
        return _Branches(path, count, per_branch)

    def dilations(
        self, raw: Any, tp: Any, meta: Mapping[str, Any], path: str, name: str
    ) -> _Dilations | None:
        # The field's constraints (the dilation range) hold for every multiplier in the list.
        if isinstance(raw, Mapping) and "per_block" in raw:
            for key in raw:
                if key != "per_block":
                    self.problem(f"{path}.{key}", "unknown key; per_block is the only key here")
            knob = self.leaf(raw["per_block"], int, meta, f"{path}.per_block", name)
            if knob is None or len(raw) != 1:
                return None
            return _Dilations(path, name, None, knob)
        knob = self.leaf(raw, tp, meta, path, name)
        if knob is None:
            return None
        return _Dilations(path, name, knob, None)


# ---------------------------------------------------------------------------------------------
# cross-field rules, checked against every combination


def _where(knob: Knob) -> str:
    return f"{knob.path}.{knob.kind}" if isinstance(knob, Dimension) else knob.path


def _explicit_groups(knob: Knob) -> list[Any]:
    return [g for g in knob.values() if g != "auto"]


def _fields(node: _Node | None) -> dict[str, Any]:
    """A node's fields; none for a mapping that failed its own checks."""
    return node.fields if isinstance(node, _Node) else {}


def _labelled(knob: Knob | None, name: str) -> list[tuple[int, str]] | None:
    """Every value of a knob with where it comes from (``stem.width=8``); None if broken."""
    return None if knob is None else [(v, f"{name}={v}") for v in knob.values()]


def _check_divides(
    groups: Knob | None,
    in_widths: Sequence[tuple[int, str]] | None,
    out_widths: Sequence[tuple[int, str]] | None,
    what: str,
) -> list[Problem]:
    """Every explicit group count must divide both widths of every conv it can meet."""
    if groups is None or in_widths is None or out_widths is None:
        return []  # a knob it reads is broken, and reported already
    problems = []
    for g in _explicit_groups(groups):
        count_problem = rules.group_count_problem(g)
        if count_problem:
            problems.append((_where(groups), count_problem))
            continue
        for (a, a_origin), (b, b_origin) in itertools.product(in_widths, out_widths):
            if rules.groups_problem(g, a, b, what) is not None:
                origin = a_origin if rules.undivided_width(g, (a,)) else b_origin
                problems.append(
                    (
                        _where(groups),
                        f"{g} does not divide {origin}, a width of the {what}; "
                        "explicit group counts must divide every width they can meet",
                    )
                )
                break
    return problems


def _check_rules(root: _Node) -> list[Problem]:
    """The rules of :mod:`jetseg.rules`, over every combination of the values they read.

    Knobs that failed their own checks are None here; the rules that read them are skipped.
    """
    problems: list[Problem] = []
    top = root.fields
    stem = _fields(top.get("stem"))
    stem_widths = _labelled(stem.get("width"), "stem.width")
    if stem.get("kind") is not None and "jetconv" in stem["kind"].values():
        problems += _check_divides(
            _fields(stem.get("jetconv")).get("groups"),
            _labelled(top.get("in_channels"), "in_channels"),
            stem_widths,
            "stem pointwise conv",
        )
    previous = stem_widths
    stages = top.get("stages")
    for i, stage in enumerate(stages or ()):
        fields = _fields(stage)
        widths = _labelled(fields.get("width"), f"stages[{i}].width")
        problems += _check_divides(fields.get("groups"), previous, widths, f"stages[{i}] 1x1 convs")
        expansion = fields.get("expansion")
        if previous is not None and widths is not None and expansion is not None:
            hidden: dict[int, str] = {}
            for (w_in, in_origin), (w, origin), e in itertools.product(
                previous, widths, expansion.values()
            ):
                for h in rules.block_hidden_widths(w_in, w, e):
                    source = in_origin if h == w_in * e else origin
                    hidden.setdefault(h, f"{source} x stages[{i}].expansion={e} = {h}")
            problems += _check_divides(
                _fields(fields.get("jetconv")).get("groups"),
                list(hidden.items()),
                list(hidden.items()),
                f"stages[{i}] JetConv (width x expansion)",
            )
        dilations: _Dilations | None = fields.get("dilations")
        depth = fields.get("depth")
        if dilations is not None and dilations.whole is not None and depth is not None:
            for value in dilations.whole.values():
                bad = [d for d in depth.values() if not rules.dilations_fit(value, d)]
                if bad:
                    problems.append(
                        (
                            _where(dilations.whole),
                            f"{_show(value)} has {len(value)} entries but stages[{i}].depth can "
                            f"be {bad[0]}; give one per block, leave it empty, or use per_block",
                        )
                    )
        previous = widths
    taps = _fields(top.get("decoder")).get("taps")
    if stages is not None and taps is not None:
        features = len(stages) + 1
        for value in taps.values():
            outside = [p for t in value if (p := rules.tap_problem(t, features))]
            if outside:
                problems.append((_where(taps), f"{_show(value)}: {outside[0]}"))
            elif not rules.taps_in_order(value):
                problems.append((_where(taps), f"{_show(value)} {rules.TAPS_ORDER_RULE}"))
    return problems


# ---------------------------------------------------------------------------------------------
# the space


class SearchSpace:
    """A loaded, checked search space; every sample is a valid :class:`JetSegConfig`.

    ``sample(trial)`` is define-by-run: it calls ``trial.suggest_*`` with dot-separated key
    paths as parameter names, and only for knobs that apply to this trial (branch 3's kernel only
    with 3 branches, per-block dilations only for existing blocks, ``attention_reduction`` only
    with cbam, the stem's JetConv only for a JetConv stem). ``params_for(config)`` is the inverse
    that ``study.enqueue_trial`` needs.
    """

    def __init__(self, root: _Node, name: str, source: str | None = None) -> None:
        self._root = root
        self.name = name
        self.source = source

    def __repr__(self) -> str:
        return (
            f"SearchSpace({self.name!r}, {len(self.dimensions())} dimensions, "
            f"~10^{self.size_estimate():.1f} configs)"
        )

    # sampling ------------------------------------------------------------------------------

    def sample(self, trial: optuna.trial.BaseTrial) -> JetSegConfig:
        """Sample one config; the trial's params are the dimensions that applied."""
        data = _sample_node(self._root, trial)
        data["name"] = f"{self.name}-{trial.number}"
        return self._build(data)

    def _build(self, data: dict[str, Any]) -> JetSegConfig:
        # load_space checked every combination against the config's rules (jetseg.rules), so
        # a sample is valid by construction; if one is not, that check has a gap: say so.
        try:
            return _construct(JetSegConfig, data)
        except ConfigError as err:
            raise SpaceError(
                err.problems, self.source, f"search space {self.name!r} produced an invalid config"
            ) from None

    def random_configs(self, n: int, seed: int) -> list[JetSegConfig]:
        """``n`` configs from an in-memory study with ``RandomSampler(seed=seed)``."""
        import optuna

        previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            return [self.sample(study.ask()) for _ in range(n)]
        finally:
            optuna.logging.set_verbosity(previous)

    # the inverse ---------------------------------------------------------------------------

    def params_for(self, config: JetSegConfig) -> dict[str, Any]:
        """Parameters that make ``sample`` reproduce ``config`` (the same ``arch_hash``).

        Pass them to ``study.enqueue_trial``. Spellings of the same network count as inside the
        space: ``groups: auto`` matches an explicit count it resolves to, and ``dilations: []``
        matches all ones. Raises :class:`SpaceError` naming every knob of the config that lies
        outside the space.
        """
        matcher = _Matcher(config)
        matcher.node(self._root, matcher.data, "")
        if matcher.problems:
            raise SpaceError(
                matcher.problems,
                self.source,
                f"config {config.name!r} lies outside search space {self.name!r}",
            )
        import optuna

        replay = self.sample(optuna.trial.FixedTrial(matcher.params))
        if arch_hash(replay) != matcher.target:
            raise SpaceError(
                [("", f"replaying the parameters built {arch_hash(replay)}, not {matcher.target}")],
                self.source,
                f"config {config.name!r} cannot be reproduced by search space {self.name!r}",
            )
        return matcher.params

    # display -------------------------------------------------------------------------------

    def dimensions(self) -> list[tuple[str, str]]:
        """Every searched knob as ``(parameter name, description)``, in sampling order.

        Conditional knobs say when they are sampled (``when stem.kind is jetconv``).
        """
        return [
            (dim.name, dim.describe() + (f"; when {' and '.join(when)}" if when else ""))
            for dim, when in _walk_dimensions(self._root, [])
        ]

    def size_estimate(self) -> float:
        """Rough log10 of the number of distinct parameter combinations (inf with a float)."""
        count = _count_node(self._root)
        return math.inf if math.isinf(count) else math.log10(count)


def _sample_node(node: _Node, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, spec in node.fields.items():
        if not _applies(node.cls, key, values):
            continue
        if isinstance(spec, (Fixed, Dimension)):
            values[key] = spec.draw(trial)
        elif isinstance(spec, _Node):
            values[key] = _sample_node(spec, trial)
        elif isinstance(spec, tuple):
            values[key] = [_sample_node(stage, trial) for stage in spec]
        elif isinstance(spec, _Branches):
            count = spec.count.draw(trial)
            values[key] = [
                {k: knob.draw(trial) for k, knob in spec.per_branch[i].items()}
                for i in range(count)
            ]
        elif spec.whole is not None:
            values[key] = spec.whole.draw(trial)
        else:
            values[key] = [spec.block_knob(b).draw(trial) for b in range(values["depth"])]
    return values


def _construct(cls: type, data: Mapping[str, Any]) -> Any:
    """Build a config dataclass from sampled data, which the load-time checks have typed.

    Only the top-level :class:`JetSegConfig` validates (in its ``__post_init__``), so this is
    a cheaper ``load_config`` for data whose leaves are already known to be well typed.
    """
    hints = field_types(cls)
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            value = _construct(tp, value)
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            if dataclasses.is_dataclass(item):
                value = tuple(_construct(item, v) for v in value)
            else:
                value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``stages[1].jetconv.groups`` style paths in plain config data."""
    keys: list[Any] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


class _Matcher:
    """Walks a space alongside a config's data, collecting parameters and mismatches."""

    def __init__(self, config: JetSegConfig) -> None:
        self.config = config
        self.data = config_to_dict(config)
        self.target = arch_hash(config)
        self.params: dict[str, Any] = {}
        self.problems: list[tuple[str, str]] = []

    def node(self, node: _Node, data: Mapping[str, Any], path: str) -> None:
        for key, spec in node.fields.items():
            if node.cls is JetSegConfig and key == "name":
                continue
            if not _applies(node.cls, key, data):
                continue
            where, value = _join(path, key), data[key]
            if isinstance(spec, (Fixed, Dimension)):
                self.leaf(spec, value, where)
            elif isinstance(spec, _Node):
                self.node(spec, value, where)
            elif isinstance(spec, tuple):
                if len(value) != len(spec):
                    self.problems.append(
                        (where, f"the config has {len(value)} stages, the space {len(spec)}")
                    )
                    continue
                for i, (stage, stage_data) in enumerate(zip(spec, value, strict=True)):
                    self.node(stage, stage_data, f"{where}[{i}]")
            elif isinstance(spec, _Branches):
                if self.leaf(spec.count, len(value), f"{where} (count)"):
                    for i, branch in enumerate(value):
                        for k, knob in spec.per_branch[i].items():
                            self.leaf(knob, branch[k], f"{where}[{i}].{k}")
            else:
                self.dilations(spec, value, data["depth"], where)

    def leaf(self, knob: Knob, value: Any, path: str) -> bool:
        value = _freeze(value)
        found = knob.contains(value)
        if not found and path.endswith("groups"):
            # Group counts have several spellings of one network: auto and what it resolves to.
            found, value = self.equivalent_groups(knob, path)
        if not found:
            self.problems.append((path, f"{_show(value)} is outside the space ({knob.describe()})"))
            return False
        if isinstance(knob, Dimension):
            self.params[knob.name] = knob.param(value)
        return True

    def equivalent_groups(self, knob: Knob, path: str) -> tuple[bool, Any]:
        for candidate in knob.values():
            data = copy.deepcopy(self.data)
            _set_path(data, path, candidate)
            try:
                if arch_hash(load_config(data)) == self.target:
                    return True, candidate
            except ConfigError:
                continue
        return False, None

    def dilations(self, spec: _Dilations, value: list[int], depth: int, path: str) -> None:
        ones = (1,) * depth
        wanted = tuple(value) or ones
        if spec.per_block is not None:
            for b, d in enumerate(wanted):
                self.leaf(spec.block_knob(b), d, f"{path}[{b}]")
            return
        assert spec.whole is not None
        for candidate in spec.whole.values():
            if (candidate or ones) == wanted:
                if isinstance(spec.whole, Dimension):
                    self.params[spec.whole.name] = spec.whole.param(candidate)
                return
        self.problems.append(
            (path, f"{_show(tuple(value))} is outside the space ({spec.whole.describe()})")
        )


def _walk_dimensions(node: _Node, when: list[str]) -> list[tuple[Dimension, list[str]]]:
    """Every dimension below ``node`` with the conditions under which it is sampled."""
    found: list[tuple[Dimension, list[str]]] = []
    for key, spec in node.fields.items():
        condition = _CONDITIONS.get((node.cls, key))
        here = when
        if condition is not None:
            controller = node.fields[condition[0]]
            if not any(_same(v, condition[1]) for v in controller.values()):
                continue
            if isinstance(controller, Dimension):
                here = [*when, f"{controller.name} is {_show(condition[1])}"]
        if isinstance(spec, (Fixed, Dimension)):
            found += _conditional(spec, here)
        elif isinstance(spec, _Node):
            found += _walk_dimensions(spec, here)
        elif isinstance(spec, tuple):
            for stage in spec:
                found += _walk_dimensions(stage, here)
        elif isinstance(spec, _Branches):
            found += _conditional(spec.count, here)
            fewest = min(spec.count.values())
            for i, knobs in enumerate(spec.per_branch):
                extra = _count_condition(spec.count, i + 1, fewest)
                for knob in knobs.values():
                    found += _conditional(knob, here, extra)
        elif spec.whole is not None:
            found += _conditional(spec.whole, here)
        else:
            depth = node.fields["depth"]
            for b in range(max(depth.values())):
                extra = _count_condition(depth, b + 1, min(depth.values()))
                found += _conditional(spec.block_knob(b), here, extra)
    return found


def _count_condition(count: Knob, needed: int, fewest: int) -> str:
    if isinstance(count, Dimension) and needed > fewest:
        return f"{count.name} >= {needed}"
    return ""


def _conditional(knob: Knob, when: list[str], extra: str = "") -> list[tuple[Dimension, list[str]]]:
    if not isinstance(knob, Dimension):
        return []
    return [(knob, [*when, extra] if extra else when)]


def _count_leaves(knobs: Iterable[Knob]) -> float:
    return math.prod(knob.count() if isinstance(knob, Dimension) else 1 for knob in knobs)


def _count_node(node: _Node) -> float:
    """Distinct parameter combinations below ``node``, conditional knobs where they apply."""
    fields = node.fields
    total: float = 1
    done: set[str] = set()
    for (cls, dependent), (controller, required) in _CONDITIONS.items():
        if cls is not node.cls:
            continue
        ways = 0.0
        for value in fields[controller].values():
            applies = _same(value, required)
            ways += _count_spec(fields[dependent], fields) if applies else 1
        total *= ways
        done |= {controller, dependent}
    if node.cls is StageConfig:
        dilations: _Dilations = fields["dilations"]
        if dilations.per_block is not None:
            per_block = _count_leaves([dilations.per_block])
            total *= sum(per_block**d for d in fields["depth"].values())
            done |= {"depth", "dilations"}
    for key, spec in fields.items():
        if key not in done:
            total *= _count_spec(spec, fields)
    return total


def _count_spec(spec: Any, siblings: Mapping[str, Any]) -> float:
    if isinstance(spec, (Fixed, Dimension)):
        return _count_leaves([spec])
    if isinstance(spec, _Node):
        return _count_node(spec)
    if isinstance(spec, tuple):
        return math.prod(_count_node(stage) for stage in spec)
    if isinstance(spec, _Branches):
        return sum(
            math.prod(_count_leaves(spec.per_branch[i].values()) for i in range(n))
            for n in spec.count.values()
        )
    assert spec.whole is not None
    return _count_leaves([spec.whole])


# ---------------------------------------------------------------------------------------------
# loading


def space_dir() -> Path:
    """Where built-in spaces live: ``$JETSEARCH_SPACE_DIR``, a checkout's ``space/``, or the
    copy installed with the package (``jetsearch/builtin/space``)."""
    override = os.environ.get(SPACE_DIR_ENV)
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[1] / "space"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("jetsearch") / "builtin" / "space"))


def space_names() -> list[str]:
    """Names of the built-in spaces."""
    return yaml_names(space_dir())


def load_space(source: str | Path | Mapping[str, Any]) -> SearchSpace:
    """Load and check a search space from a built-in name, a YAML path or a plain mapping.

    Built-in names (``jetseg``, ``nano``, ``agx``, ``tiny``) resolve in :func:`space_dir`, as
    presets and studies do (:func:`jetseg.config.resolve_named_file`). A space that could
    produce an invalid config raises :class:`SpaceError` listing every problem with its key
    path, the rules that tie fields together with the per-key problems.
    """
    label = None
    if isinstance(source, Mapping):
        data: Any = dict(source)
        default_name = "space"
    else:
        path = resolve_named_file(source, space_dir(), "search space", "space")
        label, default_name = str(path), path.stem
        data = read_yaml_mapping(path, SpaceError)
    if not isinstance(data, dict):
        raise SpaceError([("", "the file must hold a mapping at the top level")], label)
    data = {"name": default_name, **data}
    parser = _Parser()
    root = parser.node(JetSegConfig, data, "", "")
    assert root is not None  # data is a mapping
    problems = parser.problems + _check_rules(root)
    if problems:
        raise SpaceError(problems, label)
    return SearchSpace(root, root.fields["name"].value, label)


__all__ = [
    "Dimension",
    "Fixed",
    "SearchSpace",
    "SpaceError",
    "load_space",
    "space_dir",
    "space_names",
]
