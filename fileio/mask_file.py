"""The mask-set file: a mask set on its own, without model weights (docs/API.md, "Save and load masks").

`torch.save` of a plain dict that `torch.load(..., weights_only=True)` reads:

| key | value |
|---|---|
| `format` | `"disparse-masks"` |
| `version` | 1 |
| `masks` | param name -> BoolTensor (True = kept), one per prunable weight |
| `sparsity` | pruned fraction over all masks (float) |
| `tasks` | task names in order, or None |
| `owners` | param name -> list of the tasks using it, or None |
| `unowned` | names of prunable weights no task uses (list) |

Checkpoints carry their masks inside (`fileio.checkpoint`); this kind is for masks made outside our tools,
e.g. by the Python API in a user's own training code. Written atomically; every read failure is a one-line
`CheckpointError`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .atomic import atomic_save
from .checkpoint import CheckpointError, read_file

FORMAT = "disparse-masks"
VERSION = 1


@dataclass
class MaskFile:
    """What a mask-set file holds."""

    masks: dict[str, torch.Tensor]
    tasks: list[str] | None = None
    owners: dict[str, list[str]] | None = None
    unowned: list[str] = field(default_factory=list)
    sparsity: float = 0.0


def write_mask_file(path: str | os.PathLike, masks: Mapping[str, torch.Tensor], *,
                    tasks: Sequence[str] | None = None, owners: Mapping[str, Iterable[str]] | None = None,
                    unowned: Sequence[str] = ()) -> Path:
    """Write `masks` (and, when known, the task ownership they were made for) atomically to `path`."""
    if not masks:
        raise ValueError("refusing to write an empty mask set")
    plain = {}
    for name, mask in masks.items():
        if not torch.is_tensor(mask):
            raise TypeError(f"mask {name!r} is a {type(mask).__name__}, not a tensor")
        plain[str(name)] = mask.detach().to("cpu", torch.bool).contiguous().clone()
    kept = sum(int(m.count_nonzero()) for m in plain.values())
    total = sum(m.numel() for m in plain.values())
    data: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "masks": plain, "sparsity": 1.0 - kept / total if total else 0.0,
        "tasks": [str(t) for t in tasks] if tasks is not None else None,
        "owners": {str(n): sorted(map(str, o)) for n, o in owners.items()} if owners is not None else None,
        "unowned": [str(n) for n in unowned],
    }
    return atomic_save(data, path)


def read_mask_file(path: str | os.PathLike) -> MaskFile:
    """Read a mask-set file (`weights_only=True`), checking its format and that every mask is boolean."""
    data = read_file(path)
    if data.get("format") != FORMAT:
        found = data.get("format")
        hint = " (a checkpoint: read its masks with fileio.read_weights)" if found else ""
        raise CheckpointError(f"{path} is not a {FORMAT} file (format {found!r}){hint}")
    if int(data.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} has mask-file version {data['version']}, this code reads up to {VERSION}")
    masks = data.get("masks")
    if not isinstance(masks, Mapping) or not masks:
        raise CheckpointError(f"{path} holds no masks")
    for name, mask in masks.items():
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            raise CheckpointError(f"{path}: mask {name!r} is not a boolean tensor")
    owners = data.get("owners")
    return MaskFile(dict(masks), data.get("tasks"), dict(owners) if owners is not None else None,
                    list(data.get("unowned") or []), float(data.get("sparsity", 0.0)))
