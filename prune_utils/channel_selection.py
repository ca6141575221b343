"""Which channels to keep: per-task selection with an arbiter, one global ranking, or uniform widths,
searched so that the net loses a target fraction of its MACs or parameters (docs/CHANNELS.md).

Three selections, each driven by one number in (0, 1] that the search adjusts:

* `per_task` (DiSparse): each task keeps the top ρ of the channels in its pool (the shared groups plus its
  own head's groups, ranked together by that task's scores); a head keeps its own task's choice and the
  shared groups are decided channel by channel by an arbiter (`prune_utils.arbiters`: `unanimous` removes
  a channel only if every task would remove it, `intersection`, `majority`, `mean_score`). This is the
  weight-level machinery of `prune_utils.mask_builder` applied to channel scores: the same exact top-k,
  the same arbiter objects.
* `global`: one ranking of every channel by the task-agnostic score; the top fraction is kept.
* `uniform`: every group keeps the same fraction of its channels (the best ones by the score within the
  group): all widths scaled alike.

Every group keeps at least one channel (an empty group would cut the net): when a selection empties a
group, the group keeps its best channel (per-task: by the tasks' pool-normalised scores averaged over the
tasks that rank the group). Widths can only grow with the searched number, so a bisection finds the
number whose MACs (or parameters) removed are closest to the target; the result is accepted within
`tol` (default 1 point) and a warning says when no number lands that close.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .arbiters import ArbiterLike, get_arbiter, mean_normalised_scores, pool_total
from .channel_cost import ChannelCost
from .channel_groups import ChannelGroups
from .channel_importance import check_group_scores
from .mask_builder import masks_for_keep_ratio, task_masks
from .saliency import ALL
from .topk import keep_count_floor, topk_masks

SELECTIONS = ("per_task", "global", "uniform")
TARGET_KINDS = ("macs", "params")
Keep = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Target:
    """Remove the fraction `removed` of the net's `kind` ("macs" or "params"), within `tol` (a fraction)."""

    kind: str
    removed: float
    tol: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown target {self.kind!r} (expected one of {', '.join(TARGET_KINDS)})")
        if not 0 <= float(self.removed) < 1:
            raise ValueError(f"the fraction of {self.kind} to remove must be in [0, 1) (0.5 for 50 %), "
                             f"got {self.removed}")
        if not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol}")


@dataclass
class ChannelSelection:
    """Kept channels per group (original indices), the tasks' own proposals, and what they cost."""

    keep: Keep
    proposals: dict[str, Keep] | None     # task -> its own keep over its pool, before the arbiter (per_task)
    fraction: float                       # the searched number (ρ, the global fraction or the width factor)
    removed: dict[str, float]             # {"macs": ..., "params": ...}
    macs: int
    params: int
    info: dict[str, Any] = field(default_factory=dict)

    def widths(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.keep.items()}


def _fallback_ranking(scores: Mapping[str, Mapping[str, torch.Tensor]], groups: ChannelGroups) -> dict[str, torch.Tensor]:
    """The score that picks a group's one channel when a selection empties it."""
    if ALL in scores:
        return dict(scores[ALL])
    tasks = list(scores)
    shared = [g.name for g in groups.shared()]
    ranking = mean_normalised_scores(scores, shared, tasks)
    for task in tasks:
        total = pool_total(scores[task])
        for group in groups.pool(task):
            if group.owner == task:
                ranking[group.name] = scores[task][group.name].float() / total
    return ranking


def at_least_one(keep: Mapping[str, torch.Tensor], ranking: Mapping[str, torch.Tensor]) -> Keep:
    """`keep` with every emptied group given back its best channel by `ranking` (the first on ties)."""
    out: Keep = {}
    for name, mask in keep.items():
        mask = mask.to(torch.bool).clone()
        if not bool(mask.any()):
            mask[int(torch.argmax(ranking[name]))] = True
        out[name] = mask
    return out


def _ordered(scores: Mapping[str, torch.Tensor], groups: ChannelGroups) -> dict[str, torch.Tensor]:
    return {g.name: scores[g.name] for g in groups}


def _select(scores: Mapping[str, Mapping[str, torch.Tensor]], groups: ChannelGroups, fraction: float,
            selection: str, arbiter: ArbiterLike) -> Keep:
    if selection == "per_task":
        masks = masks_for_keep_ratio(scores, fraction, arbiter, groups.structure)
        return {name: mask.clone() for name, mask in masks.items()}
    ranked = _ordered(scores[ALL], groups)
    if selection == "global":
        total = sum(s.numel() for s in ranked.values())
        return topk_masks(ranked, keep_count_floor(fraction, total))
    if selection == "uniform":
        return {name: topk_masks({name: s}, keep_count_floor(fraction, s.numel()))[name] for name, s in ranked.items()}
    raise ValueError(f"unknown selection {selection!r} (expected one of {', '.join(SELECTIONS)})")


def keep_at(scores: Mapping[str, Mapping[str, torch.Tensor]], groups: ChannelGroups, fraction: float,
            selection: str = "per_task", arbiter: ArbiterLike = "unanimous") -> tuple[Keep, list[str]]:
    """The kept channels at one value of the searched number, and the groups the selection emptied (each
    given back its best channel)."""
    raw = _select(scores, groups, fraction, selection, arbiter)
    emptied = [name for name, mask in raw.items() if not bool(mask.any())]
    return at_least_one(raw, _fallback_ranking(scores, groups)) if emptied else raw, emptied


def _widths_at(scores: Mapping[str, Mapping[str, torch.Tensor]], groups: ChannelGroups, fraction: float,
               selection: str, arbiter: ArbiterLike) -> dict[str, int]:
    """Group widths at one value of the searched number (uniform widths need no ranking)."""
    if selection == "uniform":
        return {g.name: keep_count_floor(fraction, g.size) for g in groups}
    keep, _ = keep_at(scores, groups, fraction, selection, arbiter)
    return {name: int(mask.sum()) for name, mask in keep.items()}


def _bisect(removed_at: Callable[[float], dict[str, float]], target: Target,
            max_steps: int) -> tuple[float, dict[str, float], int]:
    """The number in (0, 1] whose removed fraction is closest to the target (removed falls as it grows).

    Stops within a twentieth of the tolerance, or when the bracket is too narrow to change any width."""
    lo, hi = 0.0, 1.0
    best: tuple[float, float, dict[str, float]] | None = None
    steps = 0
    for steps in range(1, max_steps + 1):
        mid = 0.5 * (lo + hi)
        removed = removed_at(mid)
        error = abs(removed[target.kind] - target.removed)
        if best is None or error < best[0]:
            best = (error, mid, removed)
        if error <= target.tol / 20 or hi - lo < 1e-9:
            break
        if removed[target.kind] > target.removed:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return best[1], best[2], steps


def select_channels(groups: ChannelGroups, scores: Mapping[str, Mapping[str, torch.Tensor]], cost: ChannelCost,
                    target: Target, selection: str = "per_task", arbiter: ArbiterLike = "unanimous",
                    max_steps: int = 60) -> ChannelSelection:
    """Kept channels whose MACs (or parameters) removed are `target.removed` within `target.tol`.

    `scores`: per-task `{task: {group: FloatTensor}}` for `per_task`, `{ALL: {...}}` for `global` and
    `uniform` (as `prune_utils.channel_importance.score_channels` returns them); non-negative.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r} (expected one of {', '.join(SELECTIONS)})")
    kind = check_group_scores(scores, groups)
    if (kind == "per_task") != (selection == "per_task"):
        need = "per-task scores" if selection == "per_task" else f"task-agnostic scores ({ALL!r})"
        raise ValueError(f"selection {selection!r} needs {need}")
    arbiter = get_arbiter(arbiter)
    fraction, removed, steps = _bisect(
        lambda f: cost.removed(_widths_at(scores, groups, f, selection, arbiter)), target, max_steps)
    keep, emptied = keep_at(scores, groups, fraction, selection, arbiter)
    within = abs(removed[target.kind] - target.removed) <= target.tol
    if not within:
        warnings.warn(f"channel selection: the closest achievable {target.kind} removed is "
                      f"{removed[target.kind]:.4f}, outside {target.removed} ± {target.tol}", RuntimeWarning,
                      stacklevel=2)
    proposals = None
    if selection == "per_task":
        proposals = {task: {name: mask.clone() for name, mask in masks.items()}
                     for task, masks in task_masks(scores, fraction, groups.structure).items()}
    widths = {n: int(m.sum()) for n, m in keep.items()}
    info = {"selection": selection, "arbiter": getattr(arbiter, "name", repr(arbiter)) if selection == "per_task"
            else None, "search_steps": steps, "within_tol": within,
            "target": {"kind": target.kind, "removed": float(target.removed), "tol": float(target.tol)},
            "emptied_groups": emptied}
    return ChannelSelection(keep=keep, proposals=proposals, fraction=float(fraction), removed=removed,
                            macs=cost.macs(widths), params=cost.params(widths), info=info)
