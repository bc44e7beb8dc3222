"""Size and batch-1 latency of every preset, in PyTorch eager and onnxruntime, on this machine.

    python benchmarks/model_speed.py [--threads 2] [--runs 50] [--sizes 360x480,512x512]

For each preset and input size: parameters, MACs, the paper's eq. 2 FLOPs, eager kernels, and
the median and p90 of batch-1 latency (warm-up runs discarded, raw samples kept in --json).
A CUDA GPU, when present, is timed too (eager, synchronised).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

from jetseg.complexity import profile  # noqa: E402
from jetseg.config import load_config, preset_names  # noqa: E402
from jetseg.export import export_onnx, onnx_session  # noqa: E402
from jetseg.model import build_model  # noqa: E402


def _time(fn, runs: int, warmup_s: float, sync=None) -> list[float]:
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def _stats(samples: list[float]) -> dict:
    return {
        "median_ms": statistics.median(samples),
        "p90_ms": float(np.percentile(samples, 90)),
        "samples_ms": [round(s, 4) for s in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per timing")
    parser.add_argument("--sizes", default="360x480,512x512")
    parser.add_argument("--presets", default=",".join(preset_names()))
    parser.add_argument("--json", help="write every figure and raw sample here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"machine: {describe(args.threads)}")
    print(f"batch 1, {args.warmup:.1f} s warm-up, {args.runs} timed runs, fp32\n")
    header = (
        f"{'preset':<12}{'size':>9}{'params':>11}{'MACs':>9}{'paper FLOPs':>13}{'kernels':>9}"
        f"{'eager med/p90 ms':>19}{'ORT med/p90 ms':>17}"
    )
    cuda = torch.cuda.is_available()
    if cuda:
        header += f"{'CUDA eager med/p90 ms':>24}"
    print(header)
    results = []
    for name in args.presets.split(","):
        model = build_model(load_config(name)).eval()
        onnx_bytes = export_onnx(model)
        session = onnx_session(onnx_bytes, threads=args.threads)
        for h, w in sizes:
            report = profile(model, (h, w))
            x = torch.randn(1, 3, h, w)
            with torch.inference_mode():
                eager = _stats(_time(lambda m=model, x=x: m(x), args.runs, args.warmup))
            xn = x.numpy()
            ort = _stats(
                _time(lambda s=session, xn=xn: s.run(None, {"image": xn}), args.runs, args.warmup)
            )
            row = {
                "preset": name,
                "size": [h, w],
                "params": report.params,
                "macs": report.macs,
                "paper_flops": report.flops,
                "kernels": report.kernels,
                "eager": eager,
                "onnxruntime": ort,
            }
            line = (
                f"{name:<12}{f'{h}x{w}':>9}{report.params:>11,}{report.macs / 1e9:>8.3f}G"
                f"{report.flops / 1e9:>12.3f}G{report.kernels:>9}"
                f"{eager['median_ms']:>11.1f} /{eager['p90_ms']:>5.1f}"
                f"{ort['median_ms']:>10.1f} /{ort['p90_ms']:>5.1f}"
            )
            if cuda:
                gpu_model = model.to("cuda")
                xg = x.to("cuda")
                with torch.inference_mode():
                    gpu = _stats(
                        _time(
                            lambda m=gpu_model, x=xg: m(x),
                            args.runs,
                            args.warmup,
                            torch.cuda.synchronize,
                        )
                    )
                model.to("cpu")
                row["cuda_eager"] = gpu
                line += f"{gpu['median_ms']:>16.2f} /{gpu['p90_ms']:>5.2f}"
            print(line, flush=True)
            results.append(row)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": describe(args.threads), "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
