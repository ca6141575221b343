"""Backbone arbiters: how the tasks' keep masks decide the one shared (backbone) mask.

Each task t proposes a keep mask K_t over its pool (backbone ∪ its own head). Head weights belong to
one task, so each head simply keeps its own task's mask. The shared backbone needs a rule; that rule is
an *arbiter*, looked up by name in `ARBITERS` (add your own with `register_arbiter`):

| name | a backbone weight is kept iff | note |
|---|---|---|
| `unanimous` | at least one task keeps it (OR / union) | the paper: a shared weight is removed only if every task removes it (REFERENCE.md §5.1 step 4) |
| `intersection` | every task keeps it (AND) | the most aggressive |
| `majority` | at least ceil(T/2) tasks keep it (a tie keeps it) | T = 2: same as `unanimous`; T = 3: 2 votes; T = 5: 3 votes |
| `mean_score` | it is among the top k of the tasks' pool-normalised scores averaged over tasks | k = round-half-up of the mean of the tasks' backbone keep counts |

An arbiter is a callable `arbiter(backbone_masks, scores=None) -> MaskSet` where `backbone_masks` maps
task -> {backbone param name -> BoolTensor} (every task has the same names and shapes) and the result is a
mask for those backbone names. `scores` (task -> {param name -> FloatTensor} over the task's whole pool) is
passed to arbiters whose `needs_scores` is True.

The exact-sparsity search (`prune_utils.mask_builder.masks_for_sparsity`) needs the kept count to be
non-decreasing in the per-task keep ratio. Every built-in arbiter is: per-task masks are nested in k
(a fixed total order), vote counts can only grow, and `mean_score`'s k grows with the tasks' counts. A
custom arbiter must keep that property. `VoteArbiter` and `MeanScoreArbiter` get a fast search path; any
other callable gets a slower but exact bisection that calls it at every step.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Union

import torch

from .masks import MaskSet

TaskMasks = Mapping[str, Mapping[str, torch.Tensor]]
Scores = Mapping[str, Mapping[str, torch.Tensor]]


class Arbiter:
    """Base class. Subclasses implement `__call__(backbone_masks, scores=None) -> MaskSet`."""

    name: str = "custom"
    needs_scores: bool = False

    def __call__(self, backbone_masks: TaskMasks, scores: Scores | None = None) -> MaskSet:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _check_same_layout(backbone_masks: TaskMasks) -> list[str]:
    if not backbone_masks:
        raise ValueError("an arbiter needs the masks of at least one task")
    tasks = list(backbone_masks)
    names = list(backbone_masks[tasks[0]])
    for task in tasks[1:]:
        other = backbone_masks[task]
        if set(other) != set(names):
            raise ValueError(f"task {task!r} masks other backbone weights than task {tasks[0]!r}")
        for name in names:
            if tuple(other[name].shape) != tuple(backbone_masks[tasks[0]][name].shape):
                raise ValueError(f"backbone mask {name!r} has different shapes across tasks")
    return names


class VoteArbiter(Arbiter):
    """Keep a backbone weight iff at least `min_votes(T)` of the T tasks keep it."""

    def __init__(self, name: str, min_votes: Callable[[int], int], description: str = "") -> None:
        self.name = name
        self._min_votes = min_votes
        self.description = description

    def min_votes(self, num_tasks: int) -> int:
        votes = int(self._min_votes(num_tasks))
        if not 1 <= votes <= num_tasks:
            raise ValueError(f"arbiter {self.name!r} asks for {votes} votes out of {num_tasks} tasks")
        return votes

    def __call__(self, backbone_masks: TaskMasks, scores: Scores | None = None) -> MaskSet:
        names = _check_same_layout(backbone_masks)
        tasks = list(backbone_masks)
        need = self.min_votes(len(tasks))
        out: MaskSet = {}
        for name in names:
            layers = [backbone_masks[t][name].to(torch.bool) for t in tasks]
            if need == 1:
                kept = layers[0].clone()
                for layer in layers[1:]:
                    kept |= layer
            elif need == len(tasks):
                kept = layers[0].clone()
                for layer in layers[1:]:
                    kept &= layer
            else:
                votes = torch.zeros(layers[0].shape, dtype=torch.uint8, device=layers[0].device)
                for layer in layers:
                    votes += layer
                kept = votes >= need
            out[name] = kept
        return out


def round_half_up_mean(counts: list[int]) -> int:
    """Mean of non-negative ints rounded half up, in integer arithmetic."""
    return (2 * sum(counts) + len(counts)) // (2 * len(counts))


class MeanScoreArbiter(Arbiter):
    """Top-k backbone weights by the tasks' pool-normalised scores averaged over tasks.

    Each task's scores are divided by their sum over the task's whole pool (backbone + own head), so
    every task has the same total say, then averaged over tasks. k = round-half-up(mean over tasks of
    the number of backbone weights each task's own mask keeps). Ties are broken by position in the
    flattened backbone (layers in mask order, row-major within a layer): the earlier one is kept.
    """

    name = "mean_score"
    needs_scores = True

    def __call__(self, backbone_masks: TaskMasks, scores: Scores | None = None) -> MaskSet:
        if scores is None:
            raise ValueError("arbiter 'mean_score' needs the per-task scores")
        names = _check_same_layout(backbone_masks)
        tasks = list(backbone_masks)
        missing = [t for t in tasks if t not in scores]
        if missing:
            raise ValueError(f"arbiter 'mean_score': no scores for task(s) {missing}")
        k = round_half_up_mean([sum(int(backbone_masks[t][n].sum()) for n in names) for t in tasks])
        averaged = mean_normalised_scores(scores, names, tasks)
        from .mask_builder import topk_masks  # late import: mask_builder imports this module
        return topk_masks(averaged, k)


def pool_total(task_scores: Mapping[str, torch.Tensor]) -> float:
    """Sum of a task's scores over its pool: per layer (float32, torch's cascade sum), then in Python floats
    in dict order. 1.0 when the sum is zero."""
    total = sum(float(s.detach().sum()) for s in task_scores.values())
    return total if total > 0 else 1.0


_CHUNK = 1 << 22


def mean_normalised_into(parts: list[torch.Tensor], totals: list[float], out: torch.Tensor) -> None:
    """out = mean_t(parts[t] / totals[t]) in float32, task by task in the given order.

    Elementwise, so any split of the same data into layers or chunks gives bitwise the same values.
    """
    flat_out = out.view(-1)
    flats = [p.detach().reshape(-1) for p in parts]
    for start in range(0, flat_out.numel(), _CHUNK):
        stop = min(start + _CHUNK, flat_out.numel())
        acc = flat_out[start:stop]
        torch.div(flats[0][start:stop].float(), totals[0], out=acc)
        for part, total in zip(flats[1:], totals[1:]):
            acc += part[start:stop].float() / total
        acc /= len(flats)


def mean_normalised_scores(scores: Scores, names: list[str], tasks: list[str],
                           out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{backbone name -> mean over tasks of score_t / pool_total(score_t)}, float32 on the CPU.

    With `out` (a flat float32 buffer of the backbone's size) the results are views into it, in `names` order.
    """
    totals = [pool_total(scores[task]) for task in tasks]
    result: dict[str, torch.Tensor] = {}
    offset = 0
    for name in names:
        shape = scores[tasks[0]][name].shape
        numel = scores[tasks[0]][name].numel()
        view = out[offset:offset + numel].view(shape) if out is not None else torch.empty(shape, dtype=torch.float32)
        mean_normalised_into([scores[t][name].cpu() for t in tasks], totals, view)
        result[name] = view
        offset += numel
    return result


ArbiterLike = Union[str, Arbiter, Callable[..., MaskSet]]

ARBITERS: dict[str, Arbiter] = {
    "unanimous": VoteArbiter("unanimous", lambda n: 1,
                             "kept if any task keeps it (union); pruned only if every task prunes it"),
    "intersection": VoteArbiter("intersection", lambda n: n, "kept only if every task keeps it"),
    "majority": VoteArbiter("majority", lambda n: math.ceil(n / 2),
                            "kept if at least half of the tasks keep it (ties keep)"),
    "mean_score": MeanScoreArbiter(),
}


def register_arbiter(name: str, arbiter: Arbiter | Callable[..., MaskSet], overwrite: bool = False) -> None:
    """Make `arbiter` available by name (e.g. for `pruning.arbiter` in a config)."""
    if name in ARBITERS and not overwrite:
        raise ValueError(f"arbiter {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(arbiter):
        raise TypeError(f"arbiter {name!r} must be callable")
    ARBITERS[name] = arbiter  # type: ignore[assignment]


def get_arbiter(arbiter: ArbiterLike) -> Arbiter | Callable[..., MaskSet]:
    """An arbiter object from a registry name (or the object itself)."""
    if isinstance(arbiter, str):
        if arbiter not in ARBITERS:
            raise ValueError(f"unknown arbiter {arbiter!r} (expected one of {', '.join(ARBITERS)})")
        return ARBITERS[arbiter]
    if callable(arbiter):
        return arbiter
    raise TypeError(f"an arbiter is a registry name or a callable, got {type(arbiter).__name__}")


def needs_scores(arbiter: Arbiter | Callable[..., MaskSet]) -> bool:
    return bool(getattr(arbiter, "needs_scores", False))
