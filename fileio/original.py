"""State dicts of the original DiSparse code (docs/ARCHITECTURE.md contract 5, docs/ORIGINAL.md §1.3, §5.1).

The original names the backbone exactly as we do (`backbone.blocks.{s}.{b}.conv1`, `backbone.ds.{s}.0`)
and the heads `task{k}_fc1_c{j}.conv{i}` (k 1-based). Pruned nets carry `torch.nn.utils.prune`
re-parametrisation pairs `<layer>.weight_orig` + `<layer>.weight_mask` (int32 or float masks) instead
of `<layer>.weight`; DataParallel adds a `module.` prefix. We map `task<k>` to the k-th configured
task, fold each pair into a plain weight (orig × mask, so pruned entries are exact zeros) and return
the mask set separately.

Normals: the original trained NYUv2 normals against the raw encoded B, G, R PNG vectors, so an original
NYUv2 net's sn head predicts a direction in that space, not a decoded normal. No weight surgery can turn
it into one (a direction in encoded space meets the sphere of encoded unit normals twice; on the real
NYUv2 samples 41 % of valid normals lie on the near side), so we keep the weights as they are and
*record* the convention (`fileio.normals.original_normals_space`: "encoded" for NYUv2-layout datasets),
and `fileio.load_weights` reports it so evaluation reads the output in that space (the original's normal
metrics, docs/METRICS.md). Taskonomy's original normals were already decoded.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch

from .checkpoint import CheckpointError

_HEAD = re.compile(r"^task(\d+)_fc1_c(\d+)\.(.+)$")
_ORIG, _MASK = ".weight_orig", ".weight_mask"


def looks_original(state: Mapping[str, object]) -> bool:
    """True for a state dict in the original naming (any head key `task<k>_fc1_c<j>.…`)."""
    return any(_HEAD.match(_strip_prefix(k)) for k in state)


def _strip_prefix(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _rename(key: str, tasks: Sequence[str]) -> str:
    match = _HEAD.match(key)
    if not match:
        return key
    k, branch, rest = int(match.group(1)), match.group(2), match.group(3)
    if not 1 <= k <= len(tasks):
        raise CheckpointError(f"original key {key!r} names task{k}, but the config has {len(tasks)} task(s) {list(tasks)}")
    return f"heads.{tasks[k - 1]}.branches.{branch}.{rest}"


def import_original_state_dict(state: Mapping[str, torch.Tensor], tasks: Sequence[str],
                               model_keys: Sequence[str] | None = None,
                               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Original-format state dict -> (our state dict, mask set or None for a dense net).

    With `model_keys` (our model's `state_dict().keys()`), keys that do not map onto the model or
    model keys left unfilled raise one CheckpointError listing them.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"original state dict entry {key!r} is not a tensor")
        renamed[_rename(_strip_prefix(key), tasks)] = value

    out: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        if key.endswith(_MASK):
            continue
        if key.endswith(_ORIG):
            base = key[: -len(_ORIG)]
            mask_key = base + _MASK
            if mask_key not in renamed:
                raise CheckpointError(f"original state dict has {key!r} without its {mask_key!r}")
            keep = renamed[mask_key] != 0
            if keep.shape != value.shape:
                raise CheckpointError(f"{mask_key!r} has shape {tuple(keep.shape)}, {key!r} has {tuple(value.shape)}")
            out[base + ".weight"] = value * keep.to(value.dtype)
            masks[base + ".weight"] = keep
        else:
            out[key] = value
    orphan_masks = [k for k in renamed if k.endswith(_MASK) and k[: -len(_MASK)] + _ORIG not in renamed]
    if orphan_masks:
        raise CheckpointError(f"original state dict has masks without weights: {', '.join(orphan_masks[:3])}")

    if model_keys is not None:
        expected = set(model_keys)
        unknown = sorted(k for k in out if k not in expected)
        missing = sorted(k for k in expected if k not in out)
        if unknown or missing:
            def show(keys: list[str]) -> str:
                return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            parts = ([f"unknown keys {show(unknown)}"] if unknown else []) + ([f"missing keys {show(missing)}"] if missing else [])
            raise CheckpointError("original checkpoint does not match the configured model: " + "; ".join(parts))
    if masks and model_keys is not None:
        # A pruned original net wraps every conv; any conv without a mask is dense.
        for key in model_keys:
            if key.endswith(".weight") and key in out and key not in masks and out[key].dim() > 1:
                masks[key] = torch.ones_like(out[key], dtype=torch.bool)
    return out, (masks or None)


def export_original_state_dict(state: Mapping[str, torch.Tensor], tasks: Sequence[str],
                               masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Our state dict (+ masks) -> the original naming, pruned layers as `weight_orig` + int32 `weight_mask`.

    Used to compare checkpoint sizes with the original format and to hand nets back to the original code.
    """
    index = {task: i + 1 for i, task in enumerate(tasks)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        if key.startswith("heads."):
            _, task, _, branch, rest = key.split(".", 4)
            name = f"task{index[task]}_fc1_c{branch}.{rest}"
        if masks is not None and key in masks:
            base = name[: -len(".weight")]
            out[base + _ORIG] = value.clone()
            out[base + _MASK] = masks[key].to(torch.int32)
        else:
            out[name] = value
    return out
