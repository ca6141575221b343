"""The mask step of lottery-ticket style iterative magnitude pruning (LTH / IMP, `--method lth`).

After round r of R (target sparsity s), round(N * (1 - s) ** (r / R)) of the N prunable weights stay
(`keep_schedule`): each round removes the fraction 1 - (1 - s) ** (1 / R) of the remaining weights, and
the last round keeps exactly round(N * (1 - s)). The weights that stay are the largest magnitudes
among the previous round's survivors, over every prunable weight together (backbone and heads): one
global exact top-k (`topk.topk_masks`), ties broken by position in layer order, then row-major.
The training side of the procedure (rounds, rewinding) is `methods/lth.py`.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from .masks import MaskSet
from .topk import flat_float32, layout_views, topk_masks


def keep_schedule(total: int, ratio: float, rounds: int) -> list[int]:
    """Weights kept after each round r = 1..R: round(total * (1 - s) ** (r / R)), s = ratio / 100."""
    if rounds < 1:
        raise ValueError(f"config key 'lth.rounds' must be at least 1, got {rounds}")
    if not 0 < ratio < 100:
        raise ValueError(f"LTH ratio must be in (0, 100), got {ratio}")
    density = 1.0 - ratio / 100.0
    counts = [int(round(total * density ** (r / rounds))) for r in range(1, rounds + 1)]
    counts[-1] = int(round(total * density))
    for i in range(1, len(counts)):            # never grow back
        counts[i] = min(counts[i], counts[i - 1])
    return counts


@torch.no_grad()
def global_magnitude_masks(weights: Mapping[str, torch.Tensor], n_keep: int,
                           previous: Optional[Mapping[str, torch.Tensor]] = None) -> MaskSet:
    """Keep the `n_keep` largest |w| over all `weights` together, only among `previous` survivors.

    Ties: lower position in the concatenation (dict order, then flat index) wins. Exact count.
    """
    layout = [(name, w.shape) for name, w in weights.items()]
    magnitude = flat_float32([w.detach().abs().float().cpu() for w in weights.values()])
    if previous is None:
        alive = torch.ones(magnitude.numel(), dtype=torch.bool)
    else:
        alive = torch.cat([previous[name].detach().reshape(-1).cpu().bool() for name in weights])
    survivors = alive.nonzero().view(-1)
    if n_keep > survivors.numel():
        raise ValueError(f"cannot keep {n_keep} weights: only {survivors.numel()} survive the previous round")
    chosen = topk_masks({"survivors": magnitude[survivors]}, n_keep)["survivors"]   # pruned stay pruned
    keep = torch.zeros(magnitude.numel(), dtype=torch.bool)
    keep[survivors[chosen]] = True
    return {name: mask.clone() for name, mask in layout_views(keep, layout).items()}
