"""Atomic file writes: the one place that writes a file so that a crash never leaves half of it.

Every writer goes through `atomic_write`: the content is written to a temporary file in the target's
folder (same file system, so the rename is atomic), flushed and fsynced, then renamed over the target.
If anything fails (the writer raises, the disk fills, the process is interrupted) the temporary file
is removed and the target is left as it was: the old file, or no file. Parent folders are created.
JSON files are written by `fileio.json_file.atomic_write_json` on top of these.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(handle)` on a temporary binary file beside `path`, fsync, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, newlines written as given (no platform translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` written atomically (checkpoints, compact exports)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))
