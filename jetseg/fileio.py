"""Atomic file writes and bounded file reads.

Atomic writes: a reader sees the old file or the new one, never half of either.

Every file that a crash or an interrupt must not corrupt (checkpoints, ``run.json``, the
rewritten ``metrics.jsonl``, exported configs) goes through :func:`atomic_write_bytes`::

    >>> atomic_write_text(Path("runs/nano/run.json"), json.dumps(run) + "\\n")
    >>> atomic_write_bytes(Path("runs/nano/last.pt"), lambda handle: torch.save(state, handle))

The data goes to a temporary file in the target's directory (so that ``os.replace`` stays on
one file system and is atomic there), is flushed and fsynced, then replaces the target. A
failed or interrupted write removes its temporary file and leaves the target as it was.

Bounded reads: every file a user hands the tool (config, space and study YAML, ONNX models,
image frames) is read through :func:`read_bytes_bounded` or :func:`open_image`, which refuse a
file past a size limit before reading it, naming the file, its size and the limit::

    >>> read_bytes_bounded(Path("huge.yaml"), MIB, "YAML file")
    Traceback (most recent call last):
    ...
    FileTooLargeError: YAML file huge.yaml is 2.0 GiB (2147483648 bytes), over the limit of 1.0 MiB
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MIB",
    "FileTooLargeError",
    "atomic_write_bytes",
    "atomic_write_text",
    "format_bytes",
    "open_image",
    "read_bytes_bounded",
]

MIB = 1024 * 1024

# The largest frame the tool trains or predicts at is 8192 x 8192 (the CLI's --size limit); a
# frame of more pixels would only be scaled down, after costing gigabytes to decode.
MAX_IMAGE_PIXELS = 8192 * 8192
# A PNG or JPEG of MAX_IMAGE_PIXELS is well under this; a larger file is not a camera frame.
MAX_IMAGE_BYTES = 256 * MIB


def atomic_write_bytes(
    path: str | Path, data_or_writer: bytes | Callable[[BinaryIO], object]
) -> Path:
    """Write ``data_or_writer`` to ``path`` atomically; returns the path.

    Args:
        path: the file to write; missing parent folders are created.
        data_or_writer: the bytes, or a callable that writes them to the binary handle it is
            given (``lambda handle: torch.save(state, handle)``), so that large payloads are
            streamed instead of built in memory first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per write: two writers of one file never share a temporary file. The
    # leading dot keeps it out of globs such as overlays/*.png.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 honours the umask, as a plain open() of the target would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data_or_writer):
                data_or_writer(handle)
            else:
                handle.write(data_or_writer)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not every platform can open a directory (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# bounded reads


class FileTooLargeError(ValueError):
    """A file refused before it was read: over its byte limit, or an image of too many pixels.

    A ``ValueError``, so that the CLI reports it in one line with exit code 2. ``path`` names
    the file, ``size`` and ``limit`` are in bytes (or in pixels, for an image's pixel count).
    """

    def __init__(self, message: str, path: Path, size: int, limit: int) -> None:
        super().__init__(message)
        self.path = path
        self.size = size
        self.limit = limit


def format_bytes(count: int) -> str:
    """``2147483648`` -> ``2.0 GiB``: a byte count for a message."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _too_large(path: Path, size: int, limit: int, what: str) -> FileTooLargeError:
    return FileTooLargeError(
        f"{what} {path} is {format_bytes(size)} ({size} bytes), over the limit of "
        f"{format_bytes(limit)}",
        path,
        size,
        limit,
    )


def read_bytes_bounded(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, or :class:`FileTooLargeError` when it holds more than ``limit``.

    The size is checked before anything is read, so a 100 GB file (or a sparse one that only
    claims to be) costs one ``stat``. At most ``limit + 1`` bytes are then read, so a file that
    grows meanwhile, or one whose size the file system does not report (``/proc``, devices), is
    refused just the same. ``what`` names the kind of file in the message (``"YAML file"``).
    """
    path = Path(path)
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise _too_large(path, size, limit, what)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _too_large(path, len(data), limit, what)
    return data


def open_image(
    path: str | Path,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """``PIL.Image.open(path)``, refusing a file of over ``max_bytes`` or ``max_pixels``.

    The pixel count is read from the header, before anything is decoded: a small PNG that
    claims to be 100000 x 100000 pixels is refused without allocating its 30 GB. The image is
    returned unloaded (call ``load()`` or ``verify()``); the caller closes it. Raises
    :class:`FileTooLargeError` (a ``ValueError``) for a file or image too large, and whatever
    ``Image.open`` raises otherwise (``FileNotFoundError``, ``UnidentifiedImageError``, ...).
    ``PIL.Image.MAX_IMAGE_PIXELS`` is left as it is: this check holds whatever it is set to.
    """
    from PIL import Image

    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise _too_large(path, size, max_bytes, "image")
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:
        # Pillow's own ceiling (twice its MAX_IMAGE_PIXELS) is above ours: the image is over
        # both, and Pillow's message says how many pixels it claims.
        raise FileTooLargeError(
            f"image {path} is over the limit of {max_pixels} pixels (Pillow: {error})",
            path,
            max_pixels + 1,
            max_pixels,
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise FileTooLargeError(
            f"image {path} is {width}x{height} ({width * height} pixels), over the limit of "
            f"{max_pixels} pixels",
            path,
            width * height,
            max_pixels,
        )
    return image
