"""Calibration: the roofline of a device profile fitted to measured latencies of known networks.

:func:`calibrate` fits, from ``(config, input_size, measured_ms)`` pairs, a :class:`Calibration`
(:class:`~jetsearch.latency.estimate.roofline.RooflineParameters`): per group a compute and a
memory time multiplier (``1 / efficiency``) and a per-kernel cost, plus a constant per inference.
A few dozen totals cannot separate two dozen numbers, so some are fitted as one (one compute
efficiency for the matrix-product groups conv, pointwise and grouped; one for the light groups;
one kernel cost). The fit is non-negative least squares on relative errors with a mild pull
towards the profile's own figures. Two ways of combining a layer's compute and memory times are
fitted, the roofline's ``max`` (each layer's bound re-decided until none changes side) and
``sum`` (no overlap, closer to a CPU running small layers); 5-fold cross-validation picks one.
:func:`measured_pairs` reads the pairs from a latency cache, whose configs the cache stores with
its results (:meth:`~jetsearch.latency.cache.LatencyCache.record_config`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jetsearch.latency.cache import LatencyCache
from jetsearch.latency.estimate.fitting import FitQuality, nnls
from jetsearch.latency.estimate.profiles import DeviceProfile, get_profile
from jetsearch.latency.estimate.roofline import (
    COMBINE_MODES,
    GROUPS,
    NetworkCost,
    RooflineParameters,
    ideal_terms,
    network_cost,
    roofline,
)

if TYPE_CHECKING:
    from jetseg.config import JetSegConfig


@dataclass(frozen=True)
class Calibration:
    """A device's roofline fitted to its measurements, with how well it fits.

    ``parameters`` are the fitted :class:`RooflineParameters`; ``profile`` and ``precision`` say
    which estimates it corrects; ``target_key`` names the measured target it was fitted to (the
    cache's key), ``fit`` the quality on the fitting set. Save with :meth:`save`, read back with
    :meth:`load`.
    """

    profile: str
    precision: str
    parameters: RooflineParameters
    fit: FitQuality
    target_key: str | None = None
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    FORMAT = "jetsearch-calibration/1"
    # The one kind this version fits and reads; files keep the key, so that an older file of
    # another kind is refused by name rather than misread.
    KIND = "roofline"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "kind": self.KIND,
            "profile": self.profile,
            "precision": self.precision,
            "target_key": self.target_key,
            "created_at": self.created_at,
            "parameters": self.parameters.to_dict(),
            "fit": self.fit.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "calibration") -> Calibration:
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{source}: key 'format' must be {cls.FORMAT!r}, got {found!r}")
        kind = data.get("kind", cls.KIND)
        if kind != cls.KIND:
            raise ValueError(
                f"{source}: key 'kind' is {kind!r}; this version reads {cls.KIND!r} calibrations "
                "only (run `jetsearch latency calibrate` again to fit one)"
            )
        try:
            return cls(
                profile=str(data["profile"]),
                precision=str(data["precision"]),
                parameters=RooflineParameters.from_dict(data["parameters"]),
                fit=FitQuality(**data["fit"]),
                target_key=data.get("target_key"),
                created_at=str(data["created_at"]),
            )
        except KeyError as error:
            raise ValueError(f"{source}: missing key {error.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{source}: {error}") from None

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a :meth:`save`'d file; errors name the file and the bad key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"calibration file {path} is not valid JSON: {error}") from None
        return cls.from_dict(data, source=f"calibration file {path}")


def calibration_path(cache_path: str | Path, profile: str, precision: str) -> Path:
    """Where the calibration of `profile` at `precision` lives: a JSON file beside the cache."""
    cache_path = Path(cache_path)
    name = get_profile(profile).name
    return cache_path.with_name(f"{cache_path.stem}.calibration-{name}-{precision}.json")


CalibrationPair = tuple["JetSegConfig", Sequence[int], float]

# How strongly calibration pulls each parameter towards the profile's own figure (scaled to the
# measurements' overall level), relative to one sample's squared relative error: enough to keep
# groups that the data hardly constrains at sensible values, small enough to let data decide.
DEFAULT_SHRINKAGE = 0.001
_MAX_ASSIGNMENT_ROUNDS = 30
_CV_FOLDS = 5

# Parameters fitted as one, because a few dozen totals cannot tell them apart: dense, pointwise
# and grouped convolutions all run as matrix products (one compute efficiency); the FLOPs of
# activations, attention gates, element-wise ops and resizes are all cheap arithmetic; and one
# kernel launch costs the same whatever it runs.
_GEMM_GROUPS = ("conv", "pointwise", "grouped")
_LIGHT_GROUPS = ("activation", "attention", "elementwise", "resize")
_FITTED_TOGETHER = (
    [[("compute", g) for g in _GEMM_GROUPS]]
    + [[("compute", "depthwise")], [("compute", "multiplier")]]
    + [[("compute", g) for g in _LIGHT_GROUPS]]
    + [[("memory", g)] for g in GROUPS]
    + [[("launch", g) for g in GROUPS]]
    + [[("constant", "")]]
)


def _slot(kind: str, group: str) -> int:
    """Index of one parameter in the full vector [compute x G, memory x G, launch x G, constant]."""
    offsets = {"compute": 0, "memory": 1, "launch": 2}
    if kind == "constant":
        return 3 * len(GROUPS)
    return offsets[kind] * len(GROUPS) + GROUPS.index(group)


def _tie_matrix() -> np.ndarray:
    """(full parameters, fitted parameters) 0/1 matrix: full = tie @ fitted."""
    tie = np.zeros((3 * len(GROUPS) + 1, len(_FITTED_TOGETHER)))
    for column, members in enumerate(_FITTED_TOGETHER):
        for kind, group in members:
            tie[_slot(kind, group), column] = 1.0
    return tie


class _Design:
    """The fitting set as arrays: per sample, per layer ideal times, kernels and group index."""

    def __init__(self, costs: Sequence[NetworkCost], profile: DeviceProfile, precision: str):
        self.samples = []
        for cost in costs:
            terms = np.array(ideal_terms(cost, profile, precision), dtype=float).reshape(-1, 3)
            groups = np.array([GROUPS.index(layer.group) for layer in cost.layers], dtype=int)
            self.samples.append((terms[:, 0], terms[:, 1], terms[:, 2], groups))

    def subset(self, indices: Iterable[int]) -> _Design:
        design = object.__new__(_Design)
        design.samples = [self.samples[i] for i in indices]
        return design

    @staticmethod
    def vector(parameters: RooflineParameters) -> np.ndarray:
        return np.array(
            [parameters.compute_scale[g] for g in GROUPS]
            + [parameters.memory_scale[g] for g in GROUPS]
            + [parameters.launch_us[g] for g in GROUPS]
            + [parameters.constant_ms]
        )

    @staticmethod
    def parameters(vector: np.ndarray, combine: str) -> RooflineParameters:
        n = len(GROUPS)
        return RooflineParameters(
            compute_scale={g: float(vector[i]) for i, g in enumerate(GROUPS)},
            memory_scale={g: float(vector[n + i]) for i, g in enumerate(GROUPS)},
            launch_us={g: float(vector[2 * n + i]) for i, g in enumerate(GROUPS)},
            constant_ms=float(vector[3 * n]),
            combine=combine,
        )

    def predict(self, vector: np.ndarray, combine: str) -> np.ndarray:
        n = len(GROUPS)
        compute_scale, memory_scale = vector[:n], vector[n : 2 * n]
        launch_us, constant = vector[2 * n : 3 * n], vector[3 * n]
        totals = []
        for compute, memory, kernels, groups in self.samples:
            compute_ms, memory_ms = compute * compute_scale[groups], memory * memory_scale[groups]
            if combine == "sum":
                per_layer = compute_ms + memory_ms
            else:
                per_layer = np.maximum(compute_ms, memory_ms)
            totals.append(constant + per_layer.sum() + (kernels * launch_us[groups]).sum() / 1e3)
        return np.array(totals)

    def rows(self, vector: np.ndarray, combine: str) -> np.ndarray:
        """The linear design: with "max", each layer counts where it is bound under `vector`."""
        n = len(GROUPS)
        matrix = np.zeros((len(self.samples), 3 * n + 1))
        for row, (compute, memory, kernels, groups) in enumerate(self.samples):
            if combine == "sum":
                compute_bound = np.ones(len(groups), dtype=bool)
                memory_bound = compute_bound
            else:
                compute_bound = compute * vector[:n][groups] >= memory * vector[n : 2 * n][groups]
                memory_bound = ~compute_bound
            np.add.at(matrix[row], groups[compute_bound], compute[compute_bound])
            np.add.at(matrix[row], n + groups[memory_bound], memory[memory_bound])
            np.add.at(matrix[row], 2 * n + groups, kernels / 1e3)
            matrix[row, 3 * n] = 1.0
        return matrix


def _fit(
    design: _Design, measured: np.ndarray, prior: np.ndarray, combine: str, shrinkage: float
) -> np.ndarray:
    """Penalised NNLS of the tied parameters; for "max", repeated until the bounds settle."""
    tie = _tie_matrix()
    # The prior of a tied parameter: the mean of its members' priors.
    tied_prior = (tie.T @ prior) / tie.sum(axis=0)
    level = float(np.median(measured))
    # Ridge rows: (x_j - prior_j) / prior_j; a parameter whose prior is 0 (the constant) is
    # measured against the median latency instead.
    scale = np.where(tied_prior > 0, tied_prior, level)
    penalty = np.sqrt(shrinkage) * np.diag(1.0 / scale)
    penalty_target = np.sqrt(shrinkage) * (tied_prior > 0)

    def objective(vector: np.ndarray) -> float:
        residual = design.predict(vector, combine) / measured - 1.0
        tied = np.linalg.lstsq(tie, vector, rcond=None)[0]
        return float(residual @ residual + np.sum((penalty @ tied - penalty_target) ** 2))

    best, best_loss = prior, objective(prior)
    vector = prior
    seen: set[bytes] = set()
    for _ in range(_MAX_ASSIGNMENT_ROUNDS):
        rows = design.rows(vector, combine)
        matrix = (rows @ tie) / measured[:, None]
        target = np.concatenate([np.ones(len(measured)), penalty_target])
        solution = tie @ nnls(np.vstack([matrix, penalty]), target)
        loss = objective(solution)
        if loss < best_loss:
            best, best_loss = solution, loss
        signature = design.rows(solution, combine).tobytes()
        if combine == "sum" or signature in seen:
            break
        seen.add(signature)
        vector = solution
    return best


def fit_parameters(
    costs: Sequence[NetworkCost],
    measured_ms: Sequence[float],
    profile: DeviceProfile | str,
    precision: str | None = None,
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    combine: str | None = None,
) -> RooflineParameters:
    """Roofline parameters that fit `measured_ms` of the networks `costs` describe.

    Minimises the squared relative errors plus ``shrinkage`` times the squared relative
    distance of each parameter from the profile's own figure, scaled by the one factor that
    best fits the data (the constant is pulled towards 0), by non-negative least squares.
    With ``combine="max"`` each layer's bound (compute or memory) is re-decided and the fit
    repeated until no layer changes side. With ``combine=None`` both "max" and "sum" are fitted
    and the one with the smaller 5-fold cross-validated error is kept (with fewer than 10
    measurements: the roofline's "max").
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    precision = precision or profile.default_precision
    measured = np.asarray(measured_ms, dtype=float)
    if len(costs) != len(measured) or not len(measured):
        raise ValueError(
            f"calibration needs one measurement per network, got {len(costs)} networks and "
            f"{len(measured)} measurements"
        )
    if not np.all(np.isfinite(measured) & (measured > 0)):
        raise ValueError("measured latencies must be positive and finite")
    if shrinkage <= 0:
        raise ValueError(f"shrinkage must be > 0, got {shrinkage}")
    if combine is not None and combine not in COMBINE_MODES:
        raise ValueError(f"combine must be None or one of {list(COMBINE_MODES)}, got {combine!r}")
    design = _Design(costs, profile, precision)
    base = design.vector(RooflineParameters.from_profile(profile))

    def prior_for(indices: np.ndarray, mode: str) -> np.ndarray:
        # The level: the single factor on the profile's own figures that fits best.
        ratio = design.subset(indices).predict(base, mode) / measured[indices]
        prior = base * float(ratio.sum() / (ratio**2).sum())
        prior[-1] = 0.0
        return prior

    everything = np.arange(len(measured))
    if combine is None:
        if len(measured) < 2 * _CV_FOLDS:
            combine = "max"
        else:
            errors = {}
            for mode in COMBINE_MODES:
                squared = 0.0
                for fold in range(_CV_FOLDS):
                    train = everything[everything % _CV_FOLDS != fold]
                    test = everything[everything % _CV_FOLDS == fold]
                    vector = _fit(
                        design.subset(train),
                        measured[train],
                        prior_for(train, mode),
                        mode,
                        shrinkage,
                    )
                    residual = design.subset(test).predict(vector, mode) / measured[test] - 1.0
                    squared += float(residual @ residual)
                errors[mode] = squared
            combine = min(COMBINE_MODES, key=lambda mode: errors[mode])
    vector = _fit(design, measured, prior_for(everything, combine), combine, shrinkage)
    return design.parameters(vector, combine)


def calibrate(
    pairs: Sequence[CalibrationPair],
    profile: DeviceProfile | str,
    precision: str | None = None,
    *,
    target_key: str | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> Calibration:
    """Fit a :class:`Calibration` of `profile` from ``(config, input_size, measured_ms)`` pairs.

    ``input_size`` is (H, W) (batch 1) or (B, C, H, W). The returned calibration's ``fit``
    reports Kendall tau and the share within +-10% on these same pairs.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    precision = precision or profile.default_precision
    profile.check_precision(precision)
    if len(pairs) < 3:
        raise ValueError(f"calibration needs at least 3 measured networks, got {len(pairs)}")
    costs = [network_cost(config, size) for config, size, _ in pairs]
    measured = [float(ms) for _, _, ms in pairs]
    parameters = fit_parameters(costs, measured, profile, precision, shrinkage=shrinkage)
    predicted = [roofline(cost, profile, precision, parameters).total_ms for cost in costs]
    return Calibration(
        profile=profile.name,
        precision=precision,
        parameters=parameters,
        fit=FitQuality.of(predicted, measured),
        target_key=target_key,
    )


# ---------------------------------------------------------------------------------------------
# the measured pairs a cache holds


@dataclass
class MeasuredPairs:
    """Calibration input read from a cache: the pairs, the target key and what was left out."""

    target_key: str
    pairs: list[CalibrationPair]
    skipped: list[str]


def measured_pairs(
    cache: LatencyCache | str | Path,
    target_key: str | None = None,
    *,
    precision: str | None = None,
) -> MeasuredPairs:
    """The (config, input shape, median ms) of every measured result of one target in a cache.

    Without `target_key` the cache must hold measurements of exactly one target. Results whose
    config is unknown (neither in ``extra["config_yaml"]`` nor among the cache's recorded
    configs), whose config no longer hashes to the stored arch_hash, or whose fingerprint
    precision differs from `precision` are skipped, each with its reason.
    """
    import yaml

    from jetseg.config import ConfigError, arch_hash, load_config

    if not isinstance(cache, LatencyCache):
        if not Path(cache).is_file():
            raise FileNotFoundError(f"latency cache {cache} does not exist")
        cache = LatencyCache(cache)
    path = cache.path
    keys = cache.target_keys()
    if target_key is None:
        if len(keys) != 1:
            listing = ", ".join(f"{key} ({count})" for key, count in keys.items()) or "none"
            raise ValueError(
                f"latency cache {path} holds measurements of {len(keys)} targets; pick one "
                f"with --target-key: {listing}"
            )
        target_key = next(iter(keys))
    elif target_key not in keys:
        listing = ", ".join(f"{key} ({count})" for key, count in keys.items()) or "none"
        raise ValueError(
            f"latency cache {path} has no measurements for target key {target_key!r}; "
            f"it holds: {listing}"
        )
    recorded = cache.configs()
    pairs: list[CalibrationPair] = []
    skipped: list[str] = []
    for digest, shape, result, extra in cache.all_results(target_key):
        text = extra.get("config_yaml") if isinstance(extra, Mapping) else None
        text = text or recorded.get(digest)
        if text is None:
            skipped.append(f"{digest}: no config stored for it")
            continue
        try:
            config = load_config(yaml.safe_load(text))
        except (ConfigError, yaml.YAMLError) as error:
            skipped.append(f"{digest}: stored config does not load: {error}")
            continue
        if arch_hash(config) != digest:
            skipped.append(f"{digest}: stored config hashes to {arch_hash(config)}")
            continue
        measured_precision = result.fingerprint.get("precision")
        if precision is not None and measured_precision not in (None, precision):
            skipped.append(f"{digest}: measured at {measured_precision}, not {precision}")
            continue
        pairs.append((config, shape, result.median_ms))
    return MeasuredPairs(target_key, pairs, skipped)
