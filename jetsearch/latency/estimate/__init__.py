"""Latency estimates from device specifications: a per-layer roofline, calibrated by measurements.

An estimate stands in for a measurement when no board is at hand. It is always labelled as one
(provenance ``estimated``, flags ``"estimate"`` and ``"calibrated"`` / ``"uncalibrated"``) and
never enters the latency cache as a measurement. The parts, one module each:

* :mod:`~jetsearch.latency.estimate.profiles`: what each device can do at best, from its public
  specifications (:class:`DeviceProfile`, :data:`PROFILES`, :func:`get_profile`).
* :mod:`~jetsearch.latency.estimate.roofline`: what a network costs layer by layer
  (:func:`network_cost`, every layer sorted into one of :data:`GROUPS`) and the roofline that
  turns the costs into time (:func:`roofline`)::

      time = max(flops / (P * compute_efficiency), bytes / (BW * memory_efficiency))
             + kernels * launch_cost

* :mod:`~jetsearch.latency.estimate.calibration`: the roofline fitted to measured latencies
  (:func:`calibrate`, :class:`Calibration`), read from a latency cache (:func:`measured_pairs`);
  the fitting tools (:func:`kendall_tau`, :class:`FitQuality`, :func:`nnls`) are in
  :mod:`~jetsearch.latency.estimate.fitting`.
* :mod:`~jetsearch.latency.estimate.provider`: :class:`EstimateProvider`, which loads the
  calibration saved next to its cache (:func:`calibration_path`), so estimates improve as a
  board measures::

      jetsearch latency measure agx.yaml --provider worker --workers http://agx:8765 \\
          --token-file agx.token --target agx --cache lat.sqlite   # stores results with configs
      jetsearch latency calibrate --profile agx-xavier --cache lat.sqlite
      jetsearch latency estimate my-net.yaml --profile agx-xavier --cache lat.sqlite

**Where the configs come from.** The latency cache stores ``arch_hash -> result``; to recompute
layer costs calibration needs the config itself. It is read from the entry's ``extra``
(``extra["config_yaml"]``) or from the configs the cache recorded
(:meth:`~jetsearch.latency.cache.LatencyCache.record_config`, which the cached providers of a
study and of ``jetsearch latency measure`` call for every network they measure).
"""

from __future__ import annotations

from jetsearch.latency.estimate.calibration import (
    Calibration,
    CalibrationPair,
    MeasuredPairs,
    calibrate,
    calibration_path,
    fit_parameters,
    measured_pairs,
)
from jetsearch.latency.estimate.fitting import FitQuality, kendall_tau, nnls
from jetsearch.latency.estimate.profiles import (
    PRECISIONS,
    PROFILE_ALIASES,
    PROFILES,
    TENSOR_CORE_GROUPS,
    DeviceProfile,
    get_profile,
    local_profile,
    profile_names,
)
from jetsearch.latency.estimate.provider import (
    CALIBRATED_FLAG,
    ESTIMATE_FLAG,
    UNCALIBRATED_FLAG,
    EstimateProvider,
)
from jetsearch.latency.estimate.roofline import (
    COMBINE_MODES,
    GROUPS,
    Estimate,
    LayerCost,
    LayerEstimate,
    NetworkCost,
    RooflineParameters,
    network_cost,
    roofline,
)

__all__ = [
    "CALIBRATED_FLAG",
    "COMBINE_MODES",
    "ESTIMATE_FLAG",
    "GROUPS",
    "PRECISIONS",
    "PROFILES",
    "PROFILE_ALIASES",
    "TENSOR_CORE_GROUPS",
    "UNCALIBRATED_FLAG",
    "Calibration",
    "CalibrationPair",
    "DeviceProfile",
    "Estimate",
    "EstimateProvider",
    "FitQuality",
    "LayerCost",
    "LayerEstimate",
    "MeasuredPairs",
    "NetworkCost",
    "RooflineParameters",
    "calibrate",
    "calibration_path",
    "fit_parameters",
    "get_profile",
    "kendall_tau",
    "local_profile",
    "measured_pairs",
    "network_cost",
    "nnls",
    "profile_names",
    "roofline",
]
