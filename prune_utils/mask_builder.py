"""Per-task masks, arbitration and the exact-sparsity search (docs/ARCHITECTURE.md contracts 3 and 7,
docs/ORIGINAL.md §5).

Definitions
-----------
* A task's **pool** is `structure.pool(task)`: the shared backbone followed by the task's own head, in
  layer order, each flattened row-major. The *position* of a weight is its index in that concatenation.
* A task's **mask at keep ratio ρ** keeps exactly k = `keep_count_floor(ρ, |pool|)` = max(1, ⌊ρ·|pool|⌋)
  weights: the k largest scores, ties broken by position (the earlier weight wins). The original
  thresholds with `score >= τ`, which keeps more than k on ties (docs/ORIGINAL.md §5.5, §11 item 21);
  here k is exact.
* Ranking uses the raw scores. Dividing by the pool sum (the original's normalisation) is rank-neutral,
  so it matters only to the `mean_score` arbiter, which normalises (see `arbiters.py`).
* The **model mask** takes the backbone from the arbiter and each head from its own task's mask.
* **Partial sharing** (a weight used by some tasks but not all, `TaskStructure.groups`): each sharing
  group is arbitrated among the tasks that own it, with the arbiter's rule for that many tasks
  (`unanimous`: any owner keeps it; `intersection`: every owner; `majority`: ceil(|owners|/2) owners;
  `mean_score`: top-k of the owners' normalised scores, k the mean of the owners' counts in the
  group; an int quorum q needs q owners). A task that does not use a weight has no say on it. A task's
  pool is its groups in group order, then its head; with hard sharing that is the backbone then the
  head, as above. The search then starts without an estimate and uses exact evaluations only.

Every function takes the model's `TaskStructure`; without one, the structure is read from the score
dicts' parameter paths (`TaskStructure.from_names`).

Exact sparsity
--------------
`masks_for_sparsity` finds the per-task keep ratio ρ whose model mask has the target sparsity within
`tol` (a fraction of all prunable weights; 5e-4 = 0.05 points). The kept count is non-decreasing in ρ
for every built-in arbiter, so a bracketing search converges (`topk.solve_keep_ratio`). It never sorts
a pool: each pool is a `topk.RankedPool` (a two-level radix select), whose histograms also tell how
many backbone weights a task keeps without building its mask. The search starts from the arbiter's
estimate (`Arbiter.backbone_estimator`): for vote arbiters the tasks' joint behaviour on a fixed
sample of backbone positions (every p-th position, p the first prime >= |backbone| / 2 M; all of them
for small nets), for `mean_score` the per-task counts. The masks are then built exactly and counted;
more exact evaluations follow only when the count is off by more than `tol`, which happens inside a big
tie (e.g. many exact-zero scores) that the estimate cannot see. Score tensors that are views into one
flat float32 buffer per task (as `prune_utils.saliency.compute_scores` returns them) are used without
a copy. docs/BENCHMARKS.md (b) has the timings.

Returned mask sets are views into one flat bool buffer (contract 3 holds: one BoolTensor per prunable
weight, same shape); `.clone()` an entry if it must own its memory.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, Mapping, overload

import numpy as np
import torch

from .arbiters import ARBITERS, Arbiter, ArbiterLike, get_arbiter
from .masks import MaskSet
from .structure import SHARED, UNOWNED, TaskStructure
from .topk import (RankedPool, Selection, flat_float32, keep_count_floor, layout_numel, layout_views, next_prime,
                   solve_keep_ratio, topk_masks)

ALL = "__all__"                     # key of task-agnostic scores (one score over every prunable weight)
DEFAULT_SAMPLE = 2_000_000          # backbone positions sampled to estimate the arbiter's count

Scores = Mapping[str, Mapping[str, torch.Tensor]]
__all__ = ["ALL", "ARBITERS", "task_masks", "combine", "masks_for_keep_ratio", "masks_for_sparsity", "global_topk",
           "topk_masks", "SearchInfo", "TaskPools"]


def structure_of(masks_or_scores: Mapping[str, Mapping[str, Any]], structure: TaskStructure | None) -> TaskStructure:
    """`structure`, or the one the parameter paths of per-task dicts describe."""
    if structure is not None:
        return structure
    names = [n for per in masks_or_scores.values() for n in per]
    return TaskStructure.from_names(names, tasks=list(masks_or_scores))


# ----------------------------------------------------------------------------------------------------------
# the multitask problem


class _Group:
    """One sharing group as the pools hold it: the owners present in the scores, the group's weights, where
    the group sits in the combined backbone buffer (`offset`) and in each owner's pool (`at[task]`)."""

    def __init__(self, index: int, tasks: list[str], layout: list[tuple[str, torch.Size]], offset: int) -> None:
        self.index, self.tasks, self.layout, self.offset = index, tasks, layout, offset
        self.size = layout_numel(layout)
        self.at: dict[str, int] = {}


class TaskPools:
    """Every task's scores laid out as one flat, ranked pool (its sharing groups first, then its head), with
    the exact and estimated machinery on top. It is the `Poll` the arbiters estimate from (`arbiters.Poll`).

    Each sharing group of the structure (the shared weights with one set of owners, `TaskStructure.groups`)
    is arbitrated among its owners that have scores; with hard parameter sharing there is one group, the
    backbone, and every task owns it."""

    def __init__(self, scores: Scores, structure: TaskStructure | None = None) -> None:
        if not isinstance(scores, Mapping) or not scores:
            raise ValueError("scores must map task -> {param name -> tensor} for at least one task")
        if ALL in scores:
            raise ValueError(f"task-agnostic scores ({ALL!r}) have no per-task masks: use global_topk")
        self.scores = scores
        self.tasks = list(scores)
        self.structure = structure = structure_of(scores, structure)
        for task in self.tasks:
            for name in scores[task]:
                part = structure.part(name)
                if part == UNOWNED:
                    raise ValueError(f"scores of task {task!r} include {name!r}, which no task uses")
                if part != SHARED and part != task:
                    raise ValueError(f"scores of task {task!r} include {name!r}, which belongs to head {part!r}")
                if part == SHARED and task not in structure.owners[name]:
                    raise ValueError(f"scores of task {task!r} include {name!r}, which task {task!r} does not use "
                                     f"(shared by {', '.join(sorted(structure.owners[name]))})")
        self.groups: list[_Group] = []
        self.backbone: list[tuple[str, torch.Size]] = []
        for owners, names in structure.groups():
            tasks = [t for t in owners if t in scores]
            scored = [n for n in names if any(n in scores[t] for t in tasks)]
            if not scored:
                continue
            for name in scored:
                missing = [t for t in tasks if name not in scores[t]]
                if missing:
                    raise ValueError(f"scores of task {missing[0]!r} miss backbone weight(s) {[name]}")
                shapes = {tuple(scores[t][name].shape) for t in tasks}
                if len(shapes) > 1:
                    raise ValueError(f"scores for {name!r} have different shapes across tasks")
            layout = [(n, scores[tasks[0]][n].shape) for n in scored]
            group = _Group(len(self.groups), tasks, layout, layout_numel(self.backbone))
            self.groups.append(group)
            self.backbone.extend(layout)
        self.heads: dict[str, list[tuple[str, torch.Size]]] = {
            t: [(n, scores[t][n].shape) for n in structure.own(t) if n in scores[t]] for t in self.tasks}
        self.B = self.backbone_size = layout_numel(self.backbone)
        self.split: dict[str, int] = {t: 0 for t in self.tasks}   # shared positions at the front of each pool
        for group in self.groups:
            for task in group.tasks:
                group.at[task] = self.split[task]
                self.split[task] += group.size
        self.H = {t: layout_numel(self.heads[t]) for t in self.tasks}
        self.P = {t: self.split[t] + self.H[t] for t in self.tasks}
        self.N = self.B + sum(self.H.values())
        if self.N == 0:
            raise ValueError("scores cover no weights")
        largest = max(self.P.values())
        self._scratch16 = torch.empty(largest, dtype=torch.int16)
        self._scratch_bool = torch.empty(-(-largest // 8) * 8, dtype=torch.bool)
        self.flats: dict[str, torch.Tensor] = {}
        self.ranked: dict[str, RankedPool] = {}
        for task in self.tasks:
            flat = flat_float32([scores[task][n] for n, _ in self.pool_layout(task)])
            self.flats[task] = flat
            self.ranked[task] = self.ranked_pool(flat, f"scores of {task!r}", split=self.split[task])
        self.memo: dict = {}                       # arbiters' caches, one dict per group (see arbiters.Ballot)
        self._combined: torch.Tensor | None = None
        self._work: torch.Tensor | None = None
        self._sample: np.ndarray | None = None     # tasks x samples rank fractions
        self._backbone_state: tuple | None = None  # (key, kept) of the backbone now in the combined buffer

    # -- layout ---------------------------------------------------------------------------------------------
    def pool_layout(self, task: str) -> list[tuple[str, torch.Size]]:
        """A task's pool: the groups it belongs to, in group order, then its head."""
        return [item for g in self.groups if task in g.at for item in g.layout] + self.heads[task]

    def hard_sharing(self) -> bool:
        """At most one sharing group, owned by every task (then the cheap estimates apply)."""
        return not self.groups or (len(self.groups) == 1 and self.groups[0].tasks == self.tasks)

    def ks(self, keep_ratio: float) -> dict[str, int]:
        return {t: keep_count_floor(keep_ratio, self.P[t]) for t in self.tasks}

    def ranked_pool(self, flat: torch.Tensor, label: str, split: int | None = None) -> RankedPool:
        return RankedPool(flat, split, self._scratch16, self._scratch_bool, label)

    def combined_buffer(self) -> torch.Tensor:
        if self._combined is None:
            self._combined = torch.empty(self.N, dtype=torch.bool)
        return self._combined

    def work_buffer(self) -> torch.Tensor:
        if self._work is None:
            self._work = torch.empty(self.B, dtype=torch.bool)
        return self._work

    def model_masks(self, buffer: torch.Tensor) -> MaskSet:
        masks = layout_views(buffer, self.backbone)
        offset = self.B
        for task in self.tasks:
            masks.update(layout_views(buffer, self.heads[task], offset))
            offset += self.H[task]
        return masks

    def head_offset(self, task: str) -> int:
        return self.B + sum(self.H[t] for t in self.tasks[:self.tasks.index(task)])

    def pool_masks(self, task: str, buffer: torch.Tensor) -> MaskSet:
        return layout_views(buffer, self.pool_layout(task))

    # -- exact evaluation -------------------------------------------------------------------------------------
    def task_mask(self, task: str, keep_ratio: float) -> MaskSet:
        ranked = self.ranked[task]
        sel = ranked.select(keep_count_floor(keep_ratio, self.P[task]))
        buffer = torch.empty(self.P[task], dtype=torch.bool)
        ranked.mask_into(sel, buffer)
        return self.pool_masks(task, buffer)

    def _write_heads(self, sels: Mapping[str, Selection], buffer: torch.Tensor) -> None:
        for task in self.tasks:
            start = self.head_offset(task)
            self.ranked[task].mask_into(sels[task], buffer[start:start + self.H[task]], self.split[task],
                                        self.P[task])

    def evaluate(self, keep_ratio: float, arbiter: Arbiter, build: bool) -> tuple[int, MaskSet | None]:
        """Exact kept count of the model mask at `keep_ratio`; the mask set too when `build`."""
        sels = {t: self.ranked[t].select(k) for t, k in self.ks(keep_ratio).items()}
        head_kept = sum(s.head_kept for s in sels.values())
        ballots = [_Ballot(self, sels, group) for group in self.groups]
        counts = [arbiter.backbone_count(ballot) for ballot in ballots]
        known = [c for c in counts if c is not None]
        kept_backbone = sum(known) if len(known) == len(counts) else None
        buffer = None
        if build or kept_backbone is None:
            buffer = self.combined_buffer()
            key = (id(arbiter),) + tuple(s.k for s in sels.values())
            if self._backbone_state is not None and self._backbone_state[0] == key:
                kept_backbone = self._backbone_state[1]     # the buffer already holds this backbone
            else:
                for group, ballot in zip(self.groups, ballots):
                    arbiter.backbone_into(ballot, buffer[group.offset:group.offset + group.size])
                kept_backbone = int(buffer[:self.B].count_nonzero()) if self.B else 0
                self._backbone_state = (key, kept_backbone)
        kept = kept_backbone + head_kept
        if not build:
            return kept, None
        assert buffer is not None
        self._write_heads(sels, buffer)
        return kept, self.model_masks(buffer)

    # -- estimates (arbiters.Poll) ------------------------------------------------------------------------------
    def sample_rank_fractions(self, sample_size: int) -> np.ndarray:
        """Estimated rank fractions of every p-th backbone position in every task (tasks x samples)."""
        if self._sample is None:
            stride = next_prime(-(-self.B // sample_size)) if self.B > sample_size else 1
            self._sample = np.stack([self.ranked[t].rank_fraction(self.flats[t][:self.B:stride].contiguous())
                                     for t in self.tasks])
        return self._sample

    def estimate_task_backbone_kept(self, task: str, keep_ratio: float) -> float:
        return self.ranked[task].estimate_split_kept(keep_count_floor(keep_ratio, self.P[task]))

    def estimator(self, arbiter: Arbiter, sample_size: int) -> Callable[[float], float] | None:
        """A cheap, monotone approximation of `evaluate(ρ)[0]`, or None when the arbiter has no estimate.

        Only for hard sharing: with several sharing groups the search runs on exact evaluations alone."""
        if not self.hard_sharing():
            return None
        backbone_estimate = arbiter.backbone_estimator(self, sample_size) if self.B else (lambda rho: 0.0)
        if backbone_estimate is None:
            return None

        def estimate(rho: float) -> float:
            rho = min(max(rho, 1e-12), 1.0)
            heads = 0.0
            for task in self.tasks:
                k = keep_count_floor(rho, self.P[task])
                heads += k - self.ranked[task].estimate_split_kept(k)
            return heads + backbone_estimate(rho)

        return estimate


class _Ballot:
    """The owners' selections in one sharing group at one keep ratio, offered to an arbiter (`arbiters.Ballot`)."""

    def __init__(self, pools: TaskPools, sels: Mapping[str, Selection], group: _Group) -> None:
        self.pools, self.sels, self.group = pools, sels, group
        self.tasks, self.backbone_size, self.scores = group.tasks, group.size, pools.scores
        self.memo = pools.memo.setdefault(group.index, {})

    def task_backbone_into(self, task: str, out: torch.Tensor) -> None:
        start = self.group.at[task]
        self.pools.ranked[task].mask_into(self.sels[task], out, start, start + self.group.size)

    def task_backbone_kept(self, task: str) -> int:
        if self.group.size == self.pools.split[task]:          # the task's whole shared part: from the histograms
            return self.sels[task].split_kept
        flags = torch.empty(self.group.size, dtype=torch.bool)
        self.task_backbone_into(task, flags)
        return int(flags.count_nonzero())

    def layer_views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return layout_views(flat, self.group.layout)

    def backbone_scores(self, task: str) -> torch.Tensor:
        start = self.group.at[task]
        return self.pools.flats[task][start:start + self.group.size]

    def work_buffer(self) -> torch.Tensor:
        return self.pools.work_buffer()[:self.group.size]

    def ranked_pool(self, flat: torch.Tensor, label: str) -> RankedPool:
        return self.pools.ranked_pool(flat, label)


# ----------------------------------------------------------------------------------------------------------
# public API


def task_masks(scores: Scores, keep_ratio: float, structure: TaskStructure | None = None) -> dict[str, MaskSet]:
    """Each task's own keep mask over its pool (backbone + own head): exactly k = max(1, ⌊ρ·|pool|⌋) kept."""
    pools = TaskPools(scores, structure)
    return {task: pools.task_mask(task, keep_ratio) for task in pools.tasks}


def combine(task_masks: Mapping[str, Mapping[str, torch.Tensor]], arbiter: ArbiterLike = "unanimous",
            scores: Scores | None = None, structure: TaskStructure | None = None) -> MaskSet:
    """The model mask set: backbone decided by `arbiter`, each head from its own task's mask.

    `task_masks` maps task -> {param name -> BoolTensor} over that task's pool (as `task_masks()` returns).
    `scores` is required by arbiters that rank scores (`mean_score`).
    """
    arb = get_arbiter(arbiter)
    if not task_masks:
        raise ValueError("combine needs the masks of at least one task")
    structure = structure_of(task_masks, structure)
    tasks = list(task_masks)
    for task in tasks:
        extra = [n for n in task_masks[task] if structure.part(n) != SHARED and structure.part(n) != task]
        if extra:
            raise ValueError(f"masks of task {task!r} include {extra[0]!r}, which belongs to another head")
    out: MaskSet = {}
    for owners, names in structure.groups():         # each sharing group is decided by its owners
        voters = [t for t in owners if t in task_masks]
        if not voters:
            continue
        group_masks = {t: {n: task_masks[t][n] for n in names if n in task_masks[t]} for t in voters}
        if not any(group_masks.values()):
            continue
        decided = arb(group_masks, scores)
        out.update({n: decided[n].to(torch.bool) for n in group_masks[voters[0]]})
    for task in tasks:
        for name, mask in task_masks[task].items():
            if structure.part(name) == task:
                out[name] = mask.to(torch.bool)
    return out


def masks_for_keep_ratio(scores: Scores, keep_ratio: float, arbiter: ArbiterLike = "unanimous",
                         structure: TaskStructure | None = None) -> MaskSet:
    """The model mask set at a given per-task keep ratio (`--keep-ratio`, the paper's table)."""
    _, masks = TaskPools(scores, structure).evaluate(keep_ratio, get_arbiter(arbiter), build=True)
    assert masks is not None
    return masks


class SearchInfo(dict):
    """What `masks_for_sparsity(..., return_info=True)` reports: keep_ratio, kept, total, sparsity,
    target_sparsity, within_tol, exact_evaluations, per-task k."""


@overload
def masks_for_sparsity(scores: Scores, target_sparsity: float, arbiter: ArbiterLike = ..., tol: float = ...,
                       sample_size: int = ..., max_evaluations: int = ..., return_info: Literal[False] = ...,
                       structure: TaskStructure | None = ...) -> tuple[MaskSet, float]: ...


@overload
def masks_for_sparsity(scores: Scores, target_sparsity: float, arbiter: ArbiterLike = ..., tol: float = ...,
                       sample_size: int = ..., max_evaluations: int = ..., *, return_info: Literal[True],
                       structure: TaskStructure | None = ...) -> tuple[MaskSet, float, SearchInfo]: ...


def masks_for_sparsity(scores: Scores, target_sparsity: float, arbiter: ArbiterLike = "unanimous",
                       tol: float = 5e-4, sample_size: int = DEFAULT_SAMPLE, max_evaluations: int = 60,
                       return_info: bool = False, structure: TaskStructure | None = None
                       ) -> tuple[MaskSet, float] | tuple[MaskSet, float, SearchInfo]:
    """(mask set, per-task keep ratio) whose model sparsity is `target_sparsity` within `tol`.

    `target_sparsity` is a fraction in [0, 1) (0.9 for `--ratio 90`); `tol` is a fraction of all
    prunable weights (5e-4 = 0.05 percentage points). When no keep ratio reaches the window (tiny
    nets, huge ties) the closest result is returned with a warning. With `return_info=True` a third
    element, a `SearchInfo` dict, is returned too.
    """
    if not 0 <= float(target_sparsity) < 1:
        raise ValueError(f"target sparsity must be a fraction in [0, 1) (0.9 for 90 %), got {target_sparsity}")
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    arb = get_arbiter(arbiter)
    pools = TaskPools(scores, structure)
    total = pools.N
    target = (1.0 - float(target_sparsity)) * total     # kept weights wanted (not rounded)
    found = solve_keep_ratio(lambda r: pools.evaluate(r, arb, build=False)[0], target, tol * total, total,
                             key=lambda r: tuple(pools.ks(r).values()), estimate=pools.estimator(arb, sample_size),
                             start=max(1.0 - float(target_sparsity), 1e-9), max_evaluations=max_evaluations)
    rho, kept = found.keep_ratio, found.count
    if not found.within:
        warnings.warn(f"masks_for_sparsity: closest achievable sparsity {1 - kept / total:.6f} is outside "
                      f"{target_sparsity} ± {tol} (no per-task keep ratio lands closer)", RuntimeWarning,
                      stacklevel=2)
    kept_final, masks = pools.evaluate(rho, arb, build=True)
    assert kept_final == kept and masks is not None
    if not return_info:
        return masks, rho
    info = SearchInfo(keep_ratio=rho, kept=kept, total=total, sparsity=1 - kept / total,
                      target_sparsity=float(target_sparsity), within_tol=found.within,
                      exact_evaluations=found.evaluations, k=pools.ks(rho))
    return masks, rho, info


def global_topk(scores: Mapping, target_sparsity: float | None = None, keep_ratio: float | None = None) -> MaskSet:
    """Task-agnostic masks (the SNIP / random / magnitude baselines): one global top-k over all weights.

    `scores` is `{ALL: {name: tensor}}` (as `compute_scores(..., task_agnostic_weights=...)` returns) or the
    inner dict. Exactly N - round(target_sparsity * N) weights are kept (or max(1, ⌊keep_ratio · N⌋)).
    """
    if ALL in scores:
        scores = scores[ALL]
    if (target_sparsity is None) == (keep_ratio is None):
        raise ValueError("give exactly one of target_sparsity and keep_ratio")
    total = sum(s.numel() for s in scores.values())
    if target_sparsity is not None:
        if not 0 <= float(target_sparsity) < 1:
            raise ValueError(f"target sparsity must be a fraction in [0, 1), got {target_sparsity}")
        k = max(1, total - int(round(float(target_sparsity) * total)))
    else:
        assert keep_ratio is not None
        k = keep_count_floor(keep_ratio, total)
    return topk_masks(scores, k)
