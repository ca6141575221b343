"""Run logs: JSON lines (one record per line, flushed at once) plus TensorBoard event files.

`RunLogger(dest, name)` appends to `{dest}/logs/{name}.jsonl` and writes TensorBoard events under
`{dest}/tb/{name}`. Every record is a flat-ish dict with an `iteration` and a `kind` (`train`, `val`,
`controller`, `eval`, `event`); numbers found in it (nested dicts flattened with `/`) also go to
TensorBoard as scalars named `{kind}/{key}`. A disabled logger (ranks other than 0) does nothing.

Resuming appends to the same JSON-lines file; records past the resumed iteration from the interrupted
run stay in the file (they are marked by a `{"kind": "event", "event": "resume"}` record).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, TextIO

import torch

from fileio import os_failure


def _plain(value: Any) -> Any:
    """JSON-safe copy: tensors -> numbers/lists, NaN/inf -> strings, paths -> str."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def flatten_numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """`{"a": {"b": 1}}` -> `{"a/b": 1.0}`, numbers only (bools and strings skipped)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, name + "/"))
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            out[name] = float(value.item())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class RunLogger:
    """JSON-lines + TensorBoard logger for one run. Use as a context manager or call `close()`.

    Nothing is created until the first record: a run that fails before it logs anything leaves no empty
    `logs/` or `tb/` folder behind. A failed write (a full disk) is a one-line `fileio.WriteError`."""

    def __init__(self, dest: str | os.PathLike, name: str, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.jsonl_path = Path(dest) / "logs" / f"{name}.jsonl"
        self.tb_dir = Path(dest) / "tb" / name
        self._file: Optional[TextIO] = None
        self._writer: Any = None

    def _open(self) -> None:
        try:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.jsonl_path, "a", encoding="utf-8")
        except OSError as exc:
            raise os_failure(self.jsonl_path, exc) from None
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(log_dir=str(self.tb_dir))
            except Exception as exc:  # tensorboard missing or broken: JSON lines still work
                warnings.warn(f"TensorBoard logging disabled ({type(exc).__name__}: {exc})", stacklevel=3)
                self._writer = None

    def log(self, kind: str, iteration: int | None = None, **fields: Any) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._open()
        assert self._file is not None
        record = {"kind": kind, "iteration": iteration, "time": round(time.time(), 3)}
        record.update(fields)
        try:
            self._file.write(json.dumps(_plain(record)) + "\n")
            self._file.flush()
        except OSError as exc:
            self._discard()
            raise os_failure(self.jsonl_path, exc) from None
        if self._writer is not None and iteration is not None:
            for key, value in flatten_numbers(fields).items():
                if math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, iteration)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def _discard(self) -> None:
        """Drop a log file that cannot be written (its buffered bytes cannot be flushed either)."""
        try:
            if self._file is not None:
                self._file.close()
        except OSError:
            pass
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON-lines log (for tests and analysis)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
