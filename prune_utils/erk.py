"""Erdős–Rényi-Kernel (ERK) layer densities and random initial masks (docs/ORIGINAL.md §6.1-6.2).

Each prunable layer l with weight shape (d_1, ..., d_n) and N_l = prod d_i gets the raw score
rho_l = (sum d_i / prod d_i) ** 0.9 (kernel dims included). With a set of dense layers (density 1,
charged at full size) the scale is

    eps = (D * sum_{sparse} N_l - (1 - D) * sum_{dense} N_l) / sum_{sparse} rho_l * N_l

and layer l gets density eps * rho_l. While the largest eps * rho_l among sparse layers exceeds 1,
*every* layer sharing that largest rho becomes dense and eps is recomputed. The overall density is
then exactly D (in real numbers; integer counts are `keep_count_round(d, N) = round(d * N)` per layer).

Only shapes are needed, so the full-size net can be sized on the meta device (`shapes_of`).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .masks import MaskSet, prunable_parameters
from .topk import keep_count_round

POWER_SCALE = 0.9


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every prunable weight (works for a model built on the meta device)."""
    return {name: tuple(w.shape) for name, w in prunable_parameters(model).items()}


def erk_scores(shapes: Mapping[str, Sequence[int]], power_scale: float = POWER_SCALE) -> dict[str, float]:
    """Raw ERK score rho_l = (sum of dims / product of dims) ** power_scale."""
    return {name: (sum(shape) / math.prod(shape)) ** power_scale for name, shape in shapes.items()}


def erk_epsilon(shapes: Mapping[str, Sequence[int]], density: float,
                power_scale: float = POWER_SCALE) -> tuple[float, set[str]]:
    """(eps, names of the layers made dense) for overall `density` D in (0, 1]."""
    if not shapes:
        raise ValueError("ERK needs at least one layer")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"ERK density must lie in (0, 1], got {density}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    rho = erk_scores(shapes, power_scale)
    if density == 1.0:
        return 1.0 / max(rho.values()), set(shapes)
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        if not sparse:  # cannot happen for D < 1, guarded anyway
            return 0.0, dense
        numerator = density * sum(sizes[n] for n in sparse) - (1.0 - density) * sum(sizes[n] for n in dense)
        eps = numerator / sum(rho[n] * sizes[n] for n in sparse)
        if eps <= 0:
            raise ValueError(f"ERK cannot reach density {density}: the dense layers alone exceed it")
        top = max(rho[n] for n in sparse)
        if top * eps <= 1.0:
            return eps, dense
        dense.update(n for n in sparse if rho[n] == top)


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float,
                  power_scale: float = POWER_SCALE) -> dict[str, float]:
    """Per-layer ERK density (1.0 for dense layers); sum_l d_l * N_l == density * sum_l N_l."""
    eps, dense = erk_epsilon(shapes, density, power_scale)
    rho = erk_scores(shapes, power_scale)
    return {name: 1.0 if name in dense else eps * rho[name] for name in shapes}


def target_counts(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]) -> dict[str, int]:
    return {name: keep_count_round(densities[name], math.prod(shape)) for name, shape in shapes.items()}


def random_masks(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float],
                 generator: torch.Generator | None = None) -> MaskSet:
    """Uniformly random masks with exactly `keep_count_round(d_l, N_l)` kept weights per layer (CPU bool).

    Layers are drawn in the order of `shapes`; a dense layer consumes no random numbers.
    """
    masks: MaskSet = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        kept = keep_count_round(densities[name], numel)
        if kept == numel:
            masks[name] = torch.ones(tuple(shape), dtype=torch.bool)
            continue
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=generator)[:kept]] = True
        masks[name] = flat.view(tuple(shape))
    return masks


def erk_random_masks(model: nn.Module, density: float, generator: torch.Generator | None = None,
                     power_scale: float = POWER_SCALE) -> tuple[MaskSet, dict[str, float]]:
    """(random ERK masks, ERK densities) for `model`'s prunable weights at overall `density`."""
    shapes = shapes_of(model)
    densities = erk_densities(shapes, density, power_scale)
    return random_masks(shapes, densities, generator), densities
