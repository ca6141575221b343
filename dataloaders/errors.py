"""`DataError`: the one exception the data package raises for bad data or a bad data set-up."""
from __future__ import annotations

import re

_WORKER_RERAISE = re.compile(r"^Caught \w+ in DataLoader worker process (\d+)")
_ORIGINAL_LINE = re.compile(r"^\s*(?:[\w.]+\.)?DataError: (.*\S)\s*$")


class DataError(ValueError):
    """A missing, unreadable or inconsistent dataset; `str(error)` is always one line.

    The CLIs print the first line of a `ValueError` as `error: <message>`. A DataError raised inside a
    DataLoader worker comes back to the main process re-built from a multi-line text (PyTorch's
    "Caught DataError in DataLoader worker process N ... Original Traceback ..."); the constructor
    recovers the original one-line message from it, so the user sees the same line either way.
    """

    def __init__(self, message: object = "") -> None:
        text = str(message)
        if "\n" in text:
            text = _one_line(text)
        super().__init__(text)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    worker = _WORKER_RERAISE.match(lines[0]) if lines else None
    for line in reversed(lines):
        found = _ORIGINAL_LINE.match(line)
        if found:
            suffix = f" (in DataLoader worker {worker.group(1)})" if worker else ""
            return found.group(1) + suffix
    return " ".join(line.strip() for line in lines if line.strip())
