"""Backbone arbiters: how the tasks' keep masks decide the one shared (backbone) mask.

Each task t proposes a keep mask K_t over its pool (backbone ∪ its own head). Head weights belong to
one task, so each head simply keeps its own task's mask. The shared backbone needs a rule; that rule is
an *arbiter*, looked up by name in `ARBITERS` (add your own with `register_arbiter`):

| name | a backbone weight is kept iff | note |
|---|---|---|
| `unanimous` | at least one task keeps it (OR / union) | the paper: a shared weight is removed only if every task removes it (docs/ORIGINAL.md §5.1 step 4) |
| `intersection` | every task keeps it (AND) | the most aggressive |
| `majority` | at least ceil(T/2) tasks keep it (a tie keeps it) | T = 2: same as `unanimous`; T = 3: 2 votes; T = 5: 3 votes |
| `mean_score` | it is among the top k of the tasks' pool-normalised scores averaged over tasks | k = round-half-up of the mean of the tasks' backbone keep counts |

An int q is a vote arbiter too (kept iff at least q tasks keep it).

What an arbiter is
------------------
`Arbiter.__call__(backbone_masks, scores=None) -> MaskSet` is the rule itself: `backbone_masks` maps
task -> {backbone param name -> BoolTensor} (every task has the same names and shapes), `scores` (task ->
{param name -> FloatTensor} over the task's pool) is there for arbiters that rank scores. A plain
function with that signature can be registered; it is wrapped in `CallableArbiter`.

The same object serves the three places that arbitrate, each through a method with a generic default:

* `backbone_into(ballot, out)` / `backbone_count(ballot)`: the exact-sparsity search of
  `mask_builder`, which holds each task's pool as a flat, ranked vector. The default builds the
  per-task masks and calls the rule; `VoteArbiter` counts votes on flat buffers and `MeanScoreArbiter`
  knows its count without building anything (its fast paths).
* `backbone_estimator(poll, sample_size)`: a cheap, monotone estimate of the backbone count as a
  function of the keep ratio, from which the search starts (None: start from the keep ratio alone).
* `select_growth(candidates, scores, n)`: dynamic sparse training's regrowth on a shared layer, where
  the tasks rank candidate positions instead of proposing masks. The default orders the candidates
  by their q-th best rank over tasks, q = `quorum(T)`: the order in which they enter the arbiter's
  result on the tasks' top-k sets as k grows (ties by the sum of ranks, then by index). Vote arbiters
  have a quorum (their vote threshold); an arbiter without one (`mean_score`) cannot arbitrate growth.

The exact-sparsity search needs the kept count to be non-decreasing in the per-task keep ratio. Every
built-in arbiter is: per-task masks are nested in k (a fixed total order), vote counts can only grow,
and `mean_score`'s k grows with the tasks' counts. A custom arbiter must keep that property.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Protocol, Sequence, Union

import numpy as np
import torch

from .masks import MaskSet
from .topk import RankedPool, topk_masks

TaskMasks = Mapping[str, Mapping[str, torch.Tensor]]
Scores = Mapping[str, Mapping[str, torch.Tensor]]
_LEVELS = 1 << 20                   # resolution of the estimated rank-fraction histogram


class Ballot(Protocol):
    """The tasks' exact selections at one keep ratio, as `mask_builder` offers them to an arbiter.

    The backbone is one flat vector of `backbone_size` positions (layers in pool order, row-major)."""

    @property
    def tasks(self) -> Sequence[str]: ...
    backbone_size: int
    scores: Scores
    memo: dict                                   # per score set and sharing group: caches across keep ratios

    def task_backbone_into(self, task: str, out: torch.Tensor) -> None: ...   # task's keep flags, flat bool
    def task_backbone_kept(self, task: str) -> int: ...                       # how many it keeps there
    def layer_views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]: ... # flat backbone -> per layer
    def backbone_scores(self, task: str) -> torch.Tensor: ...                 # flat float32 scores
    def work_buffer(self) -> torch.Tensor: ...                                # reusable flat bool buffer
    def ranked_pool(self, flat: torch.Tensor, label: str) -> RankedPool: ...  # top-k over a backbone vector


class Poll(Protocol):
    """The tasks' ranked pools before any exact selection, for estimates."""

    @property
    def tasks(self) -> Sequence[str]: ...
    backbone_size: int

    def sample_rank_fractions(self, sample_size: int) -> np.ndarray: ...     # tasks x samples, in [0, 1)
    def estimate_task_backbone_kept(self, task: str, keep_ratio: float) -> float: ...


class Arbiter:
    """Base class: subclasses implement `__call__`; the fast paths are optional (see the module docstring)."""

    name: str = "custom"

    def __call__(self, backbone_masks: TaskMasks, scores: Scores | None = None) -> MaskSet:  # pragma: no cover
        raise NotImplementedError

    # ---------------------------------------------------------------- exact-sparsity search
    def backbone_count(self, ballot: Ballot) -> int | None:
        """The kept backbone count when it is known without building the mask (else None)."""
        return None

    def backbone_into(self, ballot: Ballot, out: torch.Tensor) -> None:
        """Write the backbone decision into the flat bool `out`: build each task's masks, call the rule."""
        per_task = {}
        for task in ballot.tasks:
            part = torch.empty(ballot.backbone_size, dtype=torch.bool)
            ballot.task_backbone_into(task, part)
            per_task[task] = ballot.layer_views(part)
        decided = self(per_task, ballot.scores)
        views = ballot.layer_views(out)
        missing = [n for n in views if n not in decided]
        if missing:
            raise ValueError(f"arbiter {self!r} returned no mask for {missing[:3]}")
        for name, view in views.items():
            view.copy_(decided[name])

    def backbone_estimator(self, poll: Poll, sample_size: int) -> Callable[[float], float] | None:
        return None

    # ---------------------------------------------------------------- dynamic sparse training
    def quorum(self, num_tasks: int) -> int:
        """Votes a backbone position needs (the q of the growth order); arbiters without one refuse growth."""
        raise ValueError(f"arbiter {self.name!r} has no vote threshold; dynamic growth supports vote arbiters "
                         f"(unanimous, majority, intersection) or an int quorum")

    def select_growth(self, candidates: torch.Tensor, scores: Sequence[torch.Tensor], n: int) -> torch.Tensor:
        """Flat indices of the `n` candidates to grow on a shared layer, best first (see `select_growth`)."""
        return select_growth(candidates, scores, n, self.quorum(len(scores)))

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

    quorum = min_votes

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


    def backbone_into(self, ballot: Ballot, out: torch.Tensor) -> None:
        """Votes counted on flat buffers: OR / AND for 1 / T votes, a uint8 tally otherwise."""
        tasks = list(ballot.tasks)
        need = self.min_votes(len(tasks))
        ballot.task_backbone_into(tasks[0], out)
        if len(tasks) == 1:
            return
        tmp = ballot.work_buffer()
        if need == 1 or need == len(tasks):
            for task in tasks[1:]:
                ballot.task_backbone_into(task, tmp)
                if need == 1:
                    torch.logical_or(out, tmp, out=out)
                else:
                    torch.logical_and(out, tmp, out=out)
            return
        votes = out.to(torch.uint8)
        for task in tasks[1:]:
            ballot.task_backbone_into(task, tmp)
            votes += tmp
        torch.ge(votes, need, out=out)

    def backbone_estimator(self, poll: Poll, sample_size: int) -> Callable[[float], float]:
        """On a fixed sample of backbone positions, each one's rank fraction in each task (from the tasks'
        histograms): a position is kept at keep ratio ρ when its m-th smallest fraction is below ρ."""
        need = self.min_votes(len(poll.tasks))
        fractions = poll.sample_rank_fractions(sample_size)
        if need == 1:
            order_stat = fractions.min(axis=0)
        elif need == len(poll.tasks):
            order_stat = fractions.max(axis=0)
        else:
            order_stat = np.sort(fractions, axis=0)[need - 1]
        levels = np.minimum((order_stat * _LEVELS).astype(np.int64), _LEVELS - 1)
        cumulative = np.concatenate([[0], np.cumsum(np.bincount(levels, minlength=_LEVELS))])
        scale = poll.backbone_size / max(1, fractions.shape[1])

        def backbone_estimate(rho: float) -> float:
            x = min(max(rho, 0.0), 1.0) * _LEVELS
            i = min(int(x), _LEVELS - 1)
            below = cumulative[i] + (x - i) * (cumulative[i + 1] - cumulative[i])
            return below * scale

        return backbone_estimate


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

    def __call__(self, backbone_masks: TaskMasks, scores: Scores | None = None) -> MaskSet:
        if scores is None:
            raise ValueError("arbiter 'mean_score' needs the per-task scores")
        names = _check_same_layout(backbone_masks)
        tasks = list(backbone_masks)
        missing = [t for t in tasks if t not in scores]
        if missing:
            raise ValueError(f"arbiter 'mean_score': no scores for task(s) {missing}")
        k = round_half_up_mean([sum(int(backbone_masks[t][n].sum()) for n in names) for t in tasks])
        return topk_masks(mean_normalised_scores(scores, names, tasks), k)

    def backbone_count(self, ballot: Ballot) -> int:
        return round_half_up_mean([ballot.task_backbone_kept(t) for t in ballot.tasks])

    def backbone_into(self, ballot: Ballot, out: torch.Tensor) -> None:
        ranked = ballot.memo.get(self.name)
        if ranked is None:                  # the averaged scores do not depend on the keep ratio
            flat = torch.empty(ballot.backbone_size, dtype=torch.float32)
            totals = [pool_total(ballot.scores[t]) for t in ballot.tasks]
            mean_normalised_into([ballot.backbone_scores(t) for t in ballot.tasks], totals, flat)
            ranked = ballot.memo[self.name] = ballot.ranked_pool(flat, "mean normalised scores")
        ranked.mask_into(ranked.select(self.backbone_count(ballot)), out)

    def backbone_estimator(self, poll: Poll, sample_size: int) -> Callable[[float], float]:
        def backbone_estimate(rho: float) -> float:
            split = [poll.estimate_task_backbone_kept(t, rho) for t in poll.tasks]
            return sum(split) / len(split)
        return backbone_estimate


class CallableArbiter(Arbiter):
    """A plain function `fn(backbone_masks, scores=None) -> MaskSet` as an arbiter (generic paths only)."""

    def __init__(self, fn: Callable[..., MaskSet], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "custom"))

    def __call__(self, backbone_masks: TaskMasks, scores: Scores | None = None) -> MaskSet:
        return self.fn(backbone_masks, scores)


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


ArbiterLike = Union[str, int, Arbiter, Callable[..., MaskSet]]

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
    ARBITERS[name] = arbiter if isinstance(arbiter, Arbiter) else CallableArbiter(arbiter, name)


def get_arbiter(arbiter: ArbiterLike) -> Arbiter:
    """An arbiter object from a registry name, an int quorum, an `Arbiter`, or a plain function."""
    if isinstance(arbiter, bool):
        raise ValueError(f"unknown arbiter {arbiter!r}")
    if isinstance(arbiter, str):
        if arbiter not in ARBITERS:
            raise ValueError(f"unknown arbiter {arbiter!r} (expected one of {', '.join(ARBITERS)})")
        return ARBITERS[arbiter]
    if isinstance(arbiter, int):
        return VoteArbiter(f"quorum {arbiter}", lambda n: arbiter, f"kept if at least {arbiter} tasks keep it")
    if isinstance(arbiter, Arbiter):
        return arbiter
    if callable(arbiter):
        return CallableArbiter(arbiter)
    raise TypeError(f"an arbiter is a registry name, an int quorum or a callable, got {type(arbiter).__name__}")


def arbiter_quorum(arbiter: ArbiterLike, num_tasks: int) -> int:
    """Votes (tasks) a backbone position needs under `arbiter`: `unanimous` 1, `majority` ceil(T/2),
    `intersection` T, an int q itself; arbiters without a vote threshold (`mean_score`) are refused."""
    return get_arbiter(arbiter).quorum(num_tasks)


def select_growth(candidates: torch.Tensor, scores: Sequence[torch.Tensor], n: int, quorum: int = 1) -> torch.Tensor:
    """Flat indices of the `n` candidate positions to grow, best first.

    `candidates` is a flat bool tensor (True = may grow); `scores` holds one flat score tensor per task
    (higher = wanted more). Each task ranks the candidates by descending score (ties: lower index
    first); positions are ordered by their `quorum`-th smallest rank over tasks, then by the sum of
    their ranks, then by index. With one task this is plain top-n.
    """
    cand_idx = torch.nonzero(candidates.reshape(-1), as_tuple=False).squeeze(1)
    count = cand_idx.numel()
    if n < 0 or n > count:
        raise ValueError(f"cannot grow {n} positions out of {count} candidates")
    if n == 0:
        return cand_idx[:0]
    if not scores:
        raise ValueError("select_growth needs at least one score tensor")
    orders = [torch.sort(s.reshape(-1)[cand_idx], descending=True, stable=True).indices for s in scores]
    if len(orders) == 1:
        return cand_idx[orders[0][:n]]
    if not 1 <= quorum <= len(orders):
        raise ValueError(f"quorum must lie in 1..{len(orders)}, got {quorum}")
    positions = torch.arange(count, device=cand_idx.device)
    ranks = torch.empty((len(orders), count), dtype=torch.long, device=cand_idx.device)
    for t, order in enumerate(orders):
        ranks[t, order] = positions
    key = torch.sort(ranks, dim=0).values[quorum - 1]
    total = ranks.sum(dim=0)
    # lexicographic (key, total, index) with two stable sorts
    by_total = torch.sort(total, stable=True).indices
    by_key = torch.sort(key[by_total], stable=True).indices
    return cand_idx[by_total[by_key][:n]]
