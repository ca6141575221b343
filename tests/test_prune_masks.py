"""Per-task masks, arbiters and the exact-sparsity search (prune_utils.mask_builder / arbiters)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from models import MultiTaskNet
from prune_utils import mask_builder as mb
from prune_utils.arbiters import ARBITERS, VoteArbiter, register_arbiter
from prune_utils import topk
from prune_utils.masks import check_masks, prunable_parameters, sparsity
from prune_utils.structure import TaskStructure

BB, HA, HB, HC = "backbone.l.weight", "heads.a.l.weight", "heads.b.l.weight", "heads.c.l.weight"


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def b(*flags):
    return torch.tensor([bool(f) for f in flags])


# Hand-set scores: a backbone layer of 6 weights, heads of 2 weights. Keep ratio 0.5 -> k = 4 of 8 per task.
HAND = {
    # task a keeps its 4 largest: 9 (bb0), 8 (bb2), 7 (bb4), 6 (head a 0)
    "a": {BB: t(9, 1, 8, 2, 7, 3), HA: t(6, 0.5)},
    # task b keeps 9 (bb1), 8 (bb3), 7 (head b 0), 6 (head b 1)
    "b": {BB: t(1, 9, 2, 8, 3, 0), HB: t(7, 6)},
}


def test_hand_set_task_masks():
    masks = mb.task_masks(HAND, 0.5)
    assert torch.equal(masks["a"][BB], b(1, 0, 1, 0, 1, 0)) and torch.equal(masks["a"][HA], b(1, 0))
    assert torch.equal(masks["b"][BB], b(0, 1, 0, 1, 0, 0)) and torch.equal(masks["b"][HB], b(1, 1))
    assert list(masks["a"]) == [BB, HA]


@pytest.mark.parametrize("arbiter,backbone", [
    ("unanimous", b(1, 1, 1, 1, 1, 0)),        # kept if any task keeps it
    ("intersection", b(0, 0, 0, 0, 0, 0)),     # no backbone weight is kept by both tasks
    ("majority", b(1, 1, 1, 1, 1, 0)),         # 2 tasks: ceil(2/2) = 1 vote suffices (ties keep)
    # mean_score: pool sums a = 36.5, b = 36; mean of normalised scores per position:
    # bb0 (9/36.5 + 1/36)/2 = .13718, bb1 .13870, bb2 .13737, bb3 .13850, bb4 .13756, bb5 .04110;
    # k = round-half-up(mean(3, 2)) = 3 -> bb1, bb3, bb4
    ("mean_score", b(0, 1, 0, 1, 1, 0)),
])
def test_hand_set_arbiters(arbiter, backbone):
    per_task = mb.task_masks(HAND, 0.5)
    combined = mb.combine(per_task, arbiter, scores=HAND)
    assert torch.equal(combined[BB], backbone)
    assert torch.equal(combined[HA], b(1, 0)) and torch.equal(combined[HB], b(1, 1))   # heads: own task's mask
    fast = mb.masks_for_keep_ratio(HAND, 0.5, arbiter)
    assert set(fast) == {BB, HA, HB}
    for name in fast:
        assert torch.equal(fast[name], combined[name]), name


def test_majority_needs_two_of_three_votes():
    scores = {
        "a": {BB: t(6, 5, 4, 1, 1, 1), HA: t(0, 0)},   # keeps bb0 bb1 bb2 (k = 3 of 8 at 0.375)
        "b": {BB: t(6, 1, 5, 4, 1, 1), HB: t(0, 0)},   # keeps bb0 bb2 bb3
        "c": {BB: t(1, 6, 1, 5, 4, 1), HC: t(0, 0)},   # keeps bb1 bb3 bb4
    }
    per_task = mb.task_masks(scores, 0.375)
    assert torch.equal(mb.combine(per_task, "majority")[BB], b(1, 1, 1, 1, 0, 0))
    assert torch.equal(mb.combine(per_task, "unanimous")[BB], b(1, 1, 1, 1, 1, 0))
    assert torch.equal(mb.combine(per_task, "intersection")[BB], b(0, 0, 0, 0, 0, 0))
    assert torch.equal(mb.masks_for_keep_ratio(scores, 0.375, "majority")[BB], b(1, 1, 1, 1, 0, 0))


def test_ties_keep_exactly_k_earliest_positions():
    scores = {"a": {BB: torch.ones(6), HA: torch.ones(2)}}
    mask = mb.task_masks(scores, 0.5)["a"]
    # the original's `score >= threshold` would keep all 8; here exactly 4, the earliest (backbone first)
    assert torch.equal(mask[BB], b(1, 1, 1, 1, 0, 0)) and torch.equal(mask[HA], b(0, 0))
    scores = {"a": {BB: t(3, 2, 2, 2, 2, 1), HA: t(2, 5)}}
    mask = mb.task_masks(scores, 0.5)["a"]          # 5, 3, then the first two of the 2s
    assert torch.equal(mask[BB], b(1, 1, 1, 0, 0, 0)) and torch.equal(mask[HA], b(0, 1))


def test_keep_count_rules():
    assert topk.keep_count_floor(0.29, 100) == 29            # read as a decimal, not 0.29 * 100 = 28.999...
    assert topk.keep_count_floor(1e-9, 1000) == 1            # at least one weight
    assert topk.keep_count_floor(1.0, 7) == 7
    assert topk.keep_count_floor(0.5, 7) == 3
    with pytest.raises(ValueError):
        topk.keep_count_floor(0.0, 10)
    with pytest.raises(ValueError):
        topk.keep_count_floor(1.5, 10)
    mask = mb.task_masks({"a": {BB: torch.rand(6), HA: torch.rand(2)}}, 0.01)["a"]
    assert int(mask[BB].sum() + mask[HA].sum()) == 1


# --------------------------------------------------------------------------------------------------------------
# against a plain reference (full stable sort) on a small net, ties included


def _tiny_scores(tasks=("a", "b", "c"), seed=0, integer=False, kind=None):
    """Random scores on a small net. kind: uniform, integer (many ties), zeros (half exact zeros: one
    heavy single-valued bin), narrow (1 + U(0, 1e-3): every score in one heavy bin of many values)."""
    kind = kind or ("integer" if integer else "uniform")
    net = MultiTaskNet({t: 2 for t in tasks}, width_mult=0.0625)
    params = prunable_parameters(net)
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for task in tasks:
        scores[task] = {}
        for n in TaskStructure.from_model(net).pool(task):
            shape = params[n].shape
            if kind == "integer":
                value = torch.randint(0, 50, shape, generator=g).float()
            elif kind == "narrow":
                value = 1 + 1e-3 * torch.rand(shape, generator=g)
            else:
                value = torch.rand(shape, generator=g)
                if kind == "zeros":
                    value[torch.rand(shape, generator=g) < 0.5] = 0.0
            scores[task][n] = value
    return net, scores


def _reference_task_masks(scores, keep_ratio):
    out = {}
    for task, per in scores.items():
        names = [n for n in per if n.startswith("backbone.")] + [n for n in per if not n.startswith("backbone.")]
        flat = torch.cat([per[n].reshape(-1) for n in names])
        k = topk.keep_count_floor(keep_ratio, flat.numel())
        order = torch.sort(flat, descending=True, stable=True).indices
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[order[:k]] = True
        masks, offset = {}, 0
        for n in names:
            masks[n] = keep[offset:offset + per[n].numel()].view(per[n].shape)
            offset += per[n].numel()
        out[task] = masks
    return out


@pytest.mark.parametrize("kind", ["uniform", "integer", "zeros", "narrow"])
def test_task_masks_match_full_sort_reference(kind, monkeypatch):
    monkeypatch.setattr(topk, "_CHUNK", 4096)          # several chunks when locating ties in a heavy bin
    _, scores = _tiny_scores(kind=kind)
    for keep in (0.013, 0.1, 0.37, 0.5, 0.6, 0.9):
        ours = mb.task_masks(scores, keep)
        ref = _reference_task_masks(scores, keep)
        for task in scores:
            assert list(ours[task]) == list(ref[task])
            for n in ref[task]:
                assert torch.equal(ours[task][n], ref[task][n]), (keep, task, n)


@pytest.mark.parametrize("kind", ["integer", "zeros"])
@pytest.mark.parametrize("arbiter", ["unanimous", "intersection", "majority", "mean_score"])
def test_fast_path_equals_combine_of_task_masks(arbiter, kind):
    net, scores = _tiny_scores(kind=kind)
    for keep in (0.05, 0.3, 0.8):
        fast = mb.masks_for_keep_ratio(scores, keep, arbiter)
        slow = mb.combine(mb.task_masks(scores, keep), arbiter, scores=scores)
        check_masks(net, fast)
        assert list(fast) == list(prunable_parameters(net))
        for n in slow:
            assert torch.equal(fast[n], slow[n]), (keep, n)


def test_vote_arbiters_match_elementwise_reference():
    _, scores = _tiny_scores()
    per = _reference_task_masks(scores, 0.2)
    combined = {a: mb.masks_for_keep_ratio(scores, 0.2, a) for a in ("unanimous", "majority", "intersection")}
    for n in per["a"]:
        if not n.startswith("backbone."):
            continue
        votes = sum(per[t][n].int() for t in scores)
        assert torch.equal(combined["unanimous"][n], votes >= 1)
        assert torch.equal(combined["majority"][n], votes >= 2)
        assert torch.equal(combined["intersection"][n], votes >= 3)


def test_arbiter_nesting_and_monotonicity():
    _, scores = _tiny_scores()
    previous = None
    for keep in (0.05, 0.1, 0.2, 0.4, 0.7):
        u = mb.masks_for_keep_ratio(scores, keep, "unanimous")
        m = mb.masks_for_keep_ratio(scores, keep, "majority")
        i = mb.masks_for_keep_ratio(scores, keep, "intersection")
        for n in u:
            assert bool((i[n] <= m[n]).all() and (m[n] <= u[n]).all()), n    # unanimous ⊇ majority ⊇ intersection
        if previous is not None:
            for arbiter, masks in (("unanimous", u), ("majority", m), ("intersection", i)):
                for n in masks:
                    assert bool((previous[arbiter][n] <= masks[n]).all()), (arbiter, n)   # nested in keep ratio
        previous = {"unanimous": u, "majority": m, "intersection": i}


# --------------------------------------------------------------------------------------------------------------
# exact sparsity


@pytest.mark.parametrize("arbiter", ["unanimous", "intersection", "majority", "mean_score"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
def test_exact_sparsity_per_arbiter(arbiter, target):
    net, scores = _tiny_scores(tasks=("a", "b"), seed=1)
    masks, keep, info = mb.masks_for_sparsity(scores, target, arbiter, return_info=True)
    check_masks(net, masks)
    assert abs(sparsity(masks) - target) <= 5e-4
    assert info["within_tol"] and info["sparsity"] == pytest.approx(sparsity(masks))
    again = mb.masks_for_keep_ratio(scores, keep, arbiter)               # the keep ratio reproduces the masks
    assert all(torch.equal(again[n], masks[n]) for n in masks)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
def test_exact_sparsity_three_tasks_and_global_topk(target):
    net, scores = _tiny_scores()
    for arbiter in ("unanimous", "majority", "intersection"):
        masks, _ = mb.masks_for_sparsity(scores, target, arbiter)
        assert abs(sparsity(masks) - target) <= 5e-4, arbiter
    agnostic = {n: torch.rand(w.shape) for n, w in prunable_parameters(net).items()}
    masks = mb.global_topk({mb.ALL: agnostic}, target)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - round(target * total)   # exact
    check_masks(net, masks)


def test_exact_sparsity_with_heavy_ties_uses_exact_corrections():
    """Half the scores are exactly 0: the cut falls inside a huge tie that the estimate cannot see."""
    net, scores = _tiny_scores(tasks=("a", "b"), seed=2)
    g = torch.Generator().manual_seed(3)
    for per in scores.values():
        for n, s in per.items():
            s[torch.rand(s.shape, generator=g) < 0.5] = 0.0
    for arbiter in ("unanimous", "intersection", "mean_score"):
        for target in (0.2, 0.35, 0.9):
            masks, keep = mb.masks_for_sparsity(scores, target, arbiter)
            assert abs(sparsity(masks) - target) <= 5e-4, (arbiter, target)


def test_unreachable_target_warns_and_returns_closest():
    scores = {"a": {BB: t(1, 2, 3, 4, 5, 6), HA: t(7, 8)}, "b": {BB: t(6, 5, 4, 3, 2, 1), HB: t(1, 2)}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks, _, info = mb.masks_for_sparsity(scores, 0.37, "unanimous", return_info=True)
    assert not info["within_tol"] and any("outside" in str(w.message) for w in caught)
    assert abs(sparsity(masks) - 0.37) <= 0.1


def test_custom_arbiter_through_the_generic_search():
    def first_task_decides(backbone_masks, scores=None):
        first = next(iter(backbone_masks.values()))
        return {n: m.clone() for n, m in first.items()}

    register_arbiter("test_first_task", first_task_decides, overwrite=True)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_arbiter("test_first_task", first_task_decides)
        net, scores = _tiny_scores(tasks=("a", "b"))
        masks, keep = mb.masks_for_sparsity(scores, 0.6, "test_first_task")
        assert abs(sparsity(masks) - 0.6) <= 5e-4
        per = mb.task_masks(scores, keep)
        assert all(torch.equal(masks[n], per["a"][n]) for n in per["a"] if n.startswith("backbone."))
    finally:
        ARBITERS.pop("test_first_task", None)


def test_vote_arbiter_is_extensible():
    register_arbiter("test_two_votes", VoteArbiter("test_two_votes", lambda n: min(2, n)), overwrite=True)
    try:
        _, scores = _tiny_scores()
        assert all(torch.equal(x, y) for x, y in zip(mb.masks_for_keep_ratio(scores, 0.3, "test_two_votes").values(),
                                                      mb.masks_for_keep_ratio(scores, 0.3, "majority").values()))
    finally:
        ARBITERS.pop("test_two_votes", None)


def test_flat_views_are_used_without_copy():
    flat = torch.rand(10)
    views = [flat[:6].view(2, 3), flat[6:].view(4)]
    assert topk.flat_float32(views).data_ptr() == flat.data_ptr()
    copied = topk.flat_float32([torch.rand(2, 3), torch.rand(4)])
    assert copied.shape == (10,)


# --------------------------------------------------------------------------------------------------------------
# errors


def test_bad_inputs_are_one_line_value_errors():
    with pytest.raises(ValueError, match="non-negative"):
        mb.task_masks({"a": {BB: t(1, -2, 3, 4, 5, 6), HA: t(1, 1)}}, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        mb.task_masks({"a": {BB: t(1, math.nan, 3, 4, 5, 6), HA: t(1, 1)}}, 0.5)
    with pytest.raises(ValueError, match="belongs to head"):
        mb.task_masks({"a": {BB: torch.rand(6), HB: torch.rand(2)}}, 0.5)
    with pytest.raises(ValueError, match="global_topk"):
        mb.masks_for_sparsity({mb.ALL: {BB: torch.rand(6)}}, 0.5)
    with pytest.raises(ValueError, match="fraction"):
        mb.masks_for_sparsity(HAND, 90)
    with pytest.raises(ValueError, match="unknown arbiter"):
        mb.masks_for_keep_ratio(HAND, 0.5, "nope")
    with pytest.raises(ValueError, match="needs the per-task scores"):
        mb.combine(mb.task_masks(HAND, 0.5), "mean_score")
    with pytest.raises(ValueError, match="miss backbone"):
        mb.task_masks({"a": {BB: torch.rand(6), HA: torch.rand(2)}, "b": {HB: torch.rand(2)}}, 0.5)
