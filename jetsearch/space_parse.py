"""A search space's YAML form, parsed into a tree of knobs and checked.

:class:`Parser` turns the mapping into :class:`Node` trees, one per config dataclass, whose
leaves are fixed values (:class:`Fixed`) and searched ones (:class:`Dimension`), with
:class:`Branches` and :class:`Dilations` for the two knobs whose number of items is itself
sampled; it collects every problem with its key path. :func:`check_rules` checks the rules of
:mod:`jetseg.rules` against every combination of values the tree can produce.
:func:`jetsearch.space.load_space` runs both; the YAML form is described in
:mod:`jetsearch.space`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

from jetseg import rules
from jetseg.config import BranchConfig, JetSegConfig, StageConfig, StemConfig, config_to_dict
from jetseg.validation import (
    Problem,
    describe_type,
    field_types,
    unknown_key_problems,
    value_problems,
)

if TYPE_CHECKING:
    import optuna

# Fields sampled only when another field of the same mapping has one value.
CONDITIONS: dict[tuple[type, str], tuple[str, Any]] = {
    (StemConfig, "jetconv"): ("kind", "jetconv"),
    (StageConfig, "attention_reduction"): ("attention", "cbam"),
}
_DIMENSION_KEYS = {
    "choice": ("choice",),
    "int": ("int", "step", "log"),
    "float": ("float", "step", "log"),
}


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
        return same(value, self.value)

    def describe(self) -> str:
        return f"fixed {show(self.value)}"


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
            return any(same(value, c) for c in self.choices)
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
            return "one of " + ", ".join(show(c) for c in self.choices)
        text = f"{self.kind} {show(self.low)}..{show(self.high)}"
        if self.step not in (None, 1):
            text += f" step {show(self.step)}"
        return text + (" (log)" if self.log else "")

    def count(self) -> float:
        values = self.values()
        return math.inf if values is None else len(values)


Knob = Fixed | Dimension


def _renamed(knob: Knob, name: str) -> Knob:
    return dataclasses.replace(knob, name=name) if isinstance(knob, Dimension) else knob


@dataclass(frozen=True)
class Node:
    """A mapping of the config tree: one entry per dataclass field, in field order."""

    cls: type
    path: str
    fields: dict[str, Any]  # Knob | Node | Branches | Dilations | tuple[Node, ...]


@dataclass(frozen=True)
class Branches:
    """JetConv branches: a count, then the knobs of each branch that exists."""

    path: str
    count: Knob
    per_branch: tuple[dict[str, Knob], ...]  # one entry per branch index the count can reach


@dataclass(frozen=True)
class Dilations:
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


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type, so that ``1`` never matches ``true``."""
    return type(a) is type(b) and a == b


def freeze(value: Any) -> Any:
    """Lists as tuples, nested ones too, so that values compare and hash."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def show(value: Any) -> str:
    """A value as a space file writes it: lists in brackets, true / false."""
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value.isidentifier() else repr(value)
    return str(value)


def _offending(value: Any) -> str:
    """A value that was refused, quoted when it is a string so that its type shows."""
    return repr(value) if isinstance(value, str) else show(freeze(value))


def _label(value: Any) -> Any:
    """A choice as Optuna stores it: lists become their text, scalars stay as they are."""
    return show(value) if isinstance(value, tuple) else value


def join(prefix: str, key: str) -> str:
    """A dotted key path (``stem`` and ``width`` give ``stem.width``)."""
    return f"{prefix}.{key}" if prefix else key


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


class Parser:
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
        return Fixed(path, freeze(raw))

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
            elif any(same(freeze(value), s) for s in seen):
                self.problem(where, f"{show(freeze(value))} appears twice")
                ok = False
            seen.append(freeze(value))
        return Dimension(name, path, "choice", choices=tuple(seen)) if ok else None

    # mappings ------------------------------------------------------------------------------

    def node(self, cls: type, raw: Any, path: str, name: str) -> Node | None:
        if not isinstance(raw, Mapping):
            self.problem(path, f"expected a mapping, got {_offending(raw)}")
            return None
        for problem in unknown_key_problems(cls, raw, path):
            self.problem(*problem)
        hints = field_types(cls)
        parsed: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = raw[f.name] if f.name in raw else _field_default(f)
            key, param = join(path, f.name), join(name, f.name)
            parsed[f.name] = self.field(cls, f, hints[f.name], value, key, param)
        # Fields that failed their own checks stay None: the cross-field rules still read the
        # others, so that one load reports every problem (load_space refuses the space).
        return Node(cls, path, parsed)

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

    def stages(self, raw: Any, path: str) -> tuple[Node, ...] | None:
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
                value, hints[f.name], f.metadata, join(path, f.name), join(name, f.name)
            )
        return None if None in knobs.values() else knobs

    def branches(self, raw: Any, path: str, name: str) -> Branches | None:
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
            return Branches(path, Fixed(path, len(raw)), tuple(listed))
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
        return Branches(path, count, per_branch)

    def dilations(
        self, raw: Any, tp: Any, meta: Mapping[str, Any], path: str, name: str
    ) -> Dilations | None:
        # The field's constraints (the dilation range) hold for every multiplier in the list.
        if isinstance(raw, Mapping) and "per_block" in raw:
            for key in raw:
                if key != "per_block":
                    self.problem(f"{path}.{key}", "unknown key; per_block is the only key here")
            knob = self.leaf(raw["per_block"], int, meta, f"{path}.per_block", name)
            if knob is None or len(raw) != 1:
                return None
            return Dilations(path, name, None, knob)
        knob = self.leaf(raw, tp, meta, path, name)
        if knob is None:
            return None
        return Dilations(path, name, knob, None)


# ---------------------------------------------------------------------------------------------
# cross-field rules, checked against every combination


def _where(knob: Knob) -> str:
    return f"{knob.path}.{knob.kind}" if isinstance(knob, Dimension) else knob.path


def _explicit_groups(knob: Knob) -> list[Any]:
    return [g for g in knob.values() if g != "auto"]


def _fields(node: Node | None) -> dict[str, Any]:
    """A node's fields; none for a mapping that failed its own checks."""
    return node.fields if isinstance(node, Node) else {}


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


def check_rules(root: Node) -> list[Problem]:
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
        dilations: Dilations | None = fields.get("dilations")
        depth = fields.get("depth")
        if dilations is not None and dilations.whole is not None and depth is not None:
            for value in dilations.whole.values():
                bad = [d for d in depth.values() if not rules.dilations_fit(value, d)]
                if bad:
                    problems.append(
                        (
                            _where(dilations.whole),
                            f"{show(value)} has {len(value)} entries but stages[{i}].depth can "
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
                problems.append((_where(taps), f"{show(value)}: {outside[0]}"))
            elif not rules.taps_in_order(value):
                problems.append((_where(taps), f"{show(value)} {rules.TAPS_ORDER_RULE}"))
    return problems
