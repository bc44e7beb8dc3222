"""A study's latency budget and what ``--trials`` counts: read from the study's storage.

The budget is fixed once, when the study starts (:func:`resolve_budget`): ``budget_ms``, or a
preset's latency under the study's own providers times ``budget_factor``; every process, any
backend and a resumed study read the stored value (:func:`running_budget`). ``--trials N``
counts trained networks (:class:`TrialCount`): a network over the budget is rejected before
training (:func:`is_rejected`), kept in the storage for the sampler, and not counted. This
module imports no torch, so the command line can read it for ``--help``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from jetsearch.spec import (
    BUDGET_ATTR,
    BUDGET_RULE_ATTR,
    BUDGET_SOURCE_ATTR,
    StudyBudget,
    StudyError,
    StudySpec,
    absolute_budget_source,
    study_budget,
)

# Candidates rejected for latency in a row after which a study stops (--max-rejected).
DEFAULT_MAX_REJECTED = 200


def is_rejected(trial) -> bool:
    """Whether a finished trial was rejected before training for its latency.

    A network over the budget is never trained, so a PRUNED trial marked infeasible is one
    (trials written by earlier versions, pruned "over the latency budget before training",
    included).
    """
    return trial.state.name == "PRUNED" and trial.user_attrs.get("feasible") is False


@dataclass(frozen=True)
class TrialCount:
    """What ``--trials N`` counts in a rung-0 study: the one place that decides.

    ``counted``: finished trials other than those rejected before training (trained networks,
    networks pruned by the pruner during training, duplicates of a trained network).
    ``rejected``: trials rejected before training because their latency was over the budget
    (:func:`jetsearch.objective.is_rejected`); they stay in the storage, PRUNED, so the sampler
    learns from them, but do not count. ``rejected_in_a_row``: of the networks whose latency is
    known, in trial order, how many of the latest were over the budget (what
    ``--max-rejected`` caps). Read from the storage, so every process of a study, any backend,
    and a resumed study count alike.
    """

    counted: int
    rejected: int
    rejected_in_a_row: int

    @classmethod
    def of(cls, study: Any) -> TrialCount:
        counted = rejected = in_a_row = 0
        for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if is_rejected(trial):
                rejected += 1
            elif trial.state.name in ("COMPLETE", "PRUNED"):
                counted += 1
            feasible = trial.user_attrs.get("feasible")
            if feasible is False:
                in_a_row += 1
            elif feasible is True:
                in_a_row = 0
        return cls(counted, rejected, in_a_row)

    def reached(self, total: int, max_rejected: int, budget_ms: float | None) -> bool:
        """Whether the study holds ``total`` counted trials; :class:`StudyError` when the last
        ``max_rejected`` networks in a row were over the budget (a space with nothing, or
        almost nothing, under it would otherwise draw forever)."""
        if self.counted >= total:
            return True
        if self.rejected_in_a_row >= max_rejected:
            budget = "?" if budget_ms is None else f"{budget_ms:.2f}"
            raise StudyError(
                f"study stopped: the last {self.rejected_in_a_row} networks drawn in a row were "
                f"over the latency budget ({budget} ms) and rejected before training "
                f"({self.counted} of {total} trials trained); the space holds few or no "
                "networks under the budget: loosen it (latency.budget_ms or "
                "latency.budget_factor), search a faster space, or raise --max-rejected "
                f"(now {max_rejected})"
            )
        return False


def preset_latency(spec: StudySpec, latency: Any, preset: Any) -> Any:
    """The LatencyResult of ``preset`` (a built-in name, or anything load_config takes) under
    ``latency`` (the study's chain), at the study's input size: what a trial of that network
    would measure."""
    from jetseg.config import load_config
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    config = load_config(preset)
    h, w = spec.latency.input_size
    onnx_bytes = export_onnx(build_model(config), input_size=(h, w))
    result, _ = latency.measure(onnx_bytes, config)
    return result


def _relative_source(preset: str, factor: float, budget_ms: float, result: Any) -> str:
    """``nano preset x1.0: 23.98 ms (estimated, agx-xavier profile)``: the budget in words."""
    from jetsearch.objective import latency_attrs

    fingerprint = result.fingerprint or {}
    where = (
        f"{fingerprint['profile']} profile"
        if fingerprint.get("profile")
        else latency_attrs(result)["device"]
    )
    details = [result.provenance.value, *([where] if where else [])]
    details += [f for f in result.flags if f not in ("from-cache", "estimate")]
    if factor != 1.0:
        details.insert(0, f"the preset {result.median_ms:.2f} ms")
    return f"{preset} preset x{factor}: {budget_ms:.2f} ms ({', '.join(details)})"


def _rule_text(rule: dict[str, Any]) -> str:
    if "relative_to" in rule:
        return f"budget_relative_to: {rule['relative_to']}, budget_factor: {rule['factor']}"
    return f"budget_ms: {rule.get('budget_ms')}"


def resolve_budget(study: Any, spec: StudySpec, latency: Any) -> StudyBudget:
    """The study's latency budget: the one stored in ``study`` (rung 0), else resolved now from
    ``spec`` and stored.

    A budget relative to a preset is the preset's latency under ``latency`` (the study's own
    providers, input size and precision) times the factor. Once stored, it is the study's for
    good: a resumed study, another process or a Ray worker reads it and nothing measures it
    again, so the budget cannot drift between starts; a study file that now states another
    budget only gets a warning (a new budget needs a new study, ``--name``).
    """
    stored = study_budget(study) if BUDGET_ATTR in study.user_attrs else None
    rule = spec.latency.budget_rule()
    if stored is not None:
        if stored.rule != rule:
            warnings.warn(
                f"study {study.study_name} keeps the latency budget it started with, "
                f"{stored.describe()}; the study file now states {_rule_text(rule)} (a new "
                "budget needs a new study: --name)",
                stacklevel=2,
            )
        return stored
    preset = spec.latency.budget_relative_to
    if preset is None:
        budget_ms, source = spec.latency.budget_ms, absolute_budget_source(spec.latency.budget_ms)
    else:
        result = preset_latency(spec, latency, preset)
        budget_ms = result.median_ms * spec.latency.budget_factor
        source = _relative_source(preset, spec.latency.budget_factor, budget_ms, result)
    study.set_user_attr(BUDGET_RULE_ATTR, rule)
    study.set_user_attr(BUDGET_SOURCE_ATTR, source)
    study.set_user_attr(BUDGET_ATTR, budget_ms)  # last: its presence says the rest is there
    # Read back: of two processes that started the study at once, the last write holds.
    resolved = study_budget(study)
    assert resolved is not None
    return resolved


def running_budget(study: Any, spec: StudySpec) -> float | None:
    """The budget a trial process runs under: the one stored in the study (rung 0)."""
    attrs = study.user_attrs
    if BUDGET_ATTR in attrs:
        return attrs[BUDGET_ATTR]
    if spec.latency.budget_relative_to is not None:
        raise StudyError(
            f"study {study.study_name} has no resolved latency budget yet (it is relative to "
            f"the {spec.latency.budget_relative_to} preset); start it with jetsearch study, "
            "run_study or prepare_study, which resolve and store it"
        )
    return spec.latency.budget_ms


def over_budget(latency_ms: float, budget_ms: float) -> str:
    """``over budget (9.704 ms > 9.700 ms)``: with the digits it takes for the two to differ."""
    digits = 2
    while f"{latency_ms:.{digits}f}" == f"{budget_ms:.{digits}f}" and digits < 6:
        digits += 1
    return f"over budget ({latency_ms:.{digits}f} ms > {budget_ms:.{digits}f} ms)"
