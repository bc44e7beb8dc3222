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
import math
import os
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetsearch.space_parse import (
    CONDITIONS,
    Branches,
    Dilations,
    Dimension,
    Fixed,
    Knob,
    Node,
    Parser,
    check_rules,
    freeze,
    join,
    same,
    show,
)
from jetseg.config import (
    ConfigError,
    JetSegConfig,
    StageConfig,
    arch_hash,
    config_to_dict,
    load_config,
    read_yaml_mapping,
    resolve_named_file,
    yaml_names,
)
from jetseg.validation import Problem, field_types

if TYPE_CHECKING:
    import optuna

SPACE_DIR_ENV = "JETSEARCH_SPACE_DIR"


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
# the space


class SearchSpace:
    """A loaded, checked search space; every sample is a valid :class:`JetSegConfig`.

    ``sample(trial)`` is define-by-run: it calls ``trial.suggest_*`` with dot-separated key
    paths as parameter names, and only for knobs that apply to this trial (branch 3's kernel only
    with 3 branches, per-block dilations only for existing blocks, ``attention_reduction`` only
    with cbam, the stem's JetConv only for a JetConv stem). ``params_for(config)`` is the inverse
    that ``study.enqueue_trial`` needs.
    """

    def __init__(self, root: Node, name: str, source: str | None = None) -> None:
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


def _applies(cls: type, field_name: str, values: Mapping[str, Any]) -> bool:
    condition = CONDITIONS.get((cls, field_name))
    return condition is None or same(values.get(condition[0]), condition[1])


def _sample_node(node: Node, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, spec in node.fields.items():
        if not _applies(node.cls, key, values):
            continue
        if isinstance(spec, (Fixed, Dimension)):
            values[key] = spec.draw(trial)
        elif isinstance(spec, Node):
            values[key] = _sample_node(spec, trial)
        elif isinstance(spec, tuple):
            values[key] = [_sample_node(stage, trial) for stage in spec]
        elif isinstance(spec, Branches):
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

    def node(self, node: Node, data: Mapping[str, Any], path: str) -> None:
        for key, spec in node.fields.items():
            if node.cls is JetSegConfig and key == "name":
                continue
            if not _applies(node.cls, key, data):
                continue
            where, value = join(path, key), data[key]
            if isinstance(spec, (Fixed, Dimension)):
                self.leaf(spec, value, where)
            elif isinstance(spec, Node):
                self.node(spec, value, where)
            elif isinstance(spec, tuple):
                if len(value) != len(spec):
                    self.problems.append(
                        (where, f"the config has {len(value)} stages, the space {len(spec)}")
                    )
                    continue
                for i, (stage, stage_data) in enumerate(zip(spec, value, strict=True)):
                    self.node(stage, stage_data, f"{where}[{i}]")
            elif isinstance(spec, Branches):
                if self.leaf(spec.count, len(value), f"{where} (count)"):
                    for i, branch in enumerate(value):
                        for k, knob in spec.per_branch[i].items():
                            self.leaf(knob, branch[k], f"{where}[{i}].{k}")
            else:
                self.dilations(spec, value, data["depth"], where)

    def leaf(self, knob: Knob, value: Any, path: str) -> bool:
        value = freeze(value)
        found = knob.contains(value)
        if not found and path.endswith("groups"):
            # Group counts have several spellings of one network: auto and what it resolves to.
            found, value = self.equivalent_groups(knob, path)
        if not found:
            self.problems.append((path, f"{show(value)} is outside the space ({knob.describe()})"))
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

    def dilations(self, spec: Dilations, value: list[int], depth: int, path: str) -> None:
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
            (path, f"{show(tuple(value))} is outside the space ({spec.whole.describe()})")
        )


def _walk_dimensions(node: Node, when: list[str]) -> list[tuple[Dimension, list[str]]]:
    """Every dimension below ``node`` with the conditions under which it is sampled."""
    found: list[tuple[Dimension, list[str]]] = []
    for key, spec in node.fields.items():
        condition = CONDITIONS.get((node.cls, key))
        here = when
        if condition is not None:
            controller = node.fields[condition[0]]
            if not any(same(v, condition[1]) for v in controller.values()):
                continue
            if isinstance(controller, Dimension):
                here = [*when, f"{controller.name} is {show(condition[1])}"]
        if isinstance(spec, (Fixed, Dimension)):
            found += _conditional(spec, here)
        elif isinstance(spec, Node):
            found += _walk_dimensions(spec, here)
        elif isinstance(spec, tuple):
            for stage in spec:
                found += _walk_dimensions(stage, here)
        elif isinstance(spec, Branches):
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


def _count_node(node: Node) -> float:
    """Distinct parameter combinations below ``node``, conditional knobs where they apply."""
    fields = node.fields
    total: float = 1
    done: set[str] = set()
    for (cls, dependent), (controller, required) in CONDITIONS.items():
        if cls is not node.cls:
            continue
        ways = 0.0
        for value in fields[controller].values():
            applies = same(value, required)
            ways += _count_spec(fields[dependent], fields) if applies else 1
        total *= ways
        done |= {controller, dependent}
    if node.cls is StageConfig:
        dilations: Dilations = fields["dilations"]
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
    if isinstance(spec, Node):
        return _count_node(spec)
    if isinstance(spec, tuple):
        return math.prod(_count_node(stage) for stage in spec)
    if isinstance(spec, Branches):
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
    parser = Parser()
    root = parser.node(JetSegConfig, data, "", "")
    assert root is not None  # data is a mapping
    problems = parser.problems + check_rules(root)
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
