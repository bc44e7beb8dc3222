"""ONNX export with dynamic batch and spatial size, and an onnxruntime parity check.

The exported graph holds only standard ONNX operators that TensorRT builds. Before export the
network is turned into its deploy form (:func:`deploy_copy`): every merged JetConv step becomes
a plain ``Conv`` with its assembled weight, so the file holds exactly the convolutions that run.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .layers.jetconv import FusedPointwise, MergedDepthwise

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"

# Operators TensorRT's ONNX parser builds (a superset of what JetSeg emits).
TENSORRT_OPS = frozenset(
    [
        "Add",
        "Cast",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "Div",
        "Exp",
        "Gather",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "MatMul",
        "Max",
        "Min",
        "Mul",
        "Pad",
        "ReduceMax",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Resize",
        "Shape",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "Squeeze",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "BatchNormalization",
        "Range",
        "Equal",
        "Where",
        "Expand",
        "Floor",
        "Ceil",
        "Sqrt",
        "Pow",
    ]
)


def _plain_conv(module: MergedDepthwise | FusedPointwise) -> nn.Conv2d:
    weight = module.weight().detach().clone()
    if isinstance(module, FusedPointwise):
        conv = nn.Conv2d(module.in_chs, module.out_chs, 1, groups=module.groups, bias=False)
    else:
        reach = (module.size - 1) * module.step // 2
        kh, kw = weight.shape[-2:]
        if module.axis == "h":
            stride, pad, dil, groups = (module.stride, 1), (reach, 0), (module.step, 1), module.chs
        elif module.axis == "w":
            stride, pad, dil, groups = (
                (1, module.stride),
                (0, reach),
                (1, module.step),
                module.out_chs,
            )
        else:
            stride, pad, dil, groups = 1, reach, 1, module.out_chs
        in_chs = module.chs if module.axis == "h" else module.out_chs
        conv = nn.Conv2d(in_chs, module.out_chs, (kh, kw), stride, pad, dil, groups, bias=False)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    return conv


def deploy_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose merged JetConv steps are plain convolutions (same outputs)."""
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (MergedDepthwise, FusedPointwise)):
                setattr(module, child_name, _plain_conv(child))
        del name
    return model


def export_onnx(
    model: nn.Module,
    path: str | Path | None = None,
    *,
    input_size: tuple[int, int] = (360, 480),
    opset: int = DEFAULT_OPSET,
    in_channels: int = 3,
) -> bytes:
    """Export to ONNX with dynamic batch, height and width; returns the bytes (and writes them).

    ``input_size`` is only the example used for tracing: the graph accepts any size. The file is
    written atomically.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; 17 or newer is required")
    deploy = deploy_copy(model).cpu()
    example = torch.zeros(1, in_channels, *input_size)
    buffer = io.BytesIO()
    dyn = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python values
        torch.onnx.export(
            deploy,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: dyn, OUTPUT_NAME: dyn},
            do_constant_folding=True,
            dynamo=False,
        )
    data = buffer.getvalue()
    check_standard_ops(data)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def check_standard_ops(onnx_model: bytes | str | Path) -> dict[str, int]:
    """Operator counts of a graph; raises if any op is custom or outside what TensorRT builds."""
    import onnx

    proto = (
        onnx.load_from_string(onnx_model)
        if isinstance(onnx_model, bytes)
        else onnx.load(str(onnx_model))
    )
    onnx.checker.check_model(proto)
    counts: dict[str, int] = {}
    bad = []
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_OPS:
            bad.append(f"{node.domain or 'ai.onnx'}::{node.op_type} ({node.name})")
    if bad:
        raise ValueError("graph holds operators TensorRT does not build: " + ", ".join(bad))
    return counts


def onnx_session(onnx_model: bytes | str | Path, threads: int | None = None):
    """An onnxruntime CPU session for a model (bytes or path)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def check_parity(
    model: nn.Module,
    onnx_model: bytes | str | Path,
    sizes: Sequence[tuple[int, int]] = ((360, 480), (250, 333)),
    batch: int = 1,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[tuple[int, int], float]:
    """Run PyTorch and onnxruntime on the same random inputs; the max abs difference per size.

    Raises ``AssertionError`` naming the size when a difference exceeds ``atol``.
    """
    session = onnx_session(onnx_model)
    model = model.eval()
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for h, w in sizes:
        x = torch.randn(batch, 3, h, w, generator=gen)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            raise AssertionError(f"at {h}x{w}: ONNX output {got.shape} != PyTorch {expected.shape}")
        diff = float(np.abs(got - expected).max())
        diffs[(h, w)] = diff
        if not diff <= atol:
            raise AssertionError(f"at {h}x{w}: ONNX and PyTorch differ by {diff:.2e} > {atol:.0e}")
    return diffs
