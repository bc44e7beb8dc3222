"""Reading ONNX models and checking input shapes on the host, with the board worker's rules.

The worker's standard-library ONNX reader is reused here so that the host refuses exactly what a
board would refuse, before any process is started or any byte is sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jetsearch.latency import worker
from jetsearch.latency.base import InvalidModelError
from jetseg.fileio import MIB, FileTooLargeError, read_bytes_bounded


@dataclass(frozen=True)
class ModelInput:
    """The one input of an ONNX model: its name, element type and dims (int, str or None)."""

    name: str
    dtype: str
    dims: tuple[int | str | None, ...] | None

    @property
    def is_dynamic(self) -> bool:
        return self.dims is None or any(not (isinstance(d, int) and d > 0) for d in self.dims)


# A model file the host reads may be as large as a worker takes by default, and no larger: a
# model past it could not be measured on a board anyway, and reading an 8 GB file by mistake
# ends in a MemoryError instead of a message.
MAX_ONNX_BYTES = int(worker.DEFAULT_MAX_UPLOAD_MB * MIB)


def read_onnx_bytes(
    onnx_model: bytes | bytearray | memoryview | str | os.PathLike,
    *,
    max_bytes: int = MAX_ONNX_BYTES,
) -> bytes:
    """The model's bytes; a ``str`` or path-like names a file.

    A file over ``max_bytes`` (by default the worker's ``--max-upload-mb`` default) is refused
    before it is read, with :class:`InvalidModelError` naming the file, its size and the limit.
    """
    if isinstance(onnx_model, bytes | bytearray | memoryview):
        return bytes(onnx_model)
    if isinstance(onnx_model, str | os.PathLike):
        path = Path(onnx_model)
        if not path.is_file():
            if path.exists():
                raise InvalidModelError(f"ONNX model file {path} is not a regular file")
            raise InvalidModelError(f"ONNX model file {path} does not exist")
        try:
            return read_bytes_bounded(path, max_bytes, "ONNX model file")
        except FileTooLargeError as error:
            raise InvalidModelError(
                f"{error} (the default upload limit of a latency worker, --max-upload-mb "
                f"{worker.DEFAULT_MAX_UPLOAD_MB:g})"
                if max_bytes == MAX_ONNX_BYTES
                else str(error)
            ) from None
        except OSError as error:
            raise InvalidModelError(f"cannot read ONNX model file {path}: {error}") from None
    raise TypeError(f"onnx_model must be bytes or a path, got {type(onnx_model).__name__}")


def validate_input_shape(input_shape: object) -> tuple[int, ...]:
    """`input_shape` as (B, C, H, W) ints, or ValueError with the worker's limits in the message."""
    try:
        shape = worker.validate_input_shape(
            list(input_shape) if isinstance(input_shape, tuple) else input_shape
        )
    except worker.InputError as error:
        raise ValueError(str(error)) from None
    return tuple(shape)


def inspect_model(model: bytes, input_shape: tuple[int, ...]) -> ModelInput:
    """Check that `model` is ONNX with one float input that `input_shape` fits."""
    try:
        item = worker.model_input(worker.describe_onnx_model(model))
        worker.check_shape_against_input(list(input_shape), item)
    except worker.InputError as error:
        raise InvalidModelError(f"invalid ONNX model: {error}") from None
    dims = None if item["dims"] is None else tuple(item["dims"])
    return ModelInput(item["name"], worker.ONNX_ELEM_TYPE_NAMES[item["elem_type"]], dims)
