"""One loader for every weight file the tools accept, whatever its kind.

| kind | recognised by | holds |
|---|---|---|
| `ours` | `format == "disparse-checkpoint"` | our checkpoint (docs/ARCHITECTURE.md contract 4), dense or with masks |
| `compact` | `format == "disparse-compact"` | the compact export (`fileio.compact`): kept values + bit-packed masks |
| `original` | a head key `task<k>_fc1_c<j>.…`, optionally under `state_dict` | a state dict of the original code (`fileio.original`) |

`read_weights` returns the state dict, the mask set (None for a dense net) and the file's metadata
(with `architecture` for a channel-pruned net) without touching a model, so a caller that must first build
the model from the file can do so and then `install_weights`; `load_weights` reads and loads into a given
model. Every
failure is a one-line `CheckpointError` naming the file: missing, unreadable, another task set, keys
or shapes that do not fit.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from . import compact
from .checkpoint import (FORMAT, CheckpointError, check_entries, check_tasks, check_version, is_ours, load_model_state,
                         read_file, unpack_masks)
from .normals import normals_space_of, original_normals_space
from .original import import_original_state_dict, looks_original

KINDS = ("ours", "compact", "original")


@dataclass
class Weights:
    """What a weight file holds, whatever its kind."""

    kind: str                                   # one of KINDS
    state: Mapping[str, torch.Tensor]           # model state dict, pruned weights as zeros
    masks: dict[str, torch.Tensor] | None       # mask set, None for a dense net
    meta: dict[str, Any] = field(default_factory=dict)   # the rest: method, sparsity, config, ... (plain types)
    normals_space: str = "decoded"              # how the net's sn output is read (fileio.normals)

    @property
    def original(self) -> bool:
        return self.kind == "original"


def read_weights(path: str | os.PathLike, tasks: Sequence[str], num_classes: Sequence[int] | None = None,
                 model_keys: Sequence[str] | None = None, dataset: str | None = None,
                 task_subset: bool = False) -> Weights:
    """Read any kind of weight file for a model with `tasks` (and `num_classes`, when given).

    `model_keys` (the model's `state_dict()` keys) lets an original-format file be checked key by key
    and its unwrapped convolutions get all-kept masks (the original wraps every conv of a pruned net).
    The normals space is the one recorded in our files' config, and for an original-format file the
    original's convention for `dataset`. With `task_subset`, our files that record `extracted_tasks` (a net
    extracted for some of `tasks`, in their order) are accepted too; `meta["tasks"]` says which.
    """
    data = read_file(path)
    tasks = list(tasks)
    classes = list(num_classes) if num_classes is not None else None
    if task_subset:
        tasks, classes = _held_tasks(data, tasks, classes)
    if is_ours(data):
        check_version(data, path)
        check_entries(data, path)
        check_tasks(data, tasks, classes, path)
        masks = unpack_masks(data, path)
        meta = {k: v for k, v in data.items() if k not in ("model", "masks", "optimizer")}
        return Weights("ours", data["model"], masks or None, meta, normals_space_of(meta.get("config") or {}))
    if data.get("format") == compact.FORMAT:
        source = f"compact export {path}"
        state, masks, meta = compact.expand_state(data, source=source)
        check_tasks(meta, tasks, classes, path, "compact export")
        return Weights("compact", state, masks or None, meta, normals_space_of(meta.get("config") or {}))
    state = data["state_dict"] if isinstance(data.get("state_dict"), Mapping) else data
    if not looks_original(state):
        raise CheckpointError(f"{path} is neither a {FORMAT} or {compact.FORMAT} file nor an original DiSparse "
                              f"state dict")
    try:
        ours, masks = import_original_state_dict(state, tasks, model_keys=model_keys)
    except CheckpointError as exc:
        raise CheckpointError(f"original checkpoint {path}: {exc}") from None
    return Weights("original", ours, masks, {"method": None, "tasks": tasks}, original_normals_space(dataset, tasks))


def _held_tasks(data: Mapping, tasks: list[str], classes: list[int] | None) -> tuple[list[str], list[int] | None]:
    """The tasks of `tasks` (and their classes) that an extracted net's file names, in `tasks`' order; all of
    them for any other file, or when it names none (so the usual mismatch error follows)."""
    named = data.get("tasks")
    if not isinstance(named, list) or "extracted_tasks" not in data:
        return tasks, classes
    held = [t for t in tasks if t in named]
    if not held:
        return tasks, classes
    return held, [classes[tasks.index(t)] for t in held] if classes is not None else None


def load_weights(path: str | os.PathLike, model: torch.nn.Module, config: Mapping) -> Weights:
    """`read_weights` for `config`'s tasks, then `install_weights` into `model`."""
    weights = read_weights(path, config["tasks"], config["num_classes"], model_keys=list(model.state_dict()),
                           dataset=config.get("dataset"))
    return install_weights(weights, path, model, config)


def install_weights(weights: Weights, path: str | os.PathLike, model: torch.nn.Module, config: Mapping) -> Weights:
    """Load what `read_weights` read from `path` into `model` (strict, one-line errors).

    A file whose normals space differs from the config's `loss.normals_space` gets a warning: evaluation
    follows the file, but training it with this config would mix the two spaces.
    """
    source = {"original": "original checkpoint", "compact": "compact export"}.get(weights.kind, "checkpoint")
    source = f"{source} {path}"
    load_model_state(model, weights.state, source=source)
    configured = normals_space_of(config)
    if "sn" in config.get("tasks", ()) and weights.normals_space != configured:
        warnings.warn(f"{path} predicts normals in the {weights.normals_space} space but the config's "
                      f"loss.normals_space is {configured}: evaluation reads the file's space; to train or prune "
                      f"it, pass --set loss.normals_space={weights.normals_space}", RuntimeWarning, stacklevel=3)
    return weights
