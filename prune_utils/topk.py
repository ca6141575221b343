"""The top-k engine: exact top-k of large float32 score vectors, keep counts, and the keep-ratio search.

Everything that turns scores into masks rests on this module (per-task masks, arbiters, the
task-agnostic baselines, LTH's magnitude step, dynamic sparse training's counts); it imports nothing
from the project.

Exact top-k without sorting (`RankedPool`)
------------------------------------------
A pool is a vector of non-negative float32 scores in a fixed order; its top k keeps the k largest,
ties broken by position (the earlier one wins), so exactly k are kept. A full sort of tens of millions
of floats is slow, so the pool gets one 32768-bin histogram of the top 16 bits of its scores (sign,
exponent and 7 mantissa bits: for non-negative floats these bits order like the values). The exact
k-th largest score is then found by looking inside one bin only, at its low 16 bits (a two-level radix
select); a bin is extracted once and reused for every k that ends in it. A pool may be split in two
parts (a backbone and a head): the kept count of each part follows from the histograms, without
building the mask. The same histograms give a cheap rank estimate of any value (`rank_fraction`).

Keep counts
-----------
Two rounding rules, named for what they do:

* `keep_count_floor(ρ, N) = max(1, ⌊ρ·N⌋)`, ρ read as the decimal it prints as (ρ = 0.29 of 100
  keeps 29, not 28 from 0.29·100 = 28.999…): the per-task keep ratio of DiSparse (docs/ORIGINAL.md §5.1).
* `keep_count_round(d, N) = round(d·N)` (half to even), clamped to [0, N]: ERK densities and dynamic
  sparse training's per-layer targets (docs/ORIGINAL.md §6).

The search (`solve_keep_ratio`)
-------------------------------
Finds the keep ratio whose exact count is closest to a target when the count is non-decreasing in the
ratio: a cheap estimate (when there is one) gives the start, then exact evaluations inside a shrinking
bracket (one step along the estimate's slope, then secant steps, bisecting whenever one end stalls).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch

_HI = 1 if sys.byteorder == "little" else 0
_NBINS = 1 << 15                    # top 16 bits of a non-negative float32: 0 .. 0x7FFF
_NONFINITE_BIN = 0x7F80             # +inf is exactly 0x7F800000; NaNs sit at or above this bin


def keep_count_floor(keep_ratio: float, pool_size: int) -> int:
    """k = max(1, floor(keep_ratio * pool_size)), capped at the pool size; the ratio read as its decimal."""
    if not 0 < float(keep_ratio) <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    if pool_size <= 0:
        return 0
    k = int(Fraction(repr(float(keep_ratio))) * pool_size)  # int() floors a positive Fraction
    return min(pool_size, max(1, k))


def keep_count_round(density: float, numel: int) -> int:
    """Weights kept in a layer of `numel` weights at `density`: round(d * N) (half to even), clamped to [0, N]."""
    return min(numel, max(0, int(round(density * numel))))


def flat_float32(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
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


class Selection:
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


class RankedPool:
    """A pool of non-negative float32 scores in a fixed order; exact top-k with ties broken by position.

    `split` divides the pool into a first part (the backbone) and the rest (the head) so that the kept
    count of each part is known from the histograms without building masks.
    """

    def __init__(self, flat: torch.Tensor, split: int | None = None, scratch16: torch.Tensor | None = None,
                 scratch_bool: torch.Tensor | None = None, label: str = "scores") -> None:
        """`flat`: 1-D float32 CPU scores (`flat_float32` makes one); `split`: size of the first part
        (default: all of it). `scratch16` / `scratch_bool`: work buffers of at least n int16 and
        ceil(n / 8) * 8 bools, shared between pools to save memory (allocated when not given)."""
        self.flat = flat
        self.n = flat.numel()
        split = self.n if split is None else split
        if scratch16 is None:
            scratch16 = torch.empty(self.n, dtype=torch.int16)
        if scratch_bool is None:
            scratch_bool = torch.empty(-(-self.n // 8) * 8, dtype=torch.bool)
        self.split = split
        self.label = label
        self._bool = scratch_bool
        self._cache: dict[int, Selection] = {}
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

    def select(self, k: int) -> Selection:
        """Exact top-k: radix select on the top 16 bits (histogram), then on the low 16 bits inside one bin."""
        k = max(0, min(k, self.n))
        if k in self._cache:
            return self._cache[k]
        if k == 0:
            sel = Selection(0, None, torch.empty(0, dtype=torch.int64), -1, 0)
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
            sel = Selection(k, tau, ties, cut, split_kept)
        self._cache[k] = sel
        return sel

    def mask_into(self, sel: Selection, out: torch.Tensor, start: int = 0, stop: int | None = None) -> None:
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


def next_prime(n: int) -> int:
    """Smallest prime >= n: a sampling stride that cannot line up with power-of-two or 3x3 weight layouts."""
    n = max(2, n)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


Layout = Sequence[tuple[str, torch.Size]]


def layout_views(buffer: torch.Tensor, layout: Layout, offset: int = 0) -> dict[str, torch.Tensor]:
    """{name: view of `buffer`} for consecutive tensors of the given shapes, starting at `offset`."""
    out = {}
    for name, shape in layout:
        numel = int(np.prod(shape)) if len(shape) else 1
        out[name] = buffer[offset:offset + numel].view(shape)
        offset += numel
    return out


def layout_numel(layout: Layout) -> int:
    return sum(int(np.prod(shape)) if len(shape) else 1 for _, shape in layout)


def topk_masks(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Exactly the k largest scores over all given layers (ties: earlier in dict order, then row-major)."""
    layout = [(n, s.shape) for n, s in scores.items()]
    flat = flat_float32(list(scores.values()))
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    ranked = RankedPool(flat)
    buffer = torch.empty(n, dtype=torch.bool)
    ranked.mask_into(ranked.select(k), buffer)
    return layout_views(buffer, layout)


@dataclass
class Solution:
    """What `solve_keep_ratio` found: the keep ratio, its exact count, and how it got there."""

    keep_ratio: float
    count: int
    within: bool
    evaluations: int


def solve_keep_ratio(count: Callable[[float], int], target: float, window: float, upper_count: float,
                     key: Callable[[float], Hashable] | None = None,
                     estimate: Callable[[float], float] | None = None, start: float = 0.5,
                     max_evaluations: int = 60) -> Solution:
    """The keep ratio ρ in (0, 1] whose exact `count(ρ)` is closest to `target` (within `window` if possible).

    `count` must be non-decreasing in ρ. `key(ρ)` identifies ratios that give the same count (e.g. the
    per-task k), so each is evaluated once; `estimate(ρ)` is a cheap monotone approximation of `count`
    (then the search starts where the estimate meets the target, else at `start`); `upper_count` is
    (an upper bound of) the count at ρ = 1, the bracket's upper end. Stops at the first count within `window`, after
    `max_evaluations` distinct evaluations, or when no ratio changes the count any more; returns the best.
    """
    key = key or (lambda r: r)
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
        rho = start
    counts: dict[Hashable, int] = {}

    def exact(r: float) -> int:
        k = key(r)
        if k not in counts:
            counts[k] = count(r)
        return counts[k]

    low, high = (0.0, 0.0), (1.0, float(upper_count))   # (rho, count) at the bracket ends
    best: tuple[float, float, int] | None = None    # (|error|, rho, count)
    moved: list[str] = []
    for step in range(200):
        kept = exact(rho)
        error = abs(kept - target)
        if best is None or error < best[0]:
            best = (error, rho, kept)
        if error <= window or len(counts) >= max_evaluations:
            break
        if kept < target:
            low = (rho, kept)
            moved.append("lo")
        else:
            high = (rho, kept)
            moved.append("hi")
        mid = 0.5 * (low[0] + high[0])
        if not low[0] < mid < high[0]:
            break                                   # the bracket cannot shrink any more
        candidate = mid
        if step == 0 and estimate is not None:
            # the estimate's local slope: right away when the estimate is only off by a shift
            below, above = max(rho - 1e-4, 0.0), min(rho + 1e-4, 1.0)
            slope = (estimate(above) - estimate(below)) / (above - below)
            if slope > 0:
                candidate = rho + (target - kept) / slope
        elif moved[-2:] not in (["lo", "lo"], ["hi", "hi"]) and high[1] > low[1]:
            # secant on the bracket (the count is piecewise linear in rho, even inside a big tie);
            # when one end stalls twice in a row, bisect instead
            candidate = low[0] + (target - low[1]) * (high[0] - low[0]) / (high[1] - low[1])
        if not low[0] < candidate < high[0]:
            candidate = mid
        rho = candidate
    assert best is not None                         # the loop evaluates at least once
    error, rho, kept = best
    return Solution(float(rho), int(kept), error <= window, len(counts))
