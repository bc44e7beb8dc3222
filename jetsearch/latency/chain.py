"""Latency providers built from one spec, for ``jetsearch study`` and ``jetsearch latency`` alike.

:func:`make_provider` turns a provider kind (``workers``, ``local``, ``estimate``) and a
:class:`ProviderSpec` into a ready provider: the board pool, onnxruntime here, or a device
profile's estimate; a measuring provider is wrapped in the latency cache when the spec names
one. :class:`LatencyChain` holds a study's providers in order of preference, and a failure
falls through to the next::

    chain = LatencyChain(study_spec)          # its latency section and target
    result, fallbacks = chain.measure(onnx_bytes, config)

**Precision.** The one rule (:func:`resolve_precision`): without a precision, the local provider
measures fp32, the workers their own default and an estimate its profile's default. fp16 asked
of a CPU (the local provider on the CPU execution provider, or an estimate on a CPU profile
such as ``local``) has no fast fp16 kernels to measure, so fp32 is used instead, and every result
says so: it is flagged ``"precision-fallback-fp32"`` (a study stores the flag with the trial's
``latency`` attribute). A worker pool is asked for exactly the precision given; a worker that
cannot measure it is refused with that reason, never measured at another precision.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jetsearch.latency.base import LatencyError, LatencyProvider, LatencyResult

if TYPE_CHECKING:
    from jetsearch.latency.estimate import DeviceProfile
    from jetsearch.spec import StudySpec
    from jetseg.config import JetSegConfig

ProviderKind = Literal["workers", "local", "estimate"]
PROVIDER_KINDS: tuple[str, ...] = typing.get_args(ProviderKind)
PRECISION_FALLBACK_FLAG = "precision-fallback-fp32"


class ProviderSetupError(LatencyError, ValueError):
    """A provider that cannot be set up as asked (no workers listed, no token), or no provider.

    A ValueError too: it is bad input, reported as such, not a failed measurement.
    """


@dataclass(frozen=True)
class MeasurementSettings:
    """How latency is measured, whichever provider measures it; each kind reads its own fields.

    Declared here once: a study's ``latency:`` section (:class:`jetsearch.spec.LatencySpec`)
    and :class:`ProviderSpec` (what ``jetsearch latency`` builds from its options) are both
    these settings plus their own. ``workers``, ``token_file``: the board workers' URLs and the
    file holding their shared token. ``precision``: "fp32", "fp16" or None for each provider's
    default (see :func:`resolve_precision`). ``execution_provider``, ``threads``: the local
    onnxruntime setup. ``warmup_s``, ``runs``: the measurement protocol (local and workers).
    ``cache``: the latency cache file (None: none); measuring providers store their results in
    it, the estimate loads the calibration saved beside it. ``device_profile``: the estimate's
    device profile (default: the target's).
    """

    workers: tuple[str, ...] = ()
    token_file: str | None = None
    precision: Literal["fp32", "fp16"] | None = None
    execution_provider: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    threads: int = field(default=2, metadata={"min": 1, "max": 256})
    warmup_s: float = 1.0
    runs: int = field(default=50, metadata={"min": 3, "max": 100000})
    cache: str | None = None
    device_profile: str | None = None


@dataclass(frozen=True)
class ProviderSpec(MeasurementSettings):
    """What :func:`make_provider` needs to build any provider: the measurement settings and the
    ``target`` the workers must declare (also the estimate's profile when ``device_profile`` is
    not given)."""

    target: str | None = None

    @classmethod
    def from_study(cls, spec: StudySpec) -> ProviderSpec:
        """The provider spec of a study: its latency section's settings and its target."""
        settings = {
            f.name: getattr(spec.latency, f.name) for f in dataclasses.fields(MeasurementSettings)
        }
        return cls(**settings, target=spec.target)


def resolve_precision(kind: str, spec: ProviderSpec) -> tuple[str | None, bool]:
    """(the precision `kind` is built with, whether fp32 stands in for an asked fp16).

    See the module docstring for the rule. The precision is None only for workers asked for
    none (each worker's default).
    """
    if kind == "workers":
        return spec.precision, False
    if kind == "local":
        asked = spec.precision or "fp32"
        if asked == "fp16" and spec.execution_provider == "cpu":
            return "fp32", True
        return asked, False
    if kind == "estimate":
        profile = _estimate_profile(spec)
        asked = spec.precision or profile.default_precision
        if asked == "fp16" and "fp16" not in profile.precisions:
            return "fp32", True
        return asked, False
    raise ValueError(f"latency provider must be one of {list(PROVIDER_KINDS)}, got {kind!r}")


def make_provider(kind: str, spec: ProviderSpec, *, refresh: bool = False) -> LatencyProvider:
    """The provider of `kind` ("workers", "local" or "estimate") that `spec` describes.

    A measuring provider is wrapped in :class:`~jetsearch.latency.cache.CachedProvider` when
    ``spec.cache`` is set (`refresh`: measure again and replace what the cache holds); one
    built at fp32 in place of an asked fp16 is wrapped in :class:`FlaggedProvider`, outside
    the cache, so the cache holds plain fp32 results and only this setup's results carry the
    flag. Raises :class:`ProviderSetupError` when the workers provider lacks its URLs, token or
    target (or the token file is missing or empty), ValueError for other bad settings.
    """
    from jetsearch.latency.cache import CachedProvider, LatencyCache

    precision, fell_back = resolve_precision(kind, spec)
    provider: LatencyProvider
    device = "this CPU"
    if kind == "workers":
        provider = _remote_pool(spec, precision)
    elif kind == "local":
        from jetsearch.latency.local import LocalProvider

        assert precision is not None
        provider = LocalProvider(
            execution_provider=spec.execution_provider,
            precision=precision,
            threads=spec.threads,
            warmup_s=spec.warmup_s,
            min_runs=spec.runs,
            max_runs=spec.runs,
        )
    else:
        from jetsearch.latency.estimate import EstimateProvider

        profile = _estimate_profile(spec)
        provider = EstimateProvider(profile.name, cache_path=spec.cache, precision=precision)
        device = f"the CPU profile {profile.name!r}"
    if spec.cache and kind != "estimate":
        provider = CachedProvider(provider, LatencyCache(spec.cache), refresh=refresh)
    if fell_back:
        provider = FlaggedProvider(
            provider,
            [PRECISION_FALLBACK_FLAG],
            note=f"fp16 was asked, {device} has no fast fp16: fp32 is used "
            f"(results flagged {PRECISION_FALLBACK_FLAG})",
        )
    return provider


def _estimate_profile(spec: ProviderSpec) -> DeviceProfile:
    """The estimate's device profile: the spec's, else its target's (agx, nano, local, ...)."""
    from jetsearch.latency.estimate import get_profile

    name = spec.device_profile or spec.target
    if not name:
        raise ValueError("the estimate provider needs a device profile (or a target to use as one)")
    return get_profile(name)


def _remote_pool(spec: ProviderSpec, precision: str | None) -> LatencyProvider:
    from jetsearch.latency.remote import RemotePool, read_token_file

    if not spec.workers:
        raise ProviderSetupError(
            "the workers provider needs --workers URL[,URL...] (latency.workers in a study)"
        )
    if not spec.token_file:
        raise ProviderSetupError(
            "the workers provider needs --token-file, the file holding the workers' shared "
            "token (latency.token_file in a study)"
        )
    if not spec.target:
        raise ProviderSetupError("the workers provider needs --target, the target they serve")
    try:
        token = read_token_file(spec.token_file)
    except (OSError, ValueError) as error:
        raise ProviderSetupError(str(error)) from None
    return RemotePool(
        list(spec.workers),
        token,
        spec.target,
        precision=precision,
        warmup_s=spec.warmup_s,
        runs=spec.runs,
    )


class FlaggedProvider(LatencyProvider):
    """Another provider whose every result carries `flags`; `note` says why, in words.

    Everything else (fingerprint, target key, closing) is the wrapped provider's.
    """

    def __init__(self, provider: LatencyProvider, flags: Iterable[str], note: str = "") -> None:
        self.provider = provider
        self.flags = tuple(flags)
        self.note = note
        self.kind = provider.kind

    def measure(
        self,
        onnx_model: bytes | str | Path,
        input_shape: tuple[int, ...],
        *,
        config: JetSegConfig | None = None,
    ) -> LatencyResult:
        """The wrapped provider's result, with the flags added."""
        result = self.provider.measure(onnx_model, input_shape, config=config)
        return result.with_flags(*self.flags)

    def fingerprint(self) -> dict[str, Any]:
        return self.provider.fingerprint()

    def target_fingerprint_key(self) -> str:
        return self.provider.target_fingerprint_key()

    def close(self) -> None:
        self.provider.close()


class LatencyChain:
    """A study's latency providers in order of preference; a failure falls through to the next.

    Built from the study spec's target and latency section (``providers`` in order,
    ``input_size`` and the :class:`ProviderSpec` fields), each provider by
    :func:`make_provider`: measured results are cached per (arch_hash, input shape, target)
    when the section names a cache, with the network's config for calibration; estimates are
    labelled. A provider that cannot be set up (no workers listed, no token) is skipped with
    its reason (:attr:`skipped`); when none is usable, :class:`ProviderSetupError`.
    """

    def __init__(self, spec: StudySpec) -> None:
        self.input_size = tuple(int(value) for value in spec.latency.input_size)
        self.settings = ProviderSpec.from_study(spec)
        self.providers: list[tuple[str, LatencyProvider]] = []
        self.skipped: list[str] = []
        for kind in spec.latency.providers:
            try:
                provider = make_provider(kind, self.settings)
            except ProviderSetupError as error:
                self.skipped.append(f"{kind}: {error}")
                continue
            self.providers.append((kind, provider))
        if not self.providers:
            raise ProviderSetupError("no latency provider is usable: " + "; ".join(self.skipped))

    def describe(self) -> str:
        """The providers in order, with any fallback note, and the skipped ones with reasons."""
        names = ", ".join(
            f"{kind} ({provider.note})" if isinstance(provider, FlaggedProvider) else kind
            for kind, provider in self.providers
        )
        skipped = f" (skipped: {'; '.join(self.skipped)})" if self.skipped else ""
        return names + skipped

    def measure(
        self, onnx_model: bytes | str | Path, config: JetSegConfig
    ) -> tuple[LatencyResult, list[str]]:
        """The first provider's answer for the network `config` builds, at the study's size.

        Returns the result and the failures of the providers before it ("kind: reason"); when
        every provider fails, LatencyError lists each one's reason.
        """
        shape = (1, config.in_channels, *self.input_size)
        errors: list[str] = []
        for kind, provider in self.providers:
            try:
                return provider.measure(onnx_model, shape, config=config), errors
            except LatencyError as error:
                errors.append(f"{kind}: {error}")
        raise LatencyError("every latency provider failed: " + "; ".join(errors))

    def close(self) -> None:
        for _, provider in self.providers:
            provider.close()
