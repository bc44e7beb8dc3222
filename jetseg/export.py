"""ONNX export: deploy form, metadata, simplification, and onnxruntime parity checks.

The exported graph holds only standard ONNX operators that TensorRT builds. Before export the
network is turned into its deploy form (:func:`deploy_copy`): every merged JetConv step becomes
a plain ``Conv`` with its assembled weight, so the file holds exactly the convolutions that run.

A file from :func:`export_onnx` is ready to deploy as it is::

    >>> data = export_onnx(build_model("nano"), "nano.onnx", input_size=(360, 480))
    >>> read_metadata(data)["class_names"][:3]
    ['Sky', 'Building', 'Pole']

- batch, height and width are dynamic (``batch``, ``height``, ``width``); the class dimension
  of ``logits`` is static, so a consumer knows the output layout without running the graph;
- it is simplified (:func:`simplify_onnx`: constant folding, identity and redundant-node
  removal, hardware-independent fusions), and the simplified graph's outputs were checked
  against the traced graph's on a random input (:func:`check_simplified`);
- its ``metadata_props`` (:data:`METADATA_KEYS`, read back with :func:`read_metadata`) name the
  classes, the architecture hash, the full config YAML, the tracing input size and the jetseg
  version, so a file can always be traced back to the network that made it.
"""

from __future__ import annotations

import copy
import io
import json
import operator
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .layers.jetconv import FusedPointwise, MergedDepthwise

if TYPE_CHECKING:
    import onnx

    from .config import JetSegConfig

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}

# The simplified graph must reproduce the traced one this closely on a random input.
SIMPLIFY_ATOL = 1e-4
# The largest input the simplification check runs at. The check compares graph with graph, so
# a small input finds a wrong rewrite as surely as a full frame does, at a fraction of the cost
# (a study exports every trial); below the tracing size it also shows a shape folded into a
# constant, which would break the dynamic axes.
SIMPLIFY_CHECK_SIZE = (96, 128)

# metadata_props keys; JSON-encoded values except the config (YAML) and the plain strings.
META_CLASS_NAMES = "class_names"  # JSON list, index = class id
META_NUM_CLASSES = "num_classes"  # JSON int
META_ARCH_HASH = "arch_hash"
META_CONFIG = "config"  # the YAML that jetseg.load_config reads back
META_INPUT_SIZE = "input_size"  # JSON [height, width] the graph was traced at
META_VERSION = "jetseg_version"
META_GRAPH_OPTIMIZATION = "graph_optimization"  # how the graph was simplified, or "none"
METADATA_KEYS = (
    META_CLASS_NAMES,
    META_NUM_CLASSES,
    META_ARCH_HASH,
    META_CONFIG,
    META_INPUT_SIZE,
    META_VERSION,
    META_GRAPH_OPTIMIZATION,
)
_JSON_KEYS = frozenset([META_CLASS_NAMES, META_NUM_CLASSES, META_INPUT_SIZE])


class ExportError(RuntimeError):
    """An export that produced a graph not fit to ship (changed outputs, lost dynamic axes)."""


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
    in_channels: int | None = None,
    config: JetSegConfig | None = None,
    class_names: Sequence[str] | None = None,
    simplify: bool = True,
) -> bytes:
    """Export to ONNX with dynamic batch, height and width; returns the bytes (and writes them).

    ``input_size`` is only the example used for tracing (and is recorded in the metadata): the
    graph accepts any size. ``config`` defaults to ``model.config``, which
    :func:`jetseg.build_model` sets; it fixes the static class dimension and the metadata.
    ``class_names`` default to the CamVid classes when the class count is CamVid's, and to
    ``class_0``, ``class_1``, ... otherwise. ``in_channels`` defaults to the config's.

    With ``simplify`` (the default) the traced graph is simplified by :func:`simplify_onnx` and
    the result checked against it by :func:`check_simplified`, which raises
    :class:`ExportError` when the two disagree. The file is written atomically.
    """
    from .config import JetSegConfig

    if opset < 17:
        raise ValueError(f"opset {opset} is too old; 17 or newer is required")
    config = config if config is not None else getattr(model, "config", None)
    if not isinstance(config, JetSegConfig):
        raise ValueError(
            "export_onnx needs the network's JetSegConfig for the output shape and the file's "
            "metadata: pass config=..., or export a model built by jetseg.build_model"
        )
    if in_channels is None:
        in_channels = config.in_channels
    elif in_channels != config.in_channels:
        raise ValueError(
            f"in_channels={in_channels} does not match the config's in_channels="
            f"{config.in_channels}"
        )
    height, width = _check_size(input_size)
    names = _resolve_class_names(config.num_classes, class_names)

    import onnx

    traced = _trace(model, in_channels, (height, width), opset)
    proto = onnx.load_from_string(traced)
    # The exporter names the channel dimension symbolically (it comes out of a Resize); it is
    # the class count for every input, so say so.
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = config.num_classes
    optimization = "none"
    if simplify:
        reference = proto.SerializeToString()
        simplified = simplify_onnx(reference)
        check_simplified(reference, simplified, _check_input_shape(in_channels, height, width))
        proto = onnx.load_from_string(simplified)
        optimization = _simplifier_label()
    _check_signature(proto, in_channels, config.num_classes)
    _set_metadata(
        proto,
        export_metadata(
            config, class_names=names, input_size=(height, width), graph_optimization=optimization
        ),
    )
    data = proto.SerializeToString()
    check_standard_ops(data)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def _check_size(input_size: Sequence[int]) -> tuple[int, int]:
    try:
        size = tuple(operator.index(v) for v in input_size)  # ints, numpy ints; never floats
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"input_size must be (height, width) as positive ints, got {input_size!r}")
    return size[0], size[1]


def _check_input_shape(in_channels: int, height: int, width: int) -> tuple[int, int, int, int]:
    return (1, in_channels, min(height, SIMPLIFY_CHECK_SIZE[0]), min(width, SIMPLIFY_CHECK_SIZE[1]))


def _resolve_class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        from .data.camvid import CAMVID_CLASSES

        if num_classes == len(CAMVID_CLASSES):
            return list(CAMVID_CLASSES)
        return [f"class_{i}" for i in range(num_classes)]
    names = list(class_names)
    if len(names) != num_classes or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"class_names must be {num_classes} non-empty strings (the config's num_classes), "
            f"got {len(names)}: {names!r}"
        )
    return names


def _trace(model: nn.Module, in_channels: int, size: tuple[int, int], opset: int) -> bytes:
    """The deploy form of ``model`` traced to ONNX, dynamic batch/H/W, as torch writes it."""
    deploy = deploy_copy(model).cpu()
    example = torch.zeros(1, in_channels, *size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python values
        torch.onnx.export(
            deploy,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: DYNAMIC_AXES},
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def simplify_onnx(onnx_model: bytes) -> bytes:
    """The graph after onnxruntime's basic, hardware-independent offline optimisation.

    ``ORT_ENABLE_BASIC`` folds constants, removes redundant nodes (``Identity``, no-op
    ``Slice`` / ``Unsqueeze`` / ``Dropout``) and fuses ``Conv`` with a following ``Add``,
    ``Mul`` or ``BatchNormalization``; every rewrite yields standard ONNX operators, so the file
    still builds in TensorRT. (The extended and layout levels would write onnxruntime's own
    ``com.microsoft`` operators.) onnxruntime declares every domain it knows in the written
    file; only the domains the nodes use are kept.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="jetseg-onnx-") as tmp:
        target = Path(tmp) / "simplified.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(target)
        # Creating the session writes the file; nothing runs, so one thread is plenty.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])
        proto = onnx.load(str(target))
    used = {node.domain or "" for node in proto.graph.node} | {""}
    kept = [op for op in proto.opset_import if (op.domain or "") in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto.SerializeToString()


def _simplifier_label() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} ORT_ENABLE_BASIC"


def check_simplified(
    reference: bytes,
    candidate: bytes,
    input_shape: Sequence[int],
    *,
    atol: float = SIMPLIFY_ATOL,
    seed: int = 0,
) -> float:
    """Run two graphs on one random input, each exactly as written; their max abs difference.

    Used to check a simplified graph against the graph it came from. Both run in onnxruntime
    with its own graph optimisations off, so the comparison is between the files themselves.
    Raises :class:`ExportError` when the output shapes differ or the difference exceeds
    ``atol`` (or is not finite).
    """
    x = np.random.default_rng(seed).standard_normal(tuple(input_shape), dtype=np.float32)
    expected, got = (_run_as_written(graph, x) for graph in (reference, candidate))
    shape = "x".join(str(d) for d in input_shape)
    if got.shape != expected.shape:
        raise ExportError(
            f"simplifying the ONNX graph changed its output shape on a {shape} input: "
            f"{got.shape} != {expected.shape}; export with simplify=False to keep the graph "
            "as traced"
        )
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:
        raise ExportError(
            f"simplifying the ONNX graph changed its outputs: max abs difference {diff:.2e} > "
            f"{atol:.0e} on a random {shape} input; export with simplify=False to keep the "
            "graph as traced"
        )
    return diff


def _run_as_written(onnx_model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _check_signature(proto: onnx.ModelProto, in_channels: int, num_classes: int) -> None:
    """The graph's input and output are (batch, C, height, width) with only C static."""
    for value, channels in (
        (proto.graph.input[0], in_channels),
        (proto.graph.output[0], num_classes),
    ):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        want = [DYNAMIC_AXES[0], channels, DYNAMIC_AXES[2], DYNAMIC_AXES[3]]
        if dims != want:
            raise ExportError(
                f"ONNX {value.name!r} has shape {dims}, expected {want} "
                "(dynamic batch/height/width, static channels)"
            )


def export_metadata(
    config: JetSegConfig,
    *,
    class_names: Sequence[str],
    input_size: tuple[int, int],
    graph_optimization: str = "none",
) -> dict[str, str]:
    """The ``metadata_props`` of an exported file, as the strings ONNX stores."""
    from . import __version__
    from .config import arch_hash, dump_config

    return {
        META_CLASS_NAMES: json.dumps(list(class_names)),
        META_NUM_CLASSES: json.dumps(config.num_classes),
        META_ARCH_HASH: arch_hash(config),
        META_CONFIG: dump_config(config),
        META_INPUT_SIZE: json.dumps(list(input_size)),
        META_VERSION: __version__,
        META_GRAPH_OPTIMIZATION: graph_optimization,
    }


def _set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    from . import __version__

    proto.producer_name = "jetseg"
    proto.producer_version = __version__
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(onnx_model: bytes | str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, with the JSON-encoded values decoded.

    ``class_names`` is a list, ``num_classes`` an int, ``input_size`` a ``(height, width)``
    tuple; ``config`` stays YAML text (``jetseg.load_config(yaml.safe_load(text))`` rebuilds
    it). A file from another exporter gives whatever keys it holds, as strings.
    """
    import onnx

    proto = (
        onnx.load_from_string(onnx_model)
        if isinstance(onnx_model, bytes)
        else onnx.load(str(onnx_model), load_external_data=False)
    )
    meta: dict[str, Any] = {}
    for entry in proto.metadata_props:
        meta[entry.key] = json.loads(entry.value) if entry.key in _JSON_KEYS else entry.value
    if META_INPUT_SIZE in meta:
        meta[META_INPUT_SIZE] = tuple(meta[META_INPUT_SIZE])
    return meta


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
