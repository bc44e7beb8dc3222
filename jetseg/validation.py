"""The one validation engine behind every config: networks, training, search spaces, studies.

A config is a frozen dataclass. Its fields say what they accept: the annotation gives the type
(``int``, ``float``, ``bool``, ``str``, ``None``, ``Literal[...]``, unions of those, tuples,
nested dataclasses) and ``field(metadata=...)`` the constraints:

=================  ============================================================================
``min`` / ``max``  inclusive bounds, ``value >= min`` / ``value <= max``
``gt`` / ``lt``    exclusive bounds, ``value > gt`` / ``value < lt``
``choices``        the allowed values
``check``          a function ``value -> message or None`` for what a bound cannot say
=================  ============================================================================

On a tuple field the constraints apply to every item. Rules that tie fields together live on
the dataclass as ``cross_field_problems(values) -> [(key_path, message), ...]``: ``values`` has
the dataclass's fields as attributes, and a field that is itself broken reads as :data:`INVALID`
(see :func:`known`), so the rules run even when other keys are wrong and every problem of a
file comes in one :class:`ConfigError`, each with its key path, its value and what is allowed
(as Optuna's distributions say ``low <= high must hold, got low=3, high=1``)::

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Window:
    ...     low: int = field(default=0, metadata={"min": 0})
    ...     high: int = 1
    ...
    ...     @staticmethod
    ...     def cross_field_problems(values):
    ...         low, high = values.low, values.high
    ...         if known(low, high) and low > high:
    ...             return [("", f"low <= high must hold, got low={low}, high={high}")]
    ...         return []
    >>> parse(Window, {"low": 3, "high": 1, "width": 2}, what="window")
    Traceback (most recent call last):
    ...
    ConfigError: invalid window:
      width: unknown key; allowed keys: low, high
      low <= high must hold, got low=3, high=1

:func:`parse` builds a config from plain data (YAML, JSON); :func:`validate`, called from a
top-level config's ``__post_init__``, checks one built in Python and normalises it in place
(lists become tuples, integers in float fields floats). Nested config dataclasses do not
validate themselves: the top-level one checks the whole tree, so a problem keeps its full path.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

Problem = tuple[str, str]

__all__ = [
    "INVALID",
    "ConfigError",
    "Problem",
    "describe",
    "describe_type",
    "field_types",
    "join_path",
    "known",
    "parse",
    "unknown_key_problems",
    "validate",
    "value_problems",
]


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` lists ``(key_path, message)``.

    The message names the file (``source``) when there is one and lists every problem, one a
    line: ``invalid <what> (<source>):`` then ``  <key path>: <message>``.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        source: str | None = None,
        what: str = "JetSeg config",
        *,
        headline: str | None = None,
    ) -> None:
        self.problems = list(problems)
        self.source = source
        self.what = what
        where = f" ({source})" if source else ""
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in self.problems]
        super().__init__(f"{headline or f'invalid {what}'}{where}:\n" + "\n".join(lines))


class _Invalid:
    """A value that failed its own checks; reading anything from it gives it back."""

    def __getattr__(self, name: str) -> _Invalid:
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> _Invalid:
        return self

    def __iter__(self):
        return iter(())

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


class Partial:
    """The fields of a config dataclass that has broken fields, as attributes (those INVALID)."""

    def __init__(self, cls: type, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)
        self.__dict__["_config_class"] = cls

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "_config_class")
        return f"Partial[{self._config_class.__name__}]({fields})"


def known(*values: Any) -> bool:
    """Whether every value passed its own checks, so that a rule may read it."""
    for value in values:
        if value is INVALID or isinstance(value, Partial):
            return False
        if isinstance(value, tuple) and not known(*value):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# wording


# How much of a refused value a message shows: a value that YAML aliases blew up, or a 1 MB
# string, must not flood the terminal (nor take minutes to render).
DESCRIBE_LIMIT = 80


def describe(value: Any) -> str:
    """A refused value as a message shows it: strings quoted, so that their type shows.

    A value whose text is longer than :data:`DESCRIBE_LIMIT` characters is cut there, with an
    ellipsis and its full size (``'xxxx...' (100000 characters)``, ``[1, 2, ...] (5000
    items)``). Only the part shown is ever rendered, so describing a huge value is cheap.
    """
    text = _BoundedText(DESCRIBE_LIMIT + 1)
    text.add_value(value, top=True)
    if text.complete:
        return text.text()
    return f"{text.text()[: DESCRIBE_LIMIT - 3]}... ({_extent(value)})"


class _BoundedText:
    """``str(value)`` rendered piece by piece, stopping once ``budget`` characters are out.

    Lists, tuples and mappings read as ``str`` shows them (their items by ``repr``); a long
    string is cut before it is quoted. ``complete`` says whether the whole text fitted.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.pieces: list[str] = []
        self.complete = True

    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, piece: str) -> bool:
        self.pieces.append(piece)
        self.used += len(piece)
        if self.used > self.budget:
            self.complete = False
        return self.complete

    def add_value(self, value: Any, *, top: bool = False) -> bool:
        if isinstance(value, str | bytes):
            short = value[: max(self.budget - self.used, 0) + 1]
            if not self.add(repr(short)):
                return False
            if len(short) < len(value):
                self.complete = False
            return self.complete
        if isinstance(value, Mapping):
            return self.add_items(("{", "}"), value.items(), pairs=True)
        if isinstance(value, list):
            return self.add_items(("[", "]"), value)
        if isinstance(value, tuple):
            return self.add_items(("(", ",)" if len(value) == 1 else ")"), value)
        return self.add(str(value) if top else repr(value))

    def add_items(self, brackets: tuple[str, str], items: Any, *, pairs: bool = False) -> bool:
        if not self.add(brackets[0]):
            return False
        for i, item in enumerate(items):
            if i and not self.add(", "):
                return False
            if pairs:
                key, item = item
                if not (self.add_value(key) and self.add(": ")):
                    return False
            if not self.add_value(item):
                return False
        return self.add(brackets[1])


def _extent(value: Any) -> str:
    """The full size of a value that :func:`describe` cut: characters, items or keys."""
    if isinstance(value, str):
        count, unit = len(value), "character"
    elif isinstance(value, bytes):
        count, unit = len(value), "byte"
    elif isinstance(value, Mapping):
        count, unit = len(value), "key"
    elif isinstance(value, list | tuple):
        count, unit = len(value), "item"
    else:
        count, unit = len(str(value)), "character"
    return f"{count} {unit}{'' if count == 1 else 's'}"


def describe_type(tp: Any) -> str:
    """What a field of type ``tp`` takes, in words (``an integer``, ``'reu', 'relu'``...)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return ", ".join(describe(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(o) for o in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp is type(None):
        return "null"
    return names.get(tp, str(tp))


def _bounds(meta: Mapping[str, Any]) -> str:
    low = f"{meta['min']} <= " if "min" in meta else f"{meta['gt']} < " if "gt" in meta else ""
    high = f" <= {meta['max']}" if "max" in meta else f" < {meta['lt']}" if "lt" in meta else ""
    if low and not high:
        return "value >= " + str(meta["min"]) if "min" in meta else "value > " + str(meta["gt"])
    return f"{low}value{high}"


def _constraint_problem(value: Any, meta: Mapping[str, Any]) -> str | None:
    """The first constraint of ``meta`` that ``value`` (already well typed) breaks."""
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        return f"{describe(value)} is not one of {allowed}"
    if isinstance(value, (int, float)) and not (
        ("min" not in meta or value >= meta["min"])
        and ("max" not in meta or value <= meta["max"])
        and ("gt" not in meta or value > meta["gt"])
        and ("lt" not in meta or value < meta["lt"])
    ):
        return f"{describe(value)} is out of range; {_bounds(meta)} must hold"
    if "check" in meta:
        return meta["check"](value)
    return None


def join_path(prefix: str, key: str) -> str:
    """``stages[1]`` + ``width`` -> ``stages[1].width``; an index key (``[2]``) joins as is."""
    if not prefix:
        return key
    if not key:
        return prefix
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


# ---------------------------------------------------------------------------------------------
# the walk


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of a dataclass."""
    return typing.get_type_hints(cls)


def unknown_key_problems(cls: type, data: Mapping[str, Any], path: str) -> list[Problem]:
    """One problem per key of ``data`` that is not a field of ``cls``, listing the fields."""
    names = [f.name for f in dataclasses.fields(cls)]
    return [
        (join_path(path, _key_text(key)), f"unknown key; allowed keys: {', '.join(names)}")
        for key in data
        if key not in names
    ]


def _key_text(key: Any) -> str:
    """An unknown key as its key path shows it, cut as :func:`describe` cuts a value."""
    text = key if isinstance(key, str) else describe(key)
    return text if len(text) <= DESCRIBE_LIMIT else describe(text)


# Set while the engine builds configs, so that their __post_init__ does not check them again.
_BUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("config_building", default=False)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


class _Walk:
    """One pass over plain data or built configs, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> Any:
        if (path, message) not in self.problems:
            self.problems.append((path, message))
        return INVALID

    def value(self, value: Any, tp: Any, meta: Mapping[str, Any], path: str) -> Any:
        """``value`` as a field of type ``tp`` holds it, or INVALID (with its problems noted)."""
        if dataclasses.is_dataclass(tp):
            if isinstance(value, tp):
                data = {f.name: getattr(value, f.name) for f in dataclasses.fields(tp)}
                return self.config(tp, data, path, value)
            if isinstance(value, Mapping):
                for problem in unknown_key_problems(tp, value, path):
                    self.fail(*problem)
                return self.config(tp, value, path, None)
            return self.fail(path, f"expected a mapping, got {describe(value)}")
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Literal:
            if any(value == a and type(value) is type(a) for a in args):
                return value
            return self.fail(path, f"{describe(value)} is not one of {describe_type(tp)}")
        if origin in (Union, types.UnionType):
            return self.union(value, args, meta, path)
        if origin is tuple:
            return self.items(value, args, meta, path)
        checked = _scalar(value, tp)
        if isinstance(checked, _Refused):
            return self.fail(path, checked.message)
        problem = None if checked is None else _constraint_problem(checked, meta)
        return self.fail(path, problem) if problem else checked

    def union(self, value: Any, options: tuple, meta: Mapping[str, Any], path: str) -> Any:
        for option in options:
            probe = _Walk()
            probe.value(value, option, {}, "")
            if not probe.problems:  # the first option of the right type; then its constraints
                return self.value(value, option, meta, path)
        others = [o for o in options if o is not type(None)]
        if value is not None and len(others) == 1:  # an optional value: say what is wrong
            return self.value(value, others[0], meta, path)
        allowed = " or ".join(describe_type(o) for o in options)
        return self.fail(path, f"{describe(value)} is not {allowed}")

    def items(self, value: Any, args: tuple, meta: Mapping[str, Any], path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            return self.fail(path, f"expected a list, got {describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif len(value) != len(args):
            return self.fail(path, f"expected {len(args)} items, got {len(value)}")
        else:
            item_types = list(args)
        items = tuple(
            self.value(v, t, meta, f"{path}[{i}]")
            for i, (v, t) in enumerate(zip(value, item_types, strict=True))
        )
        if isinstance(value, tuple) and all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items

    def config(self, cls: type, data: Mapping[str, Any], path: str, original: Any | None) -> Any:
        """A config dataclass from its field values: built, or a Partial when some are broken."""
        values, ok = self.fields(cls, data, path)
        if not ok:
            view: Any = Partial(cls, values)
        elif original is not None and all(values[k] is getattr(original, k) for k in values):
            view = original
        else:
            view = _build(cls, values)
        self.rules(cls, view, path)
        return view

    def fields(self, cls: type, data: Mapping[str, Any], path: str) -> tuple[dict[str, Any], bool]:
        hints = field_types(cls)
        before = len(self.problems)
        values = {}
        for f in dataclasses.fields(cls):
            key = join_path(path, f.name)
            if f.name in data:
                values[f.name] = self.value(data[f.name], hints[f.name], f.metadata, key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[f.name] = self.fail(key, "missing; this key is required")
            else:
                values[f.name] = _default(f)
        ok = len(self.problems) == before and known(*values.values())
        return values, ok

    def rules(self, cls: type, values: Any, path: str) -> None:
        check: Callable[[Any], list[Problem]] | None = getattr(cls, "cross_field_problems", None)
        if check is not None:
            for key, message in check(values):
                self.fail(join_path(path, key), message)


class _Refused:
    def __init__(self, message: str) -> None:
        self.message = message


def _scalar(value: Any, tp: Any) -> Any:
    """``value`` as a plain ``tp`` (numpy numbers become Python ones), or a _Refused."""
    if tp is type(None):
        return (
            None if value is None else _Refused(f"expected nothing (null), got {describe(value)}")
        )
    if tp is bool:
        return (
            value
            if isinstance(value, bool)
            else _Refused(f"expected true or false, got {describe(value)}")
        )
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value if type(value) is int else int(value)
        return _Refused(f"expected an integer, got {describe(value)}")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = value if type(value) is float else float(value)
            if math.isfinite(number):
                return number
            return _Refused(f"expected a finite number, got {describe(value)}")
        return _Refused(f"expected a number, got {describe(value)}")
    if tp is str:
        return (
            value
            if isinstance(value, str)
            else _Refused(f"expected a string, got {describe(value)}")
        )
    raise TypeError(f"unsupported config field type {describe_type(tp)}")


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    token = _BUILDING.set(True)
    try:
        return cls(**values)
    finally:
        _BUILDING.reset(token)


# ---------------------------------------------------------------------------------------------
# entry points


def parse(
    cls: type,
    data: Any,
    *,
    source: str | None = None,
    what: str,
    error: type[ConfigError] = ConfigError,
) -> Any:
    """Build the config dataclass ``cls`` from plain data, or raise ``error`` with every problem.

    Missing keys take their defaults; unknown keys, wrong types, broken constraints and broken
    cross-field rules are all reported at once. ``source`` (a file) and ``what`` (``"JetSeg
    config"``, ``"study"``) name the config in the message.
    """
    if not isinstance(data, Mapping):
        raise error([("", "expected a mapping at the top level")], source, what)
    walk = _Walk()
    result = walk.value(data, cls, {}, "")
    if walk.problems:
        raise error(walk.problems, source, what)
    return result


def validate(obj: Any, *, what: str, error: type[ConfigError] = ConfigError) -> None:
    """Check a config built in Python (call it from ``__post_init__``) and normalise it.

    Raises ``error`` listing every problem of the whole tree below ``obj``. A config that
    :func:`parse` is building is not checked again.
    """
    if _BUILDING.get():
        return
    cls = type(obj)
    walk = _Walk()
    data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}
    values, ok = walk.fields(cls, data, "")
    if ok:
        for name, value in values.items():
            if value is not data[name]:
                object.__setattr__(obj, name, value)  # frozen: the one place it is normalised
    walk.rules(cls, obj if ok else Partial(cls, values), "")
    if walk.problems:
        raise error(walk.problems, None, what)


def value_problems(value: Any, tp: Any, meta: Mapping[str, Any] | None = None) -> list[Problem]:
    """Why ``value`` cannot be held by a field of type ``tp`` with constraints ``meta``.

    Paths are relative to the field (``""`` for the value itself, ``"[1]"`` for an item).
    """
    walk = _Walk()
    walk.value(value, tp, meta or {}, "")
    return walk.problems
