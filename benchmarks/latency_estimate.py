"""How good is the latency estimate? Measure sampled networks here, calibrate on half, predict half.

    python benchmarks/latency_estimate.py [--n 40] [--size 360x480] [--seed 0] \\
        [--space jetseg] [--threads 2] [--cache lat.sqlite] [--json out.json]

Samples ``--n`` JetSeg networks (the three presets, then random configs of ``--space`` with
``--seed``), times each on this CPU with onnxruntime through LocalProvider (a fresh child
process per network, warm-up, then timed runs), and estimates each with the ``local`` device
profile. The networks are split in two halves at random (``--seed``); the ``local`` profile is
calibrated on one half and predicts the other, two ways:

* by totals: the roofline fitted to the calibration networks' measured totals;
* uncalibrated: the roofline with the profile's own figures.

Printed: the protocol, the held-out networks with predicted and measured latency, and Kendall
tau and the share within +-10% of the held-out half for each (targets: tau >= 0.85, >= 80%).
The held-out truth is always LocalProvider's ordinary measured median.

With ``--cache`` measurements are stored (with their configs) and reused by a rerun; run on a
quiet machine: another busy process on the same cores inflates and scatters the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from jetsearch.latency import LatencyCache, LocalProvider
from jetsearch.latency.estimate import FitQuality, calibrate, local_profile, network_cost, roofline
from jetsearch.latency.worker import cpu_model
from jetsearch.space import load_space
from jetseg.config import arch_hash, dump_config, load_config, preset_names
from jetseg.export import export_onnx
from jetseg.model import build_model

TARGET_TAU = 0.85
TARGET_WITHIN = 0.80


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW, got {text!r}") from None
    return height, width


def _measure_all(configs: list, args: argparse.Namespace, provider: LocalProvider) -> list[Any]:
    """One LatencyResult per config (from the cache when it holds one, else measured and stored)."""
    height, width = args.size
    cache = LatencyCache(args.cache) if args.cache else None
    target_key = provider.target_fingerprint_key()
    results = []
    for i, config in enumerate(configs):
        shape = (1, config.in_channels, height, width)
        digest = arch_hash(config)
        result = cache.get(digest, shape, target_key) if cache is not None else None
        source = "cached"
        if result is None:
            onnx_bytes = export_onnx(build_model(config), input_size=(height, width))
            started = time.perf_counter()
            result = provider.measure(onnx_bytes, shape)
            source = f"measured in {time.perf_counter() - started:.1f} s"
            if cache is not None:
                extra = {"config_yaml": dump_config(config), "name": config.name}
                cache.put(digest, shape, target_key, result, extra=extra)
                cache.record_config(config)
        flags = f" [{', '.join(result.flags)}]" if result.flags else ""
        line = (
            f"  {i + 1:3d}/{len(configs)} {config.name:<14} {result.median_ms:9.3f} ms "
            f"(cv {result.cv:.3f}, {result.timed_runs} runs, {source}){flags}"
        )
        print(line, flush=True)
        results.append(result)
    return results


def _quality_line(label: str, quality: FitQuality) -> str:
    tau_ok = "meets" if quality.kendall_tau >= TARGET_TAU else "MISSES"
    within_ok = "meets" if quality.within_10pct >= TARGET_WITHIN else "MISSES"
    return (
        f"{label:<14} Kendall tau {quality.kendall_tau:6.3f} ({tau_ok} {TARGET_TAU})   "
        f"within +-10%: {100 * quality.within_10pct:5.1f}% ({within_ok} "
        f"{100 * TARGET_WITHIN:.0f}%)   median |error| {100 * quality.median_abs_error:5.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="networks, presets included (>= 6)")
    parser.add_argument("--size", type=_size, default=(360, 480), help="input HxW")
    parser.add_argument("--seed", type=int, default=0, help="sampling and split seed")
    parser.add_argument("--space", default="jetseg", help="search space to sample (jetseg, nano)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per network")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per network (at least)")
    parser.add_argument("--cache", help="latency cache to store and reuse measurements")
    parser.add_argument("--json", help="write the protocol, every network and the figures here")
    args = parser.parse_args()
    if args.n < 6:
        parser.error("--n must be at least 6 (three to calibrate on, three to predict)")
    torch.set_num_threads(1)  # network costs and export only; the timing runs in its own process

    presets = [load_config(name) for name in preset_names()][: args.n]
    configs = presets + load_space(args.space).random_configs(args.n - len(presets), args.seed)
    provider = LocalProvider(
        threads=args.threads,
        warmup_s=args.warmup,
        min_runs=args.runs,
        max_runs=max(args.runs, 200),
    )
    profile = local_profile(args.threads)
    height, width = args.size
    protocol = {
        "machine": f"{cpu_model()} ({os.cpu_count()} logical cores, {platform.machine()})",
        "runtime": f"onnxruntime {provider.fingerprint()['runtime_version']}, CPU, fp32",
        "threads": args.threads,
        "warmup_s": args.warmup,
        "timed_runs": f">= {args.runs} (and >= {provider.target_s:g} s, <= {provider.max_runs})",
        "process": "a fresh child process per network",
        "input": f"1x3x{height}x{width}",
        "networks": f"{len(presets)} presets + {args.n - len(presets)} from space "
        f"{args.space!r} (seed {args.seed})",
        "profile": profile.source,
        "split": f"random halves (seed {args.seed}): calibrate on one, predict the other",
        "held-out truth": "LocalProvider's measured median (unprofiled)",
        "load": f"1-minute load average {os.getloadavg()[0]:.2f} at start "
        f"({os.cpu_count()} logical cores)",
    }
    print("protocol:")
    for key, value in protocol.items():
        print(f"  {key}: {value}")
    order = list(range(len(configs)))
    random.Random(args.seed).shuffle(order)
    fitting, held_out = sorted(order[: len(order) // 2]), sorted(order[len(order) // 2 :])
    print(f"\nmeasuring {len(configs)} networks:")
    results = _measure_all(configs, args, provider)
    measured = [result.median_ms for result in results]

    print("\nestimating (network costs at the same size)...", flush=True)
    costs = [network_cost(config, (height, width)) for config in configs]
    calibration = calibrate(
        [(configs[i], (height, width), measured[i]) for i in fitting],
        profile,
        target_key=provider.target_fingerprint_key(),
    )
    calibrated = [roofline(c, profile, None, calibration.parameters).total_ms for c in costs]
    uncalibrated = [roofline(c, profile).total_ms for c in costs]

    print(f"\nheld-out networks ({len(held_out)}; calibrated on the other {len(fitting)}):")
    print(
        f"{'network':<16}{'measured ms':>13}{'by totals':>11}"
        f"{'error':>8}{'uncalibrated':>14}{'error':>8}{'GFLOPs':>9}{'MB moved':>10}"
    )
    for i in held_out:
        print(
            f"{configs[i].name:<16}{measured[i]:>13.3f}{calibrated[i]:>11.3f}"
            f"{100 * (calibrated[i] / measured[i] - 1):>+7.1f}%{uncalibrated[i]:>14.3f}"
            f"{100 * (uncalibrated[i] / measured[i] - 1):>+7.1f}%"
            f"{costs[i].flops / 1e9:>9.3f}{costs[i].bytes / 1e6:>10.1f}"
        )
    truth = [measured[i] for i in held_out]
    held_calibrated = FitQuality.of([calibrated[i] for i in held_out], truth)
    held_uncalibrated = FitQuality.of([uncalibrated[i] for i in held_out], truth)
    print(f"\nheld-out half (n={len(held_out)}):")
    print("  " + _quality_line("by totals", held_calibrated))
    print("  " + _quality_line("uncalibrated", held_uncalibrated))
    print(
        f"fitting half (n={len(fitting)}), by totals: {calibration.fit.describe()}; "
        f"{calibration.parameters.combine} roofline, "
        f"constant {calibration.parameters.constant_ms:.3f} ms"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        payload = {
            "protocol": protocol,
            "profile": profile.to_dict(),
            "networks": [
                {
                    "name": config.name,
                    "arch_hash": arch_hash(config),
                    "half": "fit" if i in fitting else "held-out",
                    "measured_ms": measured[i],
                    "calibrated_ms": calibrated[i],
                    "uncalibrated_ms": uncalibrated[i],
                    "gflops": costs[i].flops / 1e9,
                    "mb_moved": costs[i].bytes / 1e6,
                }
                for i, config in enumerate(configs)
            ],
            "held_out": {
                "calibrated": held_calibrated.to_dict(),
                "uncalibrated": held_uncalibrated.to_dict(),
            },
            "calibration": calibration.to_dict(),
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
