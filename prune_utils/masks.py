"""Mask sets: `dict[param name -> BoolTensor]` over the prunable weights (True = kept).

Prunable = the `weight` of every `nn.Conv2d` and `nn.Linear` (docs/ARCHITECTURE.md contract 2). Biases
and BatchNorm stay dense. Which task owns which weight is `prune_utils.structure.TaskStructure`'s job.
"""
from __future__ import annotations

from typing import Mapping, cast

import torch
from torch import nn

MaskSet = dict[str, torch.Tensor]
PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every Conv2d/Linear, in `named_modules()` order (backbone first, then heads)."""
    model = unwrap(model)
    return {f"{name}.weight": cast(nn.Parameter, module.weight) for name, module in model.named_modules()
            if isinstance(module, PRUNABLE_TYPES)}


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP / DataParallel wrapper."""
    return getattr(model, "module", model)


def dense_masks(model: nn.Module) -> MaskSet:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in prunable_parameters(model).items()}


def count(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(kept, total) over a mask set."""
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept, total


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of pruned weights over all prunable weights (the paper's "Sparsity")."""
    kept, total = count(masks)
    return 1.0 - kept / total if total else 0.0


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError (one line) unless `masks` covers exactly the model's prunable weights, same shapes."""
    params = prunable_parameters(model)
    missing = [n for n in params if n not in masks]
    extra = [n for n in masks if n not in params]
    if missing or extra:
        raise ValueError(f"mask set does not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
    for name, weight in params.items():
        if tuple(masks[name].shape) != tuple(weight.shape):
            raise ValueError(f"mask {name!r} has shape {tuple(masks[name].shape)}, the weight has {tuple(weight.shape)}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place (a select, not a product: +0.0 everywhere, and an inf or NaN at a
    pruned position cannot survive as NaN; one pass, where `masked_fill_(~mask, 0)` needs the inverted mask)."""
    for name, weight in prunable_parameters(model).items():
        if name in masks:
            zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
            torch.where(masks[name].to(device=weight.device, dtype=torch.bool), weight, zero, out=weight)


def masks_to(masks: Mapping[str, torch.Tensor], device: torch.device | str) -> MaskSet:
    return {n: m.to(device=device, dtype=torch.bool) for n, m in masks.items()}
