"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file that a crash or an interrupt must not corrupt (checkpoints, ``run.json``, the
rewritten ``metrics.jsonl``, exported configs) goes through :func:`atomic_write_bytes`::

    >>> atomic_write_text(Path("runs/nano/run.json"), json.dumps(run) + "\\n")
    >>> atomic_write_bytes(Path("runs/nano/last.pt"), lambda handle: torch.save(state, handle))

The data goes to a temporary file in the target's directory (so that ``os.replace`` stays on
one file system and is atomic there), is flushed and fsynced, then replaces the target. A
failed or interrupted write removes its temporary file and leaves the target as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_text"]


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
