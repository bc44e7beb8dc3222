"""What machine a benchmark ran on, printed with every figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(threads: int | None = None) -> str:
    import torch

    parts = [
        f"CPU: {cpu_model()}",
        f"{os.cpu_count()} logical cores",
        f"torch {torch.__version__}",
    ]
    if threads is not None:
        parts.append(f"{threads} threads")
    try:
        import onnxruntime as ort

        parts.append(f"onnxruntime {ort.__version__}")
    except ImportError:
        pass
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        parts.append("no GPU")
    return ", ".join(parts)
