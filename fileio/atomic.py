"""Atomic file writes: the one place that writes a file so that a crash never leaves half of it.

Every writer goes through `atomic_write`: the content is written to a temporary file in the target's
folder (same file system, so the rename is atomic), flushed and fsynced, then renamed over the target.
If anything fails (the writer raises, the disk fills, the process is interrupted) the temporary file
is removed and the target is left as it was: the old file, or no file. Parent folders are created.

JSON and non-finite numbers: standard JSON has no NaN or infinity (Python's `json` would write the
tokens `NaN` / `Infinity`, which other readers refuse). `atomic_write_json(..., nonfinite=...)` says
what happens to them:

* `"error"` (default): a `ValueError` naming the offending key path (e.g. `metrics.seg.mIoU`), and
  nothing is written;
* `"null"`: every NaN / +inf / -inf is written as `null` (for results where "undefined" is a
  legitimate value, e.g. a similarity score whose layer weights sum to zero).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

NONFINITE_POLICIES = ("error", "null")


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


def _finite(obj: Any, policy: str, where: str) -> Any:
    """A copy of `obj` with non-finite floats handled by `policy` (see the module docstring)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if policy == "null":
            return None
        raise ValueError(f"cannot write {obj} at {where or 'the top level'} as JSON (non-finite numbers are "
                         f"not JSON; write them as null with nonfinite='null')")
    if isinstance(obj, Mapping):
        return {key: _finite(value, policy, f"{where}.{key}" if where else str(key)) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value, policy, f"{where}[{i}]") for i, value in enumerate(obj)]
    return obj


def json_text(obj: Any, nonfinite: str = "error", indent: int | None = 2) -> str:
    """`obj` as standard JSON text (with a final newline); non-finite numbers per `nonfinite`."""
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
    return json.dumps(_finite(obj, nonfinite, ""), indent=indent, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, nonfinite: str = "error", indent: int | None = 2) -> Path:
    """Standard JSON (no NaN / Infinity tokens), written atomically; see the module docstring."""
    return atomic_write_text(path, json_text(obj, nonfinite, indent))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` written atomically (checkpoints, compact exports)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))
