"""Batches of any structure, and forwards that leave the model as it was.

A batch is whatever a data loader yields: a dict (`{"img": x, "seg": y, ...}`, the project's layout), a
tuple `(inputs, targets)`, or any nesting of dicts, lists and tuples with tensors inside. Saliency,
dynamic sparse training and ownership inference move such batches to a device and split them along the
batch dimension through this module, so none of them assumes a layout.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


def to_device(batch: Any, device: torch.device | str | None) -> Any:
    """The same structure with every tensor moved to `device` (unchanged when `device` is None)."""
    if device is None:
        return batch
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [to_device(v, device) for v in batch]
        if hasattr(batch, "_fields"):                    # a namedtuple
            return type(batch)(*items)
        return type(batch)(items)
    return batch


def batch_size(batch: Any) -> int | None:
    """The leading dimension of the first tensor (with at least one dimension) inside `batch`."""
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = batch_size(value)
        if size is not None:
            return size
    return None


def _per_sample_list(value: Any, size: int) -> bool:
    """A list of plain per-sample values (e.g. image names), as opposed to a container of fields."""
    return (isinstance(value, (list, tuple)) and not hasattr(value, "_fields") and len(value) == size
            and all(not torch.is_tensor(v) and not isinstance(v, (dict, list, tuple)) for v in value))


def _slice(value: Any, size: int, a: int, b: int) -> Any:
    if torch.is_tensor(value):
        return value[a:b] if value.dim() > 0 and value.shape[0] == size else value
    if _per_sample_list(value, size):
        return value[a:b]
    if isinstance(value, dict):
        return {k: _slice(v, size, a, b) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_slice(v, size, a, b) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split a batch along dim 0 into `parts` slices (fewer when the batch is smaller).

    Tensors whose first dimension is the batch size are sliced, and so are lists of plain per-sample
    values of that length (names); everything else is repeated in every slice."""
    size = batch_size(batch)
    if size is None:
        raise ValueError("the batch holds no tensor to split")
    parts = max(1, min(parts, size))
    bounds = [round(k * size / parts) for k in range(parts + 1)]
    return [_slice(batch, size, a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@contextmanager
def restored_buffers(net: nn.Module) -> Iterator[None]:
    """Run a probing forward: the module's buffers (BatchNorm running statistics, counters) are put back
    afterwards, so the probe does not count as training."""
    saved = [b.detach().clone() for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(net.buffers(), saved):
                buffer.copy_(value)
