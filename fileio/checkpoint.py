"""Our checkpoint format (docs/ARCHITECTURE.md contract 4): plain dicts, safe loads, clear errors.

A checkpoint is `torch.save` of a dict that `torch.load(..., weights_only=True)` accepts: tensors,
numbers, strings, lists and dicts only. Pruned weights are stored as zeros in `model` and the mask
set rides beside them, so a dense loader can read a sparse checkpoint and get the pruned network.
Files are written with `fileio.atomic.atomic_save`; `fileio.load.load_weights` reads any file kind.

Masks, by format version: 2 (written now) stores each as `{"shape": [...], "bits": uint8 tensor}`, one
bit per weight (`fileio.bits.pack_mask`), so a pruned checkpoint is about 1.03x a dense one; 1 stored
bool tensors, one byte per weight (1.25x). Both are read; `load_checkpoint` and `fileio.load_weights`
return bool tensors whatever the version (`unpack_masks`).
"""
from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .bits import pack_mask, unpack_mask

FORMAT = "disparse-checkpoint"
VERSION = 2
BOOL_MASKS_VERSION = 1          # the last version whose masks are bool tensors


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model; one-line message."""


def read_file(path: str | os.PathLike) -> dict:
    """`torch.load(weights_only=True)` of any checkpoint-like file, with one-line errors.

    A file that holds Python objects (a pickled class, a function) is refused as "not a safe checkpoint",
    naming the first such object; it is never loaded another way."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSAFE_GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(f"{path} is not a safe checkpoint (contains Python objects: {found.group(1)}); "
                                  f"only files of tensors, numbers, strings, lists and dicts are read") from None
        detail = _REFUSAL.search(str(exc))      # torch's text around it suggests an unsafe load: never shown
        raise _unreadable(path, f"not a torch file: {detail.group(1)}" if detail else "not a torch file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, struct.error,
            ValueError) as exc:   # whatever a truncated or foreign file makes the unpickler raise
        raise _unreadable(path, exc) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(data).__name__})")
    return data


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REFUSAL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def _unreadable(path: Path, reason: BaseException | str) -> CheckpointError:
    text = str(reason).strip()
    first = text.splitlines()[0] if text else type(reason).__name__
    return CheckpointError(f"checkpoint {path} is unreadable or truncated ({first[:160]})")


def make_checkpoint(model_state: Mapping[str, torch.Tensor], config: Mapping, method: str,
                    masks: Mapping[str, torch.Tensor] | None = None, sparsity: float = 0.0,
                    **extra: Any) -> dict:
    """The contract-4 dict. `extra` adds training state (iteration, optimizer, scheduler, rng, ...)."""
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "tasks": list(config["tasks"]),
        "num_classes": list(config["num_classes"]),
        "config": to_plain(config),
        "method": method,
        "sparsity": float(sparsity),
    }
    if masks is not None:
        ckpt["masks"] = {k: pack_mask(v.to(torch.bool)) for k, v in masks.items()}
    ckpt.update(extra)
    return ckpt


def unpack_masks(data: Mapping, path: Any) -> dict[str, torch.Tensor] | None:
    """The mask set of one of our checkpoints as bool tensors (None when it has none), from either layout;
    one-line errors naming the file for anything else (the one place that checks a file's masks)."""
    stored = data.get("masks")
    if stored is None:
        return None
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"checkpoint {path}: 'masks' must map parameter names to masks, "
                              f"got {type(stored).__name__}")
    if int(data.get("version", 0)) <= BOOL_MASKS_VERSION:
        _check_tensors(stored, path, "masks", torch.bool)
        return dict(stored)
    masks = {}
    for name, entry in stored.items():
        try:
            masks[name] = unpack_mask(entry)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: mask {name!r} is malformed ({exc})") from None
    return masks


def is_ours(data: Mapping) -> bool:
    return data.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, tasks: list[str] | None = None,
                    num_classes: list[int] | None = None) -> dict:
    """Read one of our checkpoints and check it fits the configured tasks and classes; masks as bool tensors."""
    data = read_file(path)
    if not is_ours(data):
        raise CheckpointError(f"{path} is not a {FORMAT} file (fileio.load_weights reads the other kinds)")
    check_version(data, path)
    check_entries(data, path)
    check_tasks(data, tasks, num_classes, path)
    if "masks" in data:
        data["masks"] = unpack_masks(data, path)
    return data


def check_version(data: Mapping, path: Any, kind: str = "format", newest: int = VERSION) -> None:
    """A one-line error for a `version` that is not an integer or is newer than `newest`."""
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: 'version' must be an integer, got {version!r}")
    if version > newest:
        raise CheckpointError(f"{path} has {kind} version {version}, this code reads up to {newest}")


def check_entries(data: Mapping, path: Any) -> None:
    """One-line errors for a crafted or damaged file of our format: `model` must map names to tensors,
    `tasks` / `num_classes` must be lists of str / int (the masks are checked where they are unpacked,
    `unpack_masks`)."""
    model = data.get("model")
    if not isinstance(model, Mapping):
        raise CheckpointError(f"checkpoint {path} has no model state ('model' must map names to tensors)")
    _check_tensors(model, path, "model")
    for key, kind in (("tasks", str), ("num_classes", int)):
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool)
                                                                      for v in value)):
            raise CheckpointError(f"checkpoint {path}: {key!r} must be a list of {kind.__name__}, got {value!r:.80}")


def _check_tensors(entries: Mapping, path: Any, where: str, dtype: torch.dtype | None = None) -> None:
    for name, value in entries.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: entry {where}[{name!r}] must be a tensor, "
                                  f"got {type(value).__name__}")
        if dtype is not None and value.dtype != dtype:
            raise CheckpointError(f"checkpoint {path}: mask {name!r} must be a bool tensor, got {value.dtype}")


def check_tasks(data: Mapping, tasks: list[str] | None, num_classes: list[int] | None, path: Any,
                what: str = "checkpoint") -> None:
    if tasks is not None and list(data.get("tasks", [])) != list(tasks):
        raise CheckpointError(f"{what} {path} is for tasks {data.get('tasks')}, the config has {list(tasks)}")
    if num_classes is not None and list(data.get("num_classes", [])) != list(num_classes):
        raise CheckpointError(f"{what} {path} has num_classes {data.get('num_classes')}, "
                              f"the config has {list(num_classes)}")


def load_model_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Any = "checkpoint") -> None:
    """`load_state_dict(strict=True)` with a one-line error listing missing/unexpected/mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f"shape mismatch at {show(mismatched)} ({tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"missing {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {show(unexpected)}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def to_plain(obj: Any) -> Any:
    """Nested config -> only dict/list/str/int/float/bool/None (what weights_only loading accepts)."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint config")
