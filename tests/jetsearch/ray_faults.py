"""Failures injected into Ray-run trials: an objective wrapper the tests hand to ``run_study_ray``.

``run_study_ray(spec, ..., objective_wrapper=InjectFaults({1: "raise", 2: "exit"}))``:

* ``raise``: Optuna trial N raises :class:`InjectedFault` inside its Ray worker;
* ``exit``: the worker process of trial N exits on the trial's first attempt, as on a node that
  dies (the attempt is the ``ray_attempt`` the worker stores before running the objective);
* ``exit-always``: it exits on every attempt.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

FAULT_KINDS = ("raise", "exit", "exit-always")

with contextlib.suppress(ImportError):
    from ray import cloudpickle

    # Ray's workers cannot import this module (tests/ is not on their path): send its classes
    # by value inside the pickled wrapper instead of by name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


class InjectedFault(RuntimeError):
    """The failure a ``raise`` fault asked for."""


class FaultyObjective:
    """The study's Objective, failing as ``faults`` says for the trials they name."""

    def __init__(self, objective: Callable[[Any], Any], faults: dict[int, str]) -> None:
        self.objective = objective
        self.faults = faults

    def __call__(self, trial: Any) -> Any:
        fault = self.faults.get(trial.number)
        first_attempt = trial.user_attrs.get("ray_attempt", 1) == 1
        if fault == "exit-always" or (fault == "exit" and first_attempt):
            os._exit(3)  # the process vanishes mid-trial, with no chance to report
        if fault == "raise":
            raise InjectedFault(f"trial {trial.number} was asked to fail")
        return self.objective(trial)


class InjectFaults:
    """``objective_wrapper`` for ``run_study_ray``: ``{trial number: fault kind}``."""

    def __init__(self, faults: Mapping[int, str]) -> None:
        for number, kind in faults.items():
            if kind not in FAULT_KINDS or not isinstance(number, int) or number < 0:
                raise ValueError(
                    f"fault {number!r}: {kind!r} must be a trial number >= 0 and one of "
                    f"{', '.join(FAULT_KINDS)}"
                )
        self.faults = dict(faults)

    def __call__(self, objective: Callable[[Any], Any]) -> FaultyObjective:
        return FaultyObjective(objective, self.faults)
