"""Per-task masks, arbitration and the exact-sparsity search (DESIGN.md contracts 3 and 7, REFERENCE.md §5).

Definitions
-----------
* A task's **pool** is the shared backbone followed by the task's own head, in a fixed order: the
  backbone parameters in the order of the first task's score dict, then the task's head parameters in
  its dict order, each flattened row-major. The *position* of a weight is its index in that
  concatenation.
* A task's **mask at keep ratio ρ** keeps exactly k = max(1, floor(ρ · |pool|)) weights: the k largest
  scores, ties broken by position (the earlier weight wins). ρ is read as the decimal it prints as, so
  ρ = 0.29 with a pool of 100 keeps 29 (not 28 from 0.29 · 100 = 28.999…). The original thresholds with
  `score >= τ`, which keeps more than k on ties (REFERENCE.md §5.5, §11 item 21); here k is exact.
* Ranking uses the raw scores. Dividing by the pool sum (the original's normalisation) is rank-neutral,
  so it matters only to the `mean_score` arbiter, which normalises (see `arbiters.py`).
* The **model mask** takes the backbone from the arbiter and each head from its own task's mask.

Exact sparsity
--------------
`masks_for_sparsity` finds the per-task keep ratio ρ whose model mask has the target sparsity within
`tol` (a fraction of all prunable weights; 5e-4 = 0.05 points). The kept count is non-decreasing in ρ
for every built-in arbiter (masks are nested in k; votes and `mean_score`'s k only grow), so a
bracketing search converges. It never sorts a pool (a full sort of 44.5 M floats takes seconds on two
cores). Instead:

1. Each pool gets one 32768-bin histogram of the top 16 bits of its float32 scores (sign, exponent and
   7 mantissa bits: for non-negative floats these bits order like the values). The exact k-th largest
   score is then found by looking inside one bin only, at its low 16 bits (a two-level radix select);
   a bin is extracted once and reused for every k that ends in it. The number of backbone weights a
   task keeps follows from the histograms, without building its mask.
2. For vote arbiters the joint behaviour of the tasks on the backbone is estimated on a fixed sample of
   backbone positions (every p-th position, p the first prime >= |backbone| / 2 M; all of them for
   small nets): each sampled weight's rank fraction in each task is read off the histograms, and the
   arbiter keeps it when the m-th smallest of those is below ρ. `mean_score` needs no sample (its k
   follows from the per-task counts).
3. Bisection on that estimate gives ρ̂; the masks are then built exactly at ρ̂ and counted. If the exact
   count is off by more than `tol`, exact evaluations continue inside a shrinking bracket (one step
   along the estimate's slope, then secant steps, bisecting whenever one end stalls) until the count is
   within `tol` or no keep ratio changes it any more. The estimate ignores the position order inside
   a big tie (e.g. many exact-zero scores), which is where the extra exact evaluations happen.

Measured on the full NYUv2 net (67.6 M weights, two pools of ~44.5 M, uniform random scores), scores to
masks including the search, one exact evaluation each: ≈ 0.5 s with one thread (CPU time, 2-core VM);
≈ 0.8 s when the scores are separate tensors that must be concatenated first; with 30 % exact-zero scores
up to ≈ 1.2 s CPU (3 exact evaluations). Score tensors that are views into one flat float32 buffer per
task (as `prune_utils.saliency.compute_scores` returns them) are used without a copy.

Returned mask sets are views into one flat bool buffer (contract 3 holds: one BoolTensor per prunable
weight, same shape); `.clone()` an entry if it must own its memory.
"""
from __future__ import annotations

import sys
import warnings
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from models import SHARED, owner_of

from .arbiters import (ARBITERS, ArbiterLike, MeanScoreArbiter, VoteArbiter, get_arbiter, mean_normalised_into,
                       pool_total, round_half_up_mean)
from .masks import MaskSet

ALL = "__all__"                     # key of task-agnostic scores (one score over every prunable weight)
_HI = 1 if sys.byteorder == "little" else 0
_NBINS = 1 << 15                    # top 16 bits of a non-negative float32: 0 .. 0x7FFF
_NONFINITE_BIN = 0x7F80             # +inf is exactly 0x7F800000; NaNs sit at or above this bin
DEFAULT_SAMPLE = 2_000_000          # backbone positions sampled to estimate the arbiter's count
_SAMPLE_SEED = 0x5EED               # fixed: the search, and so the result, is deterministic
_LEVELS = 1 << 20                   # resolution of the estimated rank-fraction histogram

Scores = Mapping[str, Mapping[str, torch.Tensor]]
__all__ = ["ALL", "ARBITERS", "keep_count", "task_masks", "combine", "masks_for_keep_ratio", "masks_for_sparsity",
           "global_topk", "topk_masks", "SearchInfo"]


# ----------------------------------------------------------------------------------------------------------
# small helpers


def keep_count(keep_ratio: float, pool_size: int) -> int:
    """k = max(1, floor(keep_ratio * pool_size)), capped at the pool size; the ratio read as its decimal."""
    if not 0 < float(keep_ratio) <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    if pool_size <= 0:
        return 0
    k = int(Fraction(repr(float(keep_ratio))) * pool_size)  # int() floors a positive Fraction
    return min(pool_size, max(1, k))


def _flat_float32(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One 1-D float32 CPU tensor holding `tensors` back to back: a view when they already are, else a copy."""
    tensors = [t.detach() for t in tensors]
    total = sum(t.numel() for t in tensors)
    if not tensors:
        return torch.empty(0, dtype=torch.float32)
    first = tensors[0]
    if all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        storage = first.untyped_storage()
        offset = first.storage_offset()
        contiguous_run = True
        for t in tensors:
            if t.untyped_storage().data_ptr() != storage.data_ptr() or t.storage_offset() != offset:
                contiguous_run = False
                break
            offset += t.numel()
        if contiguous_run and offset * 4 <= storage.nbytes():
            return first.as_strided((total,), (1,), first.storage_offset())
    out = torch.empty(total, dtype=torch.float32)
    offset = 0
    for t in tensors:
        out[offset:offset + t.numel()].copy_(t.reshape(-1))
        offset += t.numel()
    return out


_FEW_TIES = 1 << 16                 # up to this many tie positions are written one by one
_CHUNK = 1 << 20                    # chunk size when counting equal scores in position order


class _Selection:
    """The exact top-k of a ranked pool: keep `value > tau`, plus the ties (value == tau) up to position
    `tie_cut`. `ties` lists those tie positions when they were cheap to list (else None)."""

    __slots__ = ("k", "tau", "ties", "tie_cut", "split_kept", "head_kept")

    def __init__(self, k: int, tau: torch.Tensor | None, ties: torch.Tensor | None, tie_cut: int,
                 split_kept: int) -> None:
        self.k = k
        self.tau = tau                # 0-dim float32 tensor, None when k == 0
        self.ties = ties              # ascending int64 positions with value == tau that are kept, or None
        self.tie_cut = tie_cut        # the last kept position with value == tau (-1: none)
        self.split_kept = split_kept  # kept positions below the pool's split (the backbone part)
        self.head_kept = k - split_kept


class _Bin:
    """Counts of the low 16 bits inside one top-16-bit bin, extracted once and reused for every k in it.

    A light bin (few elements) also keeps its positions; a heavy one (e.g. all the exact zeros) only its
    counts, and the positions of a tie are then found by counting equal values chunk by chunk.
    """

    def __init__(self, sub: np.ndarray, sub_split: np.ndarray, positions: torch.Tensor | None = None,
                 low: torch.Tensor | None = None) -> None:
        self.sub = sub
        self.sub_split = sub_split
        self.positions = positions                                   # ascending, light bins only
        self.low = low
        self.sub_at_or_above = np.cumsum(self.sub[::-1])[::-1].copy()
        self.sub_split_above = np.cumsum(self.sub_split[::-1])[::-1] - self.sub_split
        self.equal_cache: dict[int, Any] = {}


class _Ranked:
    """A pool of non-negative float32 scores in a fixed order; exact top-k with ties broken by position.

    `split` divides the pool into a first part (the backbone) and the rest (the head) so that the kept
    count of each part is known from the histograms without building masks.
    """

    def __init__(self, flat: torch.Tensor, split: int, scratch16: torch.Tensor, scratch_bool: torch.Tensor,
                 label: str = "scores") -> None:
        self.flat = flat
        self.n = flat.numel()
        self.split = split
        self.label = label
        self._bool = scratch_bool
        self._cache: dict[int, _Selection] = {}
        self._bins: dict[int, _Bin] = {}
        halves = flat.view(torch.int16) if self.n else torch.empty(0, dtype=torch.int16)
        self.high = halves[_HI::2]
        self.low16 = halves[1 - _HI::2]
        buf = scratch16[:self.n]
        buf.copy_(self.high)
        try:
            first = torch.bincount(buf[:split], minlength=_NBINS).numpy().astype(np.int64)
            rest = torch.bincount(buf[split:], minlength=_NBINS).numpy().astype(np.int64)
        except RuntimeError:
            raise ValueError(f"{label}: saliency scores must be non-negative (found negative values)") from None
        if first[_NONFINITE_BIN:].any() or rest[_NONFINITE_BIN:].any():
            if bool(torch.isnan(flat).any()):
                raise ValueError(f"{label}: saliency scores contain NaN")
        self.count = first + rest
        self.count_split = first
        # at_or_above[b] = number of scores in bins >= b; above[b] = in bins > b
        self.at_or_above = np.cumsum(self.count[::-1])[::-1].copy()
        self.above = self.at_or_above - self.count
        self.above_split = np.cumsum(first[::-1])[::-1] - first

    # -- estimates (no pass over the data) -----------------------------------------------------------------
    def _bin_of(self, k: int) -> int:
        """The bin holding the k-th largest score (k >= 1)."""
        return int(np.count_nonzero(self.at_or_above >= k)) - 1

    def estimate_split_kept(self, k: int) -> float:
        """Approximate number of first-part positions among the top k (interpolated inside one bin)."""
        if k <= 0:
            return 0.0
        b = self._bin_of(k)
        r = k - self.above[b]
        return float(self.above_split[b] + r * self.count_split[b] / self.count[b])

    def rank_fraction(self, values: torch.Tensor) -> np.ndarray:
        """Approximate (number of scores ranked ahead) / n for each value (uniform inside a bin)."""
        pairs = values.contiguous().view(torch.int16).view(-1, 2).numpy()
        high = pairs[:, _HI].astype(np.int64)
        low = pairs[:, 1 - _HI].astype(np.int64) & 0xFFFF
        ahead = self.above[high] + self.count[high] * (1.0 - (low + 0.5) / 65536.0)
        return ahead / float(self.n)

    # -- exact ------------------------------------------------------------------------------------------------
    def _bin(self, b: int) -> _Bin:
        if b in self._bins:
            return self._bins[b]
        padded = -(-self.n // 8) * 8
        flags = self._bool[:padded]
        torch.eq(self.high, b, out=flags[:self.n])
        if padded > self.n:
            flags[self.n:].fill_(False)
        width = 1 << 16
        if self.count[b] * 32 > self.n:   # heavy: count the low halves without listing positions
            contents = self._single_valued_bin(b, flags)
            if contents is not None:
                self._bins[b] = contents
                return contents
            torch.eq(self.high, b, out=flags[:self.n])
            low_split = self.low16[:self.split][flags[:self.split]].to(torch.int32) & 0xFFFF
            low_rest = self.low16[self.split:][flags[self.split:self.n]].to(torch.int32) & 0xFFFF
            sub_split = torch.bincount(low_split, minlength=width).numpy().astype(np.int64)
            sub = sub_split + torch.bincount(low_rest, minlength=width).numpy().astype(np.int64)
            contents = _Bin(sub, sub_split)
        else:                             # light: find the non-zero 8-byte words, then look inside them
            words = flags.view(torch.int64).nonzero().view(-1)
            hits = flags.view(torch.uint8).view(-1, 8)[words].nonzero()
            positions = words[hits[:, 0]] * 8 + hits[:, 1]
            low = self.low16[positions].to(torch.int32) & 0xFFFF
            in_split = int(torch.searchsorted(positions, self.split)) if positions.numel() else 0
            contents = _Bin(torch.bincount(low, minlength=width).numpy().astype(np.int64),
                            torch.bincount(low[:in_split], minlength=width).numpy().astype(np.int64),
                            positions, low)
        self._bins[b] = contents
        return contents

    def _single_valued_bin(self, b: int, flags: torch.Tensor) -> _Bin | None:
        """A heavy bin holding one value only (typically all the exact zeros): its counts from one compare
        pass, which also gives the per-chunk counts `_ties` needs. None when the bin holds several values."""
        first = int(torch.argmax(flags[:self.n].view(torch.uint8)))
        value = self.flat[first].clone()
        torch.eq(self.flat, value, out=flags[:self.n])
        counts = [int(flags[i:i + _CHUNK].count_nonzero()) for i in range(0, self.n, _CHUNK)]
        if sum(counts) != self.count[b]:
            return None
        c = int(value.reshape(1).view(torch.int16)[1 - _HI]) & 0xFFFF
        sub = np.zeros(1 << 16, dtype=np.int64)
        sub_split = np.zeros(1 << 16, dtype=np.int64)
        sub[c] = self.count[b]
        sub_split[c] = int(flags[:self.split].count_nonzero())
        contents = _Bin(sub, sub_split)
        contents.equal_cache[c] = np.cumsum(counts)
        return contents

    def _ties(self, contents: _Bin, c: int, tau: torch.Tensor, r: int) -> tuple[torch.Tensor | None, int]:
        """The first r positions holding exactly tau: (listed positions or None, last position)."""
        if contents.positions is not None:
            if c not in contents.equal_cache:
                contents.equal_cache[c] = contents.positions[contents.low == c]
            ties = contents.equal_cache[c][:r]
            return ties, int(ties[-1])
        if c not in contents.equal_cache:     # one pass: how many equal values each chunk holds
            flags = self._bool[:self.n]
            torch.eq(self.flat, tau, out=flags)
            counts = [int(flags[i:i + _CHUNK].count_nonzero()) for i in range(0, self.n, _CHUNK)]
            contents.equal_cache[c] = np.cumsum(counts)
        cumulative = contents.equal_cache[c]
        chunk = int(np.searchsorted(cumulative, r))            # first chunk reaching r equal values
        before = int(cumulative[chunk - 1]) if chunk else 0
        start = chunk * _CHUNK
        inside = (self.flat[start:start + _CHUNK] == tau).nonzero().view(-1)
        return None, start + int(inside[r - before - 1])

    def select(self, k: int) -> _Selection:
        """Exact top-k: radix select on the top 16 bits (histogram), then on the low 16 bits inside one bin."""
        k = max(0, min(k, self.n))
        if k in self._cache:
            return self._cache[k]
        if k == 0:
            sel = _Selection(0, None, torch.empty(0, dtype=torch.int64), -1, 0)
        else:
            b = self._bin_of(k)
            r = int(k - self.above[b])                       # to take from bin b: 1 <= r <= count[b]
            contents = self._bin(b)
            c = int(np.count_nonzero(contents.sub_at_or_above >= r)) - 1
            r_equal = r - int(contents.sub_at_or_above[c] - contents.sub[c])  # among the values == tau
            bits = np.array([(b << 16) | c], dtype=np.int32)
            tau = torch.from_numpy(bits.view(np.float32).copy()).reshape(())
            ties, cut = self._ties(contents, c, tau, r_equal)  # the earliest positions win
            split_kept = (int(self.above_split[b]) + int(contents.sub_split_above[c])
                          + min(r_equal, int(contents.sub_split[c])))
            sel = _Selection(k, tau, ties, cut, split_kept)
        self._cache[k] = sel
        return sel

    def mask_into(self, sel: _Selection, out: torch.Tensor, start: int = 0, stop: int | None = None) -> None:
        """Write the kept flags of positions [start, stop) into the 1-D bool tensor `out`."""
        stop = self.n if stop is None else stop
        if sel.tau is None:
            out.fill_(False)
            return
        torch.gt(self.flat[start:stop], sel.tau, out=out)
        if sel.tie_cut < start:
            return
        ties = sel.ties
        if ties is not None:
            first = int(torch.searchsorted(ties, start))
            last = int(torch.searchsorted(ties, stop))
            if last - first <= _FEW_TIES:
                if last > first:
                    out[ties[first:last] - start] = True
                return
        # many ties: every value == tau up to the last kept tie is kept
        end = min(stop, sel.tie_cut + 1)
        prefix = out[:end - start]
        prefix |= self.flat[start:end] == sel.tau


def _next_prime(n: int) -> int:
    """Smallest prime >= n: a sampling stride that cannot line up with power-of-two or 3x3 weight layouts."""
    n = max(2, n)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def _views(buffer: torch.Tensor, layout: Sequence[tuple[str, torch.Size]], offset: int = 0) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape in layout:
        numel = int(np.prod(shape)) if len(shape) else 1
        out[name] = buffer[offset:offset + numel].view(shape)
        offset += numel
    return out


def _numel(layout: Sequence[tuple[str, torch.Size]]) -> int:
    return sum(int(np.prod(shape)) if len(shape) else 1 for _, shape in layout)


# ----------------------------------------------------------------------------------------------------------
# the multitask problem


class _Problem:
    """Scores of every task laid out as flat pools, with the exact and estimated machinery on top."""

    def __init__(self, scores: Scores) -> None:
        if not isinstance(scores, Mapping) or not scores:
            raise ValueError("scores must map task -> {param name -> tensor} for at least one task")
        if ALL in scores:
            raise ValueError(f"task-agnostic scores ({ALL!r}) have no per-task masks: use global_topk")
        self.scores = scores
        self.tasks = list(scores)
        first = scores[self.tasks[0]]
        self.backbone = [(n, first[n].shape) for n in first if owner_of(n) == SHARED]
        self.heads: dict[str, list[tuple[str, torch.Size]]] = {}
        backbone_shapes = dict(self.backbone)
        for task in self.tasks:
            task_scores = scores[task]
            head = []
            seen_backbone = set()
            for name, value in task_scores.items():
                owner = owner_of(name)
                if owner == SHARED:
                    if name not in backbone_shapes:
                        raise ValueError(f"task {task!r} scores backbone weight {name!r} that task "
                                         f"{self.tasks[0]!r} does not")
                    if tuple(value.shape) != tuple(backbone_shapes[name]):
                        raise ValueError(f"scores for {name!r} have different shapes across tasks")
                    seen_backbone.add(name)
                elif owner == task:
                    head.append((name, value.shape))
                else:
                    raise ValueError(f"scores of task {task!r} include {name!r}, which belongs to head {owner!r}")
            if len(seen_backbone) != len(self.backbone):
                missing = [n for n, _ in self.backbone if n not in seen_backbone]
                raise ValueError(f"scores of task {task!r} miss backbone weight(s) {missing[:3]}")
            self.heads[task] = head
        self.B = _numel(self.backbone)
        self.H = {t: _numel(self.heads[t]) for t in self.tasks}
        self.P = {t: self.B + self.H[t] for t in self.tasks}
        self.N = self.B + sum(self.H.values())
        if self.N == 0:
            raise ValueError("scores cover no weights")
        largest = max(self.P.values())
        self._scratch16 = torch.empty(largest, dtype=torch.int16)
        self._scratch_bool = torch.empty(-(-largest // 8) * 8, dtype=torch.bool)
        self.flats: dict[str, torch.Tensor] = {}
        self.ranked: dict[str, _Ranked] = {}
        for task in self.tasks:
            names = [n for n, _ in self.backbone] + [n for n, _ in self.heads[task]]
            flat = _flat_float32([scores[task][n] for n in names])
            self.flats[task] = flat
            self.ranked[task] = _Ranked(flat, self.B, self._scratch16, self._scratch_bool, f"scores of {task!r}")
        self._combined: torch.Tensor | None = None
        self._tmp_bool: torch.Tensor | None = None
        self._mean_ranked: _Ranked | None = None
        self._sample: np.ndarray | None = None   # tasks x samples rank fractions (vote arbiters)
        self._backbone_state: tuple | None = None  # (key, kept) of the backbone now in the combined buffer

    # -- layout ---------------------------------------------------------------------------------------------
    def ks(self, keep_ratio: float) -> dict[str, int]:
        return {t: keep_count(keep_ratio, self.P[t]) for t in self.tasks}

    def combined_buffer(self) -> torch.Tensor:
        if self._combined is None:
            self._combined = torch.empty(self.N, dtype=torch.bool)
        return self._combined

    def model_masks(self, buffer: torch.Tensor) -> MaskSet:
        masks = _views(buffer, self.backbone)
        offset = self.B
        for task in self.tasks:
            masks.update(_views(buffer, self.heads[task], offset))
            offset += self.H[task]
        return masks

    def head_offset(self, task: str) -> int:
        offset = self.B
        for t in self.tasks:
            if t == task:
                return offset
            offset += self.H[t]
        raise KeyError(task)

    def pool_masks(self, task: str, buffer: torch.Tensor) -> MaskSet:
        masks = _views(buffer, self.backbone)
        masks.update(_views(buffer, self.heads[task], self.B))
        return masks

    # -- exact evaluation -------------------------------------------------------------------------------------
    def task_mask(self, task: str, keep_ratio: float) -> MaskSet:
        ranked = self.ranked[task]
        sel = ranked.select(keep_count(keep_ratio, self.P[task]))
        buffer = torch.empty(self.P[task], dtype=torch.bool)
        ranked.mask_into(sel, buffer)
        return self.pool_masks(task, buffer)

    def _write_heads(self, sels: Mapping[str, _Selection], buffer: torch.Tensor) -> None:
        for task in self.tasks:
            start = self.head_offset(task)
            self.ranked[task].mask_into(sels[task], buffer[start:start + self.H[task]], self.B, self.P[task])

    def _mean_scores_ranked(self) -> _Ranked:
        if self._mean_ranked is None:
            flat = torch.empty(self.B, dtype=torch.float32)
            totals = [pool_total(self.scores[t]) for t in self.tasks]
            mean_normalised_into([self.flats[t][:self.B] for t in self.tasks], totals, flat)
            self._mean_ranked = _Ranked(flat, self.B, self._scratch16, self._scratch_bool, "mean normalised scores")
        return self._mean_ranked

    def evaluate(self, keep_ratio: float, arbiter, build: bool) -> tuple[int, MaskSet | None]:
        """Exact kept count of the model mask at `keep_ratio`; the mask set too when `build`."""
        sels = {t: self.ranked[t].select(k) for t, k in self.ks(keep_ratio).items()}
        head_kept = sum(s.head_kept for s in sels.values())
        buffer = self.combined_buffer() if (build or not isinstance(arbiter, MeanScoreArbiter)) else None
        backbone = buffer[:self.B] if buffer is not None else None
        if isinstance(arbiter, VoteArbiter):
            need = arbiter.min_votes(len(self.tasks))
            key = (need,) + tuple(s.k for s in sels.values())
            if self._backbone_state is not None and self._backbone_state[0] == key:
                kept_backbone = self._backbone_state[1]     # the buffer already holds this backbone
            else:
                self._votes_into(sels, need, backbone)
                kept_backbone = int(backbone.count_nonzero()) if self.B else 0
                self._backbone_state = (key, kept_backbone)
        elif isinstance(arbiter, MeanScoreArbiter):
            k_backbone = round_half_up_mean([s.split_kept for s in sels.values()])
            kept_backbone = k_backbone
            if build and self.B:
                self._backbone_state = None
                ranked = self._mean_scores_ranked()
                ranked.mask_into(ranked.select(k_backbone), backbone)
        else:
            per_task = {}
            for task in self.tasks:
                part = torch.empty(self.B, dtype=torch.bool)
                self.ranked[task].mask_into(sels[task], part, 0, self.B)
                per_task[task] = _views(part, self.backbone)
            decided = arbiter(per_task, self.scores)
            missing = [n for n, _ in self.backbone if n not in decided]
            if missing:
                raise ValueError(f"arbiter {arbiter!r} returned no mask for {missing[:3]}")
            self._backbone_state = None
            for name, view in _views(backbone, self.backbone).items():
                view.copy_(decided[name])
            kept_backbone = int(backbone.count_nonzero()) if self.B else 0
        kept = kept_backbone + head_kept
        if not build:
            return kept, None
        self._write_heads(sels, buffer)
        return kept, self.model_masks(buffer)

    def _votes_into(self, sels: Mapping[str, _Selection], need: int, out: torch.Tensor) -> None:
        if not self.B:
            return
        tasks = self.tasks
        first = self.ranked[tasks[0]]
        if len(tasks) == 1:
            first.mask_into(sels[tasks[0]], out, 0, self.B)
            return
        if self._tmp_bool is None:
            self._tmp_bool = torch.empty(self.B, dtype=torch.bool)
        tmp = self._tmp_bool
        if need == 1 or need == len(tasks):
            first.mask_into(sels[tasks[0]], out, 0, self.B)
            for task in tasks[1:]:
                self.ranked[task].mask_into(sels[task], tmp, 0, self.B)
                if need == 1:
                    torch.logical_or(out, tmp, out=out)
                else:
                    torch.logical_and(out, tmp, out=out)
            return
        votes = torch.zeros(self.B, dtype=torch.uint8)
        for task in tasks:
            self.ranked[task].mask_into(sels[task], tmp, 0, self.B)
            votes += tmp
        torch.ge(votes, need, out=out)

    # -- estimate ---------------------------------------------------------------------------------------------
    def _vote_sample(self, need: int, sample_size: int) -> tuple[np.ndarray, float]:
        """Histogram (levels) of the estimated m-th smallest rank fraction over a backbone sample, and its scale."""
        if self._sample is None:
            stride = _next_prime(-(-self.B // sample_size)) if self.B > sample_size else 1
            self._sample = np.stack([self.ranked[t].rank_fraction(self.flats[t][:self.B:stride].contiguous())
                                     for t in self.tasks])
        fractions = self._sample
        if need == 1:
            order_stat = fractions.min(axis=0)
        elif need == len(self.tasks):
            order_stat = fractions.max(axis=0)
        else:
            order_stat = np.sort(fractions, axis=0)[need - 1]
        levels = np.minimum((order_stat * _LEVELS).astype(np.int64), _LEVELS - 1)
        hist = np.bincount(levels, minlength=_LEVELS)
        cumulative = np.concatenate([[0], np.cumsum(hist)])
        return cumulative, self.B / max(1, fractions.shape[1])

    def estimator(self, arbiter, sample_size: int):
        """A cheap, monotone approximation of `evaluate(ρ)[0]`, or None for custom arbiters."""
        if isinstance(arbiter, VoteArbiter):
            cumulative, scale = self._vote_sample(arbiter.min_votes(len(self.tasks)), sample_size)

            def backbone_estimate(rho: float) -> float:
                x = min(max(rho, 0.0), 1.0) * _LEVELS
                i = min(int(x), _LEVELS - 1)
                below = cumulative[i] + (x - i) * (cumulative[i + 1] - cumulative[i])
                return below * scale
        elif isinstance(arbiter, MeanScoreArbiter):
            backbone_estimate = None
        else:
            return None

        def estimate(rho: float) -> float:
            rho = min(max(rho, 1e-12), 1.0)
            split = []
            heads = 0.0
            for task in self.tasks:
                k = keep_count(rho, self.P[task])
                kept_split = self.ranked[task].estimate_split_kept(k)
                split.append(kept_split)
                heads += k - kept_split
            if backbone_estimate is None:
                return heads + sum(split) / len(split)
            return heads + backbone_estimate(rho)

        return estimate


# ----------------------------------------------------------------------------------------------------------
# public API


def task_masks(scores: Scores, keep_ratio: float) -> dict[str, MaskSet]:
    """Each task's own keep mask over its pool (backbone + own head): exactly k = max(1, ⌊ρ·|pool|⌋) kept."""
    problem = _Problem(scores)
    return {task: problem.task_mask(task, keep_ratio) for task in problem.tasks}


def combine(task_masks: Mapping[str, Mapping[str, torch.Tensor]], arbiter: ArbiterLike = "unanimous",
            scores: Scores | None = None) -> MaskSet:
    """The model mask set: backbone decided by `arbiter`, each head from its own task's mask.

    `task_masks` maps task -> {param name -> BoolTensor} over that task's pool (as `task_masks()` returns).
    `scores` is required by arbiters that rank scores (`mean_score`).
    """
    arb = get_arbiter(arbiter)
    if not task_masks:
        raise ValueError("combine needs the masks of at least one task")
    tasks = list(task_masks)
    backbone_names = [n for n in task_masks[tasks[0]] if owner_of(n) == SHARED]
    backbone_masks = {}
    for task in tasks:
        masks = task_masks[task]
        extra = [n for n in masks if owner_of(n) not in (SHARED, task)]
        if extra:
            raise ValueError(f"masks of task {task!r} include {extra[0]!r}, which belongs to another head")
        backbone_masks[task] = {n: masks[n] for n in backbone_names if n in masks}
    if getattr(arb, "needs_scores", False) and scores is None:
        raise ValueError(f"arbiter {getattr(arb, 'name', arb)!r} needs the per-task scores")
    decided = arb(backbone_masks, scores)
    out: MaskSet = {n: decided[n].to(torch.bool) for n in backbone_names}
    for task in tasks:
        for name, mask in task_masks[task].items():
            if owner_of(name) == task:
                out[name] = mask.to(torch.bool)
    return out


def masks_for_keep_ratio(scores: Scores, keep_ratio: float, arbiter: ArbiterLike = "unanimous") -> MaskSet:
    """The model mask set at a given per-task keep ratio (`--keep-ratio`, the paper's table)."""
    problem = _Problem(scores)
    _, masks = problem.evaluate(keep_ratio, get_arbiter(arbiter), build=True)
    return masks


class SearchInfo(dict):
    """What `masks_for_sparsity(..., return_info=True)` reports: keep_ratio, kept, total, sparsity,
    target_sparsity, within_tol, exact_evaluations, per-task k."""


def masks_for_sparsity(scores: Scores, target_sparsity: float, arbiter: ArbiterLike = "unanimous",
                       tol: float = 5e-4, sample_size: int = DEFAULT_SAMPLE, max_evaluations: int = 60,
                       return_info: bool = False):
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
    problem = _Problem(scores)
    total = problem.N
    target = (1.0 - float(target_sparsity)) * total     # kept weights wanted (not rounded)
    window = tol * total
    estimate = problem.estimator(arb, sample_size)

    # 1. cheap estimate -> starting keep ratio
    lo, hi = 0.0, 1.0
    if estimate is not None:
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if estimate(mid) < target:
                lo = mid
            else:
                hi = mid
        rho = hi
    else:
        rho = max(1.0 - float(target_sparsity), 1e-9)

    # 2. exact evaluations inside a bracket; the count depends on rho only through the per-task k
    counts: dict[tuple[int, ...], int] = {}

    def exact(r: float) -> int:
        key = tuple(problem.ks(r).values())
        if key not in counts:
            counts[key] = problem.evaluate(r, arb, build=False)[0]
        return counts[key]

    lo, hi = (0.0, 0.0), (1.0, float(total))       # (rho, kept) at the bracket ends (kept at 0: about 0)
    best: tuple[float, float, int] | None = None    # (|error|, rho, kept)
    moved: list[str] = []
    for step in range(200):
        kept = exact(rho)
        error = abs(kept - target)
        if best is None or error < best[0]:
            best = (error, rho, kept)
        if error <= window or len(counts) >= max_evaluations:
            break
        if kept < target:
            lo = (rho, kept)
            moved.append("lo")
        else:
            hi = (rho, kept)
            moved.append("hi")
        mid = 0.5 * (lo[0] + hi[0])
        if not lo[0] < mid < hi[0]:
            break                                   # the bracket cannot shrink any more
        candidate = mid
        if step == 0 and estimate is not None:
            # the estimate's local slope: right away when the estimate is only off by a shift
            below, above = max(rho - 1e-4, 0.0), min(rho + 1e-4, 1.0)
            slope = (estimate(above) - estimate(below)) / (above - below)
            if slope > 0:
                candidate = rho + (target - kept) / slope
        elif moved[-2:] not in (["lo", "lo"], ["hi", "hi"]) and hi[1] > lo[1]:
            # secant on the bracket (the count is piecewise linear in rho, even inside a big tie);
            # when one end stalls twice in a row, bisect instead
            candidate = lo[0] + (target - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1])
        if not lo[0] < candidate < hi[0]:
            candidate = mid
        rho = candidate
    evaluations = len(counts)
    _, rho, kept = best
    rho = float(rho)
    within = abs(kept - target) <= window
    if not within:
        warnings.warn(f"masks_for_sparsity: closest achievable sparsity {1 - kept / total:.6f} is outside "
                      f"{target_sparsity} ± {tol} (no per-task keep ratio lands closer)", RuntimeWarning,
                      stacklevel=2)
    kept_final, masks = problem.evaluate(rho, arb, build=True)
    assert kept_final == kept
    if not return_info:
        return masks, rho
    info = SearchInfo(keep_ratio=rho, kept=kept, total=total, sparsity=1 - kept / total,
                      target_sparsity=float(target_sparsity), within_tol=within, exact_evaluations=evaluations,
                      k=problem.ks(rho))
    return masks, rho, info


def topk_masks(scores: Mapping[str, torch.Tensor], k: int) -> MaskSet:
    """Exactly the k largest scores over all given layers (ties: earlier in dict order, then row-major)."""
    layout = [(n, s.shape) for n, s in scores.items()]
    flat = _flat_float32(list(scores.values()))
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    ranked = _Ranked(flat, n, torch.empty(n, dtype=torch.int16), torch.empty(-(-n // 8) * 8, dtype=torch.bool))
    buffer = torch.empty(n, dtype=torch.bool)
    ranked.mask_into(ranked.select(k), buffer)
    return _views(buffer, layout)


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
        k = keep_count(keep_ratio, total)
    return topk_masks(scores, k)
