"""Fitting tools of the calibration: Kendall's tau, fit quality, non-negative least squares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences (ties counted as tau-b).

    1 when both order the items identically, -1 when reversed; NaN when either is constant.
    """
    a = np.asarray(first, dtype=float)
    b = np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"kendall_tau needs two equally long 1-D sequences, got {a.shape}, {b.shape}"
        )
    if len(a) < 2:
        return math.nan
    # All pairs i < j at once: sign products say concordant (+) or discordant (-).
    upper = np.triu_indices(len(a), k=1)
    da = np.sign(a[:, None] - a[None, :])[upper]
    db = np.sign(b[:, None] - b[None, :])[upper]
    numerator = float(np.sum(da * db))
    denominator = math.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class FitQuality:
    """How well predictions match measurements: rank agreement and relative errors."""

    count: int
    kendall_tau: float
    within_10pct: float
    median_abs_error: float
    max_abs_error: float

    @classmethod
    def of(cls, predicted: Sequence[float], measured: Sequence[float]) -> FitQuality:
        predicted_array = np.asarray(predicted, dtype=float)
        measured_array = np.asarray(measured, dtype=float)
        if predicted_array.shape != measured_array.shape or not len(measured_array):
            raise ValueError(
                "fit quality needs equally many (and some) predictions and measurements"
            )
        errors = np.abs(predicted_array / measured_array - 1.0)
        return cls(
            count=int(len(measured_array)),
            kendall_tau=kendall_tau(predicted_array, measured_array),
            within_10pct=float(np.mean(errors <= 0.10)),
            median_abs_error=float(np.median(errors)),
            max_abs_error=float(np.max(errors)),
        )

    def describe(self) -> str:
        return (
            f"Kendall tau {self.kendall_tau:.3f}, {100 * self.within_10pct:.0f}% within +-10%, "
            f"median |error| {100 * self.median_abs_error:.1f}%, "
            f"max {100 * self.max_abs_error:.1f}% (n={self.count})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def nnls(matrix: np.ndarray, target: np.ndarray, max_iterations: int | None = None) -> np.ndarray:
    """Non-negative least squares: argmin ||A x - b|| with x >= 0 (Lawson and Hanson, 1974)."""
    rows, columns = matrix.shape
    solution = np.zeros(columns)
    active = np.zeros(columns, dtype=bool)  # the "passive" set P: variables free to move
    tolerance = 10 * np.finfo(float).eps * np.linalg.norm(matrix, 1) * max(rows, columns)
    gradient = matrix.T @ (target - matrix @ solution)
    iterations, limit = 0, max_iterations or 30 * columns
    while (~active).any() and (gradient[~active] > tolerance).any() and iterations < limit:
        active[np.argmax(np.where(active, -np.inf, gradient))] = True
        while True:
            iterations += 1
            trial = np.zeros(columns)
            trial[active] = np.linalg.lstsq(matrix[:, active], target, rcond=None)[0]
            if (trial[active] > tolerance).all() or iterations >= limit:
                solution = np.where(active, np.maximum(trial, 0.0), 0.0)
                break
            # Step back to the boundary of the feasible region, dropping variables that hit 0.
            blocking = active & (trial <= tolerance)
            step = np.min(solution[blocking] / (solution[blocking] - trial[blocking]))
            solution = solution + step * (trial - solution)
            active &= solution > tolerance
            solution[~active] = 0.0
        gradient = matrix.T @ (target - matrix @ solution)
    return solution
