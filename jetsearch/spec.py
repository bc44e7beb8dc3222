"""The study YAML as frozen dataclasses: :class:`StudySpec` and its parts, validated in one pass.

A study file names the target, the space, the data, how each trial is trained (``train:`` and
the multi-fidelity ``rungs:``), the objectives, the latency settings and the storage. The
Optuna storage it runs in is :mod:`jetsearch.storage`; the run loop is :mod:`jetsearch.run`.

Study files (``studies/*.yaml``) look like::

    name: local
    target: local                 # device the latency is for (a device profile name)
    space: tiny                   # a built-in space name or a YAML path
    data: null                    # a CamVid root, or null for the built-in synthetic scenes
    mode: pareto                  # pareto (mIoU vs latency) or budget (mIoU under a budget)
    train: {epochs: 2, size: [96, 128], loss: jetloss, batch_size: 8}   # TrainConfig fields
    latency: {input_size: [360, 480], budget_ms: 40, providers: [local]}
    # or a budget relative to a preset, resolved once when the study starts:
    # latency: {budget_relative_to: nano, budget_factor: 1.0, providers: [estimate]}
    rungs:                        # multi-fidelity (either mode): each rung overrides train:
      - {epochs: 2, size: [96, 128], train_images: 128}
      - {epochs: 4, size: [128, 160]}
    eta: 3                        # promote the best third of each rung (jetsearch.rungs)

With ``train: {holdout: [0001TP]}`` the trials never train on that CamVid sequence and store its
mIoU beside val's (``heldout_miou``); ``objective: heldout`` makes it the trial's score.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jetsearch.latency.chain import MeasurementSettings, ProviderKind
from jetseg import list_presets
from jetseg.config import (
    ConfigError,
    read_yaml_mapping,
    resolve_named_file,
    yaml_names,
)
from jetseg.train_config import TrainConfig
from jetseg.validation import Problem, known, parse, validate

STUDIES_DIR_ENV = "JETSEARCH_STUDIES_DIR"
OBJECTIVE_NAMES = {"pareto": ["val_miou", "latency_ms"], "budget": ["val_miou"]}
SCORE_NAMES = {"val": "val_miou", "heldout": "heldout_miou"}


class StudyError(RuntimeError):
    """A study that cannot run as asked (bad storage, no latency provider, ...)."""


# TrainConfig fields that a trial sets itself, so a study's train: block cannot: the seed (the
# study's seed plus the trial number) and what only a run directory has (a trial writes none).
TRIAL_SET_FIELDS = ("seed", "overlays", "export_onnx", "progress")
# Every trial trains at one size, so that trials compare: a study cannot leave it out.
SIZE_RULE = {"min": 16, "max": 8192}
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _rule(name: str) -> Any:
    """TrainConfig's constraints on its field ``name``: a study checks a key as training does."""
    return _TRAIN_FIELDS[name].metadata


@dataclass(frozen=True)
class TrialBudget:
    """How each trial is trained: a study's ``train:`` block.

    Its keys are :class:`jetseg.train_config.TrainConfig`'s fields, with TrainConfig's rules
    and defaults, less the fields a trial sets itself (:data:`TRIAL_SET_FIELDS`). A study's own
    defaults: 3 epochs and ``size`` 360x480, which a trial cannot leave out. Keys of the study
    only: ``train_images`` / ``val_images`` (the first N frames of each split) and ``threads``
    (torch threads of each trial process). ``train_config(seed)`` is one trial's TrainConfig.
    """

    epochs: int = field(default=3, metadata=_rule("epochs"))  # short, comparable runs
    time_budget_s: float | None = field(default=None, metadata=_rule("time_budget_s"))
    batch_size: int = field(default=8, metadata=_rule("batch_size"))
    lr: float | None = field(default=None, metadata=_rule("lr"))
    weight_decay: float = field(default=1e-4, metadata=_rule("weight_decay"))
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = field(default=0.9, metadata=_rule("momentum"))
    schedule: Literal["poly", "cosine"] = "poly"
    warmup_epochs: float = field(default=1.0, metadata=_rule("warmup_epochs"))
    loss: str = field(default="jetloss", metadata=_rule("loss"))
    ce_weight: float = field(default=1.0, metadata=_rule("ce_weight"))
    cui_beta: float = field(default=0.999, metadata=_rule("cui_beta"))
    size: tuple[int, int] = field(default=(360, 480), metadata=SIZE_RULE)
    random_scale: tuple[float, float] | None = field(default=None, metadata=_rule("random_scale"))
    crop: tuple[int, int] | None = field(default=None, metadata=_rule("crop"))
    flip: bool = False
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = False
    device: str = field(default="auto", metadata=_rule("device"))
    num_workers: int = field(default=0, metadata=_rule("num_workers"))
    eval_every: int = field(default=1, metadata=_rule("eval_every"))
    max_train_images: int | None = field(default=None, metadata=_rule("max_train_images"))
    max_val_images: int | None = field(default=None, metadata=_rule("max_val_images"))
    holdout: tuple[str, ...] = ()
    train_images: int | None = None
    val_images: int | None = None
    threads: int | None = None

    cross_field_problems = staticmethod(TrainConfig.cross_field_problems)

    def train_config(self, seed: int) -> TrainConfig:
        """The TrainConfig of one trial: this block's TrainConfig fields, and what a trial sets."""
        shared = {
            name: getattr(self, name) for name in _TRAIN_FIELDS if name not in TRIAL_SET_FIELDS
        }
        return TrainConfig(**shared, seed=seed, overlays=0, export_onnx=False, progress=False)


@dataclass(frozen=True)
class Rung:
    """One rung of a multi-fidelity study: the ``train:`` fields it changes.

    Every key is a ``train:`` key (:class:`TrialBudget`, with its rules); a key left out (None)
    keeps the ``train:`` value. Rung 0 is what every trial trains with; see
    :mod:`jetsearch.rungs`.
    """

    epochs: int | None = field(default=None, metadata=_rule("epochs"))
    time_budget_s: float | None = field(default=None, metadata=_rule("time_budget_s"))
    batch_size: int | None = field(default=None, metadata=_rule("batch_size"))
    lr: float | None = field(default=None, metadata=_rule("lr"))
    weight_decay: float | None = field(default=None, metadata=_rule("weight_decay"))
    optimizer: Literal["adamw", "sgd"] | None = None
    momentum: float | None = field(default=None, metadata=_rule("momentum"))
    schedule: Literal["poly", "cosine"] | None = None
    warmup_epochs: float | None = field(default=None, metadata=_rule("warmup_epochs"))
    loss: str | None = field(default=None, metadata=_rule("loss"))
    ce_weight: float | None = field(default=None, metadata=_rule("ce_weight"))
    cui_beta: float | None = field(default=None, metadata=_rule("cui_beta"))
    size: tuple[int, int] | None = field(default=None, metadata=SIZE_RULE)
    random_scale: tuple[float, float] | None = field(default=None, metadata=_rule("random_scale"))
    crop: tuple[int, int] | None = field(default=None, metadata=_rule("crop"))
    flip: bool | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    deterministic: bool | None = None
    device: str | None = field(default=None, metadata=_rule("device"))
    num_workers: int | None = field(default=None, metadata=_rule("num_workers"))
    eval_every: int | None = field(default=None, metadata=_rule("eval_every"))
    max_train_images: int | None = field(default=None, metadata=_rule("max_train_images"))
    max_val_images: int | None = field(default=None, metadata=_rule("max_val_images"))
    holdout: tuple[str, ...] | None = None
    train_images: int | None = None
    val_images: int | None = None
    threads: int | None = None

    def overrides(self) -> dict[str, Any]:
        """The ``train:`` keys this rung sets, with their values."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class SyntheticData:
    """Size of the built-in synthetic dataset when the study has no ``data`` path."""

    train_images: int = field(default=64, metadata={"min": 1, "max": 100000})
    val_images: int = field(default=16, metadata={"min": 1, "max": 100000})


@dataclass(frozen=True)
class LatencySpec(MeasurementSettings):
    """A study's ``latency:`` section: where latency comes from and what budget it must meet.

    How latency is measured (workers, precision, runs, cache, ...) is
    :class:`jetsearch.latency.chain.MeasurementSettings`, declared there once for the study and
    ``jetsearch latency`` alike; a study always names a precision (fp16 unless it says) and
    caches its measurements in ``jetsearch-latency.sqlite`` unless it names another file (or
    ``null``).

    The budget is one of ``budget_ms`` (milliseconds) or ``budget_relative_to`` (a preset
    name) times ``budget_factor``: the preset's latency as the study's own providers give it,
    at its input size and precision, resolved once when the study starts and stored in the
    study (:class:`StudyBudget`). An estimate's absolute error then cancels: "no slower than
    the nano preset" means the same on the estimate and on the board.
    """

    input_size: tuple[int, int] = field(default=(360, 480), metadata={"min": 16, "max": 8192})
    budget_ms: float | None = field(default=None, metadata={"gt": 0})
    budget_relative_to: str | None = None
    budget_factor: float = field(default=1.0, metadata={"gt": 0})
    providers: tuple[ProviderKind, ...] = ("workers", "estimate")
    precision: Literal["fp32", "fp16"] = "fp16"
    cache: str | None = "jetsearch-latency.sqlite"

    @staticmethod
    def cross_field_problems(values: Any) -> list[Problem]:
        """At least one provider (each is a Literal, so checked per key); one budget at most,
        relative to a known preset; a factor only with a relative budget."""
        problems: list[Problem] = []
        if known(values.providers) and not values.providers:
            problems.append(("providers", "name at least one latency provider"))
        absolute, relative = values.budget_ms, values.budget_relative_to
        if known(absolute, relative) and absolute is not None and relative is not None:
            problems.append(
                (
                    "budget_relative_to",
                    "give one of budget_ms and budget_relative_to, not both; got "
                    f"budget_ms={absolute}, budget_relative_to={relative!r}",
                )
            )
        if known(relative) and relative is not None and relative not in list_presets():
            problems.append(
                (
                    "budget_relative_to",
                    f"{relative!r} is not a preset; known presets: {', '.join(list_presets())}",
                )
            )
        factor = values.budget_factor
        if known(factor, relative) and relative is None and factor != 1.0:
            problems.append(
                (
                    "budget_factor",
                    f"budget_factor scales budget_relative_to, which is not set; got "
                    f"budget_factor={factor} (set budget_relative_to: PRESET, or remove it)",
                )
            )
        return problems

    @property
    def has_budget(self) -> bool:
        """Whether the study has a latency budget (absolute or relative to a preset)."""
        return self.budget_ms is not None or self.budget_relative_to is not None

    def budget_rule(self) -> dict[str, Any]:
        """The budget as the study file states it, as plain data (stored with the study)."""
        if self.budget_relative_to is not None:
            return {"relative_to": self.budget_relative_to, "factor": self.budget_factor}
        return {"budget_ms": self.budget_ms}


@dataclass(frozen=True)
class StudySpec:
    """A whole study: target, space, data, per-trial budget, objectives, latency, storage.

    Checked on construction like every config (:func:`jetseg.validation.validate`): a spec
    changed with ``dataclasses.replace`` is checked again.
    """

    name: str
    target: str
    space: str = "jetseg"
    data: str | None = None
    synthetic: SyntheticData = SyntheticData()
    mode: Literal["pareto", "budget"] = "pareto"
    train: TrialBudget = TrialBudget()
    latency: LatencySpec = LatencySpec()
    storage: str | None = None
    seed: int = 0
    enqueue_presets: tuple[str, ...] = ("nano", "agx", "workstation")
    pruner: Literal["median", "none"] = "median"
    sampler: Literal["tpe", "random"] = "tpe"
    description: str = ""
    rungs: tuple[Rung, ...] = ()
    eta: int = field(default=3, metadata={"min": 2})
    objective: Literal["val", "heldout"] = "val"
    artifact_store: str | None = None

    def __post_init__(self) -> None:
        validate(self, what="study")

    @staticmethod
    def cross_field_problems(values: Any) -> list[Problem]:
        """Budget needs a budget; rungs need valid recipes; heldout a holdout."""
        problems: list[Problem] = []
        absolute, relative = values.latency.budget_ms, values.latency.budget_relative_to
        if values.mode == "budget" and known(absolute, relative) and absolute is relative is None:
            problems.append(
                (
                    "latency.budget_ms",
                    "budget mode needs a latency budget: set latency.budget_ms (ms) or "
                    "latency.budget_relative_to (a preset)",
                )
            )
        if known(values.train, values.rungs):
            for index in range(len(values.rungs)):
                try:
                    _rung_budget(values.train, values.rungs, index).train_config(seed=0)
                except ConfigError as err:
                    problems += [(f"rungs[{index}].{key}", msg) for key, msg in err.problems]
        if values.objective == "heldout" and known(values.train) and not values.train.holdout:
            problems.append(
                (
                    "objective",
                    "heldout scores trials on held-out sequences: set train.holdout "
                    "(e.g. [0001TP])",
                )
            )
        return problems

    @property
    def objective_names(self) -> list[str]:
        names = list(OBJECTIVE_NAMES[self.mode])
        names[0] = SCORE_NAMES[self.objective]
        return names

    @property
    def rung_count(self) -> int:
        """1 for a study without rungs."""
        return max(1, len(self.rungs))

    def rung_budget(self, rung: int) -> TrialBudget:
        """The ``train:`` block of ``rung`` (the block itself for a study without rungs)."""
        return _rung_budget(self.train, self.rungs, rung)


def _rung_budget(train: TrialBudget, rungs: Sequence[Rung], rung: int) -> TrialBudget:
    if not rungs:
        if rung != 0:
            raise IndexError(f"a study without rungs has rung 0 only, not {rung}")
        return train
    return dataclasses.replace(train, **rungs[rung].overrides())


def spec_from_dict(data: dict[str, Any], source: str | None = None) -> StudySpec:
    """A StudySpec from plain data (a study's stored ``spec`` attribute, a parsed YAML)."""
    return parse(StudySpec, data, source=source, what="study")


def studies_dir() -> Path:
    """Where the built-in study files live (a checkout, an editable or a wheel install)."""
    env = os.environ.get(STUDIES_DIR_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1] / "studies"
    if repo.is_dir():
        return repo
    from importlib.resources import files

    return Path(str(files("jetsearch") / "builtin" / "studies"))


def study_names() -> list[str]:
    """Names of the built-in studies."""
    return yaml_names(studies_dir())


def merge_mappings(base: dict, changes: dict) -> dict:
    """A copy of a study's YAML mapping ``base`` with ``changes`` merged in, key by key.

    Nested mappings are merged recursively; any other value in ``changes`` replaces the one in
    ``base``. Used to derive a study file from a built-in one.
    """
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_study_spec(name_or_path: str | Path, **overrides: Any) -> StudySpec:
    """A StudySpec from a built-in name (``agx``, ``local``, ...) or a YAML path.

    Names resolve as presets and spaces do (:func:`jetseg.config.resolve_named_file`).
    ``overrides`` replace top-level keys (``data``, ``storage``, ``mode``) or, for ``workers``,
    the latency worker list. Every problem of the file, per key and across keys, comes in one
    :class:`~jetseg.config.ConfigError`.
    """
    path = resolve_named_file(name_or_path, studies_dir(), "study", "study")
    data = read_yaml_mapping(path, functools.partial(ConfigError, what="study"))
    data = {"name": path.stem, **data}
    workers = overrides.pop("workers", None)
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    data = _on_synthetic_scenes(data, str(path))
    if workers:
        data.setdefault("latency", {})
        data["latency"] = {**data["latency"], "workers": list(workers)}
        if "workers" not in data["latency"].get("providers", ["workers"]):
            data["latency"]["providers"] = ["workers", *data["latency"].get("providers", [])]
    return parse(StudySpec, data, source=str(path), what="study")


def _on_synthetic_scenes(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A study file's ``synthetic:`` section may also hold ``train:`` keys and ``rungs:`` for
    the built-in synthetic scenes: they apply when the study has no ``data`` (the scenes are
    what it trains on) and are dropped when it trains on CamVid. Rungs chosen by the proxy
    scoreboard on CamVid learn little on the small synthetic set in a quick start's minute,
    while a high learning rate on small frames does."""
    synthetic = data.get("synthetic")
    if not isinstance(synthetic, dict) or not ({"train", "rungs"} & set(synthetic)):
        return data
    synthetic = dict(synthetic)
    train_keys, rungs = synthetic.pop("train", None), synthetic.pop("rungs", None)
    data = {**data, "synthetic": synthetic}
    if data.get("data") is not None:
        return data
    if train_keys is not None:
        if not isinstance(train_keys, dict) or not isinstance(data.get("train", {}), dict):
            problem = f"must be a mapping of train: keys, got {train_keys!r}"
            raise ConfigError([("synthetic.train", problem)], source, what="study")
        data["train"] = {**data.get("train", {}), **train_keys}
    if rungs is not None:
        data["rungs"] = rungs
    return data


def stored_spec(study: Any) -> StudySpec | None:
    """The StudySpec a study was created with (its ``spec`` attribute), or None without one."""
    data = study.user_attrs.get("spec")
    return spec_from_dict(data) if isinstance(data, dict) else None


# The study attributes that hold its latency budget, resolved once when it started.
BUDGET_ATTR, BUDGET_SOURCE_ATTR, BUDGET_RULE_ATTR = "budget_ms", "budget_source", "budget_rule"


@dataclass(frozen=True)
class StudyBudget:
    """The latency budget a study runs under, fixed when it started: ``budget_ms`` (None: no
    budget, every network is feasible) and ``source``, how it was set, in words (e.g. ``nano
    preset x1.0: 23.98 ms (estimated, agx-xavier profile)``). ``rule`` is the study file's
    statement it came from (:meth:`LatencySpec.budget_rule`)."""

    budget_ms: float | None
    source: str
    rule: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for a person: the budget and where it comes from."""
        if self.budget_ms is None:
            return "none (every network is feasible)"
        return self.source


def study_budget(study: Any) -> StudyBudget | None:
    """The latency budget stored in ``study`` (rung 0) when it started, or None if none is.

    A study from before budgets were stored has its stored spec's ``latency.budget_ms``; one
    stated relative to a preset but never started has none yet
    (:func:`jetsearch.budget.resolve_budget` resolves and stores it).
    """
    attrs = study.user_attrs
    if BUDGET_ATTR in attrs:
        return StudyBudget(
            attrs[BUDGET_ATTR], attrs.get(BUDGET_SOURCE_ATTR, ""), attrs.get(BUDGET_RULE_ATTR, {})
        )
    latency = (attrs.get("spec") or {}).get("latency") or {}
    if latency.get("budget_relative_to") is not None:
        return None
    budget = latency.get("budget_ms")
    return StudyBudget(budget, absolute_budget_source(budget), {"budget_ms": budget})


def absolute_budget_source(budget_ms: float | None) -> str:
    """How an absolute budget (or none) is described."""
    if budget_ms is None:
        return "no latency budget"
    return f"{budget_ms:g} ms (latency.budget_ms of the study file)"
