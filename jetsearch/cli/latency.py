"""``jetsearch latency measure|estimate|calibrate``: latency of one network from the shell.

Examples::

    jetsearch latency measure nano --size 360x480 --threads 2 --runs 50
    jetsearch latency measure agx --provider worker --workers http://agx:8765 \\
        --token-file ~/.jetsearch/agx.token --target agx --precision fp16
    jetsearch latency estimate nano --profile agx-xavier --cache jetsearch-latency.sqlite
    jetsearch latency calibrate --profile local --cache jetsearch-latency.sqlite

``measure`` stores every result in the latency cache together with the network's config, so
that ``calibrate`` can later fit the estimate of a device profile to those measurements; an
``estimate`` with the same ``--cache`` then uses that calibration. ``measure`` and ``estimate``
build their provider as a study does (:mod:`jetsearch.latency.chain`), precision rule included:
fp16 asked of a CPU is measured (or estimated) at fp32, and the output says so.

Bad input raises ``ValueError`` or ``FileNotFoundError`` with the offending file or option in
the message; handlers return the exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetsearch.cli import console as _console
from jetsearch.cli import parse_size

if TYPE_CHECKING:
    from jetsearch.latency.base import LatencyResult
    from jetsearch.latency.chain import ProviderSpec
    from jetseg.config import JetSegConfig

DEFAULT_CACHE = "jetsearch-latency.sqlite"
DEFAULT_SIZE = (360, 480)


def _load_config(name_or_path: str) -> JetSegConfig:
    """A preset or YAML config; FileNotFoundError / ConfigError (a ValueError) name the file."""
    from jetseg.config import load_config

    return load_config(name_or_path)


def _device_summary(fingerprint: dict[str, Any]) -> str:
    """One line naming the device and runtime of a fingerprint."""
    from jetsearch.latency.base import fingerprint_device

    parts = [fingerprint_device(fingerprint)]
    runtime = fingerprint.get("runtime") or fingerprint.get("backend")
    if runtime:
        version = fingerprint.get("runtime_version")
        parts.append(f"{runtime} {version}" if version else str(runtime))
    for key, label in (
        ("execution_provider", ""),
        ("precision", ""),
        ("threads", "threads "),
        ("power_mode", "power "),
    ):
        if fingerprint.get(key) not in (None, ""):
            parts.append(f"{label}{fingerprint[key]}")
    return ", ".join(parts)


def _result_table(title: str, result: LatencyResult, extra_rows: list[tuple[str, str]]) -> Any:
    import rich.table

    table = rich.table.Table(title=title, title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in extra_rows:
        table.add_row(key, value)
    table.add_row("median", f"{result.median_ms:.3f} ms")
    table.add_row("p90", f"{result.p90_ms:.3f} ms")
    table.add_row("cv", f"{result.cv:.3f}")
    table.add_row("timed runs", str(result.timed_runs))
    table.add_row("warm-up runs", str(result.warmup_runs))
    table.add_row("provenance", result.provenance.value)
    table.add_row("device", _device_summary(result.fingerprint))
    table.add_row("flags", ", ".join(result.flags) or "-")
    return table


# ---------------------------------------------------------------------------------------------
# measure


def _provider_spec(args: argparse.Namespace) -> ProviderSpec:
    """The chain's provider spec of ``measure``'s options."""
    from jetsearch.latency.chain import ProviderSpec

    return ProviderSpec(
        target=args.target,
        precision=args.precision,
        workers=tuple(url.strip() for url in (args.workers or "").split(",") if url.strip()),
        token_file=args.token_file,
        execution_provider=args.execution_provider,
        threads=args.threads,
        warmup_s=args.warmup,
        runs=args.runs,
        cache=args.cache or None,
    )


def _onnx_path(text: str) -> Path | None:
    """``text`` as an ONNX file: a path ending in .onnx, or a file that starts as protobuf."""
    path = Path(text)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".onnx":
        return path
    with path.open("rb") as handle:
        head = handle.read(2)
    # A serialized ModelProto starts with field 1 (ir_version, varint): byte 0x08. YAML is text.
    return path if head[:1] == b"\x08" else None


def _onnx_channels(onnx_bytes: bytes) -> int:
    """The channel count the model's image input fixes (3 when it leaves it free)."""
    from jetsearch.latency import worker

    item = worker.model_input(worker.describe_onnx_model(onnx_bytes))
    dims = item["dims"]
    if dims and len(dims) == 4 and isinstance(dims[1], int) and dims[1] > 0:
        return dims[1]
    return 3


def cmd_measure(args: argparse.Namespace) -> int:
    """Export the network, measure it (or take the cached result), print and store it."""
    from jetsearch.latency.chain import FlaggedProvider, make_provider
    from jetseg.config import arch_hash
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    height, width = args.size
    onnx_file = _onnx_path(args.config)
    if onnx_file is not None:
        # Any network, a peer's included: timed as it is, by the same providers. Without a
        # JetSeg config there is no arch_hash to key the cache on, so nothing is stored.
        from jetsearch.latency._onnx_input import read_onnx_bytes
        from jetsearch.latency.base import InvalidModelError

        config = None
        try:
            onnx_bytes = read_onnx_bytes(onnx_file)
        except InvalidModelError as err:  # too large, unreadable: bad input, exit 2
            raise ValueError(str(err)) from None
        try:
            channels = _onnx_channels(onnx_bytes)
        except Exception as err:  # the worker's parser says what is wrong with the bytes
            raise ValueError(f"{onnx_file} is not a readable ONNX model: {err}") from None
    else:
        config = _load_config(args.config)
        channels = config.in_channels
    shape = (1, channels, height, width)
    console = _console()
    kind = "workers" if args.provider == "worker" else "local"
    provider = make_provider(kind, _provider_spec(args), refresh=args.fresh)
    with provider:
        target_key = provider.target_fingerprint_key()
        if config is not None:
            onnx_bytes = export_onnx(build_model(config), input_size=(height, width))
        result = provider.measure(onnx_bytes, shape, config=config)
    if isinstance(provider, FlaggedProvider):
        console.print(f"note: {provider.note}")
    network = (
        f"{onnx_file} (an ONNX file, not a JetSeg config)"
        if config is None
        else f"{config.name} (arch_hash {arch_hash(config)})"
    )
    stored = str(args.cache) if args.cache and config is not None else "not stored"
    if config is None and args.cache:
        stored += " (an ONNX file has no arch_hash to key the cache on)"
    elif not args.cache:
        stored += " (--cache '')"
    rows = [
        ("network", network),
        ("input", "x".join(str(value) for value in shape)),
        ("target key", target_key),
        ("cache", stored),
    ]
    console.print(_result_table("latency measurement", result, rows))
    return 0


# ---------------------------------------------------------------------------------------------
# estimate


def cmd_estimate(args: argparse.Namespace) -> int:
    """Print the estimate of one network on a device profile, labelled, with its top layers."""
    import rich.table

    from jetsearch.latency.chain import PRECISION_FALLBACK_FLAG, ProviderSpec, resolve_precision
    from jetsearch.latency.estimate import EstimateProvider
    from jetseg.config import arch_hash

    config = _load_config(args.config)
    if args.cache and not Path(args.cache).is_file():
        raise FileNotFoundError(f"latency cache {args.cache} does not exist")
    spec = ProviderSpec(device_profile=args.profile, precision=args.precision, cache=args.cache)
    precision, fell_back = resolve_precision("estimate", spec)
    provider = EstimateProvider(args.profile, cache_path=args.cache, precision=precision)
    height, width = args.size
    estimate = provider.explain(config, (height, width))
    calibration = provider.calibration
    console = _console()
    label = "calibrated" if calibration is not None else "UNCALIBRATED"
    console.print(
        f"[bold]ESTIMATE[/bold] (not a measurement) of [bold]{config.name}[/bold] "
        f"(arch_hash {arch_hash(config)}) at {height}x{width} on {provider.profile.name} "
        f"({provider.profile.description}), {provider.precision}: "
        f"[bold]{estimate.total_ms:.3f} ms[/bold], {label}"
    )
    if fell_back:
        console.print(
            f"note: fp16 was asked, the CPU profile {provider.profile.name!r} has no fast fp16: "
            f"the estimate is fp32 ({PRECISION_FALLBACK_FLAG})"
        )
    if calibration is not None:
        console.print(
            f"calibration {provider.calibration_file} ({calibration.created_at}, "
            f"{calibration.parameters.combine} roofline): fit {calibration.fit.describe()}"
        )
    else:
        console.print(
            "no calibration: the profile's rough efficiencies are used; run "
            "`jetsearch latency calibrate` on measurements of this device to correct them"
        )
    console.print(f"profile figures: {provider.profile.source}")
    groups = rich.table.Table(title="by layer group", title_justify="left")
    for column in ("group", "ms", "share"):
        groups.add_column(column, justify="left" if column == "group" else "right")
    for group, ms in estimate.by_group().items():
        if ms > 0:
            groups.add_row(group, f"{ms:.3f}", f"{100 * ms / estimate.total_ms:.1f}%")
    if estimate.constant_ms > 0:
        share = 100 * estimate.constant_ms / estimate.total_ms
        groups.add_row("(per inference)", f"{estimate.constant_ms:.3f}", f"{share:.1f}%")
    console.print(groups)
    top = rich.table.Table(title=f"top {args.top} layers", title_justify="left")
    for column in ("layer", "type", "group", "ms", "share", "bound"):
        top.add_column(column, justify="right" if column in ("ms", "share") else "left")
    for layer in estimate.top(args.top):
        top.add_row(
            layer.name or "(model)",
            layer.kind,
            layer.group,
            f"{layer.total_ms:.3f}",
            f"{100 * layer.total_ms / estimate.total_ms:.1f}%",
            layer.bound,
        )
    console.print(top)
    return 0


# ---------------------------------------------------------------------------------------------
# calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit a profile's calibration to the cache's measurements, save it, print the fit."""
    import rich.table

    from jetsearch.latency.estimate import (
        GROUPS,
        FitQuality,
        calibrate,
        calibration_path,
        get_profile,
        measured_pairs,
        network_cost,
        roofline,
    )

    profile = get_profile(args.profile)
    precision = args.precision or profile.default_precision
    profile.check_precision(precision)
    read = measured_pairs(args.cache, args.target_key, precision=precision)
    console = _console()
    console.print(
        f"cache {args.cache}: {len(read.pairs)} measured networks of target {read.target_key}"
        + (f", {len(read.skipped)} skipped" if read.skipped else "")
    )
    for reason in read.skipped[:10]:
        console.print(f"  skipped {reason}")
    if len(read.skipped) > 10:
        console.print(f"  ... and {len(read.skipped) - 10} more")
    if len(read.pairs) < 3:
        raise ValueError(
            f"latency cache {args.cache} has {len(read.pairs)} usable measurements of target "
            f"{read.target_key}; calibration needs at least 3 (measure more networks with "
            "`jetsearch latency measure ... --cache`)"
        )
    calibration = calibrate(read.pairs, profile, precision, target_key=read.target_key)
    path = calibration.save(calibration_path(args.cache, profile.name, precision))
    measured = [ms for _, _, ms in read.pairs]
    uncalibrated = FitQuality.of(
        [
            roofline(network_cost(config, size), profile, precision).total_ms
            for config, size, _ in read.pairs
        ],
        measured,
    )
    quality = rich.table.Table(title="fit on the measured networks", title_justify="left")
    for column in ("estimate", "Kendall tau", "within +-10%", "median |error|", "max |error|"):
        quality.add_column(column, justify="left" if column == "estimate" else "right")
    for label, fit in (("uncalibrated", uncalibrated), ("calibrated", calibration.fit)):
        quality.add_row(
            label,
            f"{fit.kendall_tau:.3f}",
            f"{100 * fit.within_10pct:.0f}%",
            f"{100 * fit.median_abs_error:.1f}%",
            f"{100 * fit.max_abs_error:.1f}%",
        )
    console.print(quality)
    parameters = calibration.parameters
    table = rich.table.Table(
        title=f"fitted parameters ({parameters.combine} roofline, constant "
        f"{parameters.constant_ms:.3f} ms per inference)",
        title_justify="left",
    )
    for column in ("group", "compute x", "memory x", "us per kernel"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group in GROUPS:
        table.add_row(
            group,
            f"{parameters.compute_scale[group]:.3g}",
            f"{parameters.memory_scale[group]:.3g}",
            f"{parameters.launch_us[group]:.3g}",
        )
    console.print(table)
    console.print(
        f"saved {path}; `EstimateProvider({profile.name!r}, cache_path={str(args.cache)!r})` "
        "and `jetsearch latency estimate --cache` now use it"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# the parser


def add_parsers(subparsers: Any) -> None:
    """Register ``latency`` with its ``measure``, ``estimate`` and ``calibrate`` subcommands.

    Each sets ``func``, a handler taking the parsed arguments and returning the exit code.
    """
    from jetsearch.latency.estimate import PRECISIONS, profile_names

    latency = subparsers.add_parser(
        "latency",
        help="measure, estimate or calibrate the latency of one network",
        description="Measure a network's latency here or on board workers, estimate it from a "
        "device profile, or calibrate a profile's estimates on cached measurements.",
        epilog=__doc__.split("Examples::", 1)[1].split("``measure``")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = latency.add_subparsers(dest="latency_command", required=True, metavar="ACTION")

    measure = actions.add_parser(
        "measure",
        help="export a network to ONNX and time it (here or on workers); store it in the cache",
    )
    measure.add_argument(
        "config", help="preset name (nano, agx, workstation), config YAML, or an ONNX file"
    )
    measure.add_argument(
        "--size", type=parse_size, default=DEFAULT_SIZE, help="input HxW (default 360x480)"
    )
    measure.add_argument(
        "--provider",
        choices=("local", "worker"),
        default="local",
        help="local: onnxruntime on this machine; worker: board workers (default local)",
    )
    measure.add_argument("--workers", help="worker: comma-separated worker URLs")
    measure.add_argument("--token-file", help="worker: file holding the workers' token")
    measure.add_argument("--target", help="worker: the target the workers serve (e.g. agx)")
    measure.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 or fp16 (default: fp32 here, else the workers'); fp16 asked of this CPU is "
        "measured at fp32 and flagged precision-fallback-fp32",
    )
    measure.add_argument(
        "--execution-provider",
        choices=("cpu", "cuda", "tensorrt"),
        default="cpu",
        help="local: onnxruntime execution provider (default cpu)",
    )
    measure.add_argument(
        "--threads", type=int, default=2, help="local: onnxruntime threads (default 2)"
    )
    measure.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    measure.add_argument(
        "--warmup", type=float, default=1.0, metavar="S", help="warm-up seconds (default 1)"
    )
    measure.add_argument(
        "--cache",
        default=DEFAULT_CACHE,
        help=f"latency cache (default {DEFAULT_CACHE}; '' to not store)",
    )
    measure.add_argument(
        "--fresh", action="store_true", help="measure even when the cache holds a result"
    )
    measure.set_defaults(func=cmd_measure)

    estimate = actions.add_parser(
        "estimate", help="estimate a network's latency from a device profile (labelled as such)"
    )
    estimate.add_argument("config", help="preset name (nano, agx, workstation) or config YAML")
    estimate.add_argument(
        "--size", type=parse_size, default=DEFAULT_SIZE, help="input HxW (default 360x480)"
    )
    estimate.add_argument(
        "--profile", required=True, help=f"device profile: {', '.join(profile_names())}"
    )
    estimate.add_argument(
        "--precision", choices=PRECISIONS, help="default: the profile's (fp16 on Jetsons)"
    )
    estimate.add_argument(
        "--cache", help="latency cache whose calibration of the profile to use (if any)"
    )
    estimate.add_argument(
        "--top", type=int, default=8, help="how many top layers to list (default 8)"
    )
    estimate.set_defaults(func=cmd_estimate)

    calibrate = actions.add_parser(
        "calibrate", help="fit a profile's estimates to the cache's measurements and save it"
    )
    calibrate.add_argument(
        "--profile", required=True, help=f"device profile: {', '.join(profile_names())}"
    )
    calibrate.add_argument("--cache", required=True, help="latency cache holding measurements")
    calibrate.add_argument(
        "--target-key", help="which measured target to fit (needed when the cache holds several)"
    )
    calibrate.add_argument(
        "--precision", choices=PRECISIONS, help="default: the profile's (fp16 on Jetsons)"
    )
    calibrate.set_defaults(func=cmd_calibrate)
