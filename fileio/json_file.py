"""JSON files: standard JSON written atomically, and read back with one-line errors.

Standard JSON has no NaN or infinity (Python's `json` would write the tokens `NaN` / `Infinity`, which
other readers refuse). `atomic_write_json(..., nonfinite=...)` says what happens to them:

* `"error"` (default): a `ValueError` naming the offending key path (e.g. `seg.mIoU`), and nothing is
  written;
* `"null"`: every NaN / +inf / -inf is written as `null`, for results where "undefined" is a
  legitimate value (a metric with no valid pixel, a similarity score whose layer weights sum to zero).
  Readers of those files take null as "undefined" (`engine.delta_m` reads it as NaN).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .atomic import atomic_write_text

NONFINITE_POLICIES = ("error", "null")


def _finite(obj: Any, policy: str, where: str, found: list[str] | None = None) -> Any:
    """A copy of `obj` with non-finite floats handled by `policy` (see the module docstring); the key paths
    of the values made null are appended to `found`."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if policy == "null":
            if found is not None:
                found.append(where or "(top level)")
            return None
        raise ValueError(f"cannot write {obj} at {where or 'the top level'} as JSON (non-finite numbers are "
                         f"not JSON; write them as null with nonfinite='null')")
    if isinstance(obj, Mapping):
        return {key: _finite(value, policy, f"{where}.{key}" if where else str(key), found)
                for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value, policy, f"{where}[{i}]", found) for i, value in enumerate(obj)]
    return obj


def nonfinite_paths(obj: Any) -> list[str]:
    """The key paths (e.g. `seg.mIoU`) of the NaN / ±inf values in `obj`: what `nonfinite="null"` nulls."""
    found: list[str] = []
    _finite(obj, "null", "", found)
    return found


def json_text(obj: Any, nonfinite: str = "error", indent: int | None = 2) -> str:
    """`obj` as standard JSON text (with a final newline); non-finite numbers per `nonfinite`."""
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
    return json.dumps(_finite(obj, nonfinite, ""), indent=indent, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, nonfinite: str = "error", indent: int | None = 2) -> Path:
    """Standard JSON (no NaN / Infinity tokens), written atomically; see the module docstring."""
    return atomic_write_text(path, json_text(obj, nonfinite, indent))


def read_json(path: str | os.PathLike, what: str = "JSON file", expect: type | None = None) -> Any:
    """The parsed content of `path`; FileNotFoundError / ValueError with one line naming `what` and the file.

    `expect` (e.g. `dict`) refuses any other top-level type."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{what} {file} must hold a JSON {'object' if expect is dict else expect.__name__}")
    return data
