"""Partial sharing: a weight used by some tasks but not all is arbitrated among the tasks that use it
(prune_utils.mask_builder, arbiters, sparse_training). Masks worked out by hand on tiny tensors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_utils import TaskSpec, TaskStructure, build_masks, dynamic_sparsity, mask_sparsity, task_scores
from prune_utils import mask_builder as mb

T, M, HA, HB, HC = "trunk", "mid", "head_a", "head_b", "head_c"
# trunk: tasks a, b, c; mid: tasks a and b only; one head each
STRUCTURE = TaskStructure({T: {"a", "b", "c"}, M: {"a", "b"}, HA: {"a"}, HB: {"b"}, HC: {"c"}}, ["a", "b", "c"])


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def b(*flags):
    return torch.tensor([bool(f) for f in flags])


# Pools: a = trunk + mid + head_a (10 weights), b = trunk + mid + head_b (10), c = trunk + head_c (6).
# Keep ratio 0.5: k_a = 5, k_b = 5, k_c = 3.
SCORES = {
    # a keeps 9 (T0), 8 (T2), 7 (M0), 6 (M2), 5 (HA0)            pool total 41.6
    "a": {T: t(9, 1, 8, 2), M: t(7, 3, 6, 0.5), HA: t(5, 0.1)},
    # b keeps 9 (T1), 8 (M0), 7 (M1), 6 (HB0), 5 (HB1)            pool total 38.9
    "b": {T: t(1, 9, 2, 0.2), M: t(8, 7, 0.3, 0.4), HB: t(6, 5)},
    # c keeps 9 (T2), 8 (T3), 7 (HC0)                             pool total 25.9
    "c": {T: t(0.5, 0.4, 9, 8), HC: t(7, 1)},
}


def test_groups_and_pools():
    assert STRUCTURE.groups() == [(("a", "b", "c"), (T,)), (("a", "b"), (M,))]
    assert STRUCTURE.pool("a") == (T, M, HA) and STRUCTURE.pool("c") == (T, HC)


def test_task_masks_cover_each_task_pool():
    masks = mb.task_masks(SCORES, 0.5, STRUCTURE)
    assert list(masks["a"]) == [T, M, HA] and list(masks["c"]) == [T, HC]
    assert torch.equal(masks["a"][T], b(1, 0, 1, 0)) and torch.equal(masks["a"][M], b(1, 0, 1, 0))
    assert torch.equal(masks["b"][T], b(0, 1, 0, 0)) and torch.equal(masks["b"][M], b(1, 1, 0, 0))
    assert torch.equal(masks["c"][T], b(0, 0, 1, 1)) and torch.equal(masks["c"][HC], b(1, 0))


@pytest.mark.parametrize("arbiter,trunk,mid", [
    # trunk by a, b, c; mid by a and b only (c has no say on mid)
    ("unanimous", b(1, 1, 1, 1), b(1, 1, 1, 0)),          # any owner keeps it
    ("intersection", b(0, 0, 0, 0), b(1, 0, 0, 0)),       # every owner keeps it
    ("majority", b(0, 0, 1, 0), b(1, 1, 1, 0)),           # trunk: 2 of 3 votes (only T2); mid: 1 of 2
    # mean_score, trunk among a, b, c: k = round-half-up(mean(2, 1, 2)) = 2; normalised means
    #   T0 (9/41.6 + 1/38.9 + 0.5/25.9)/3 = .0871, T1 .0903, T2 .1971, T3 .1207 -> T2, T3
    # mid among a, b: k = round-half-up(mean(2, 2)) = 2; M0 (7/41.6 + 8/38.9)/2 = .1870, M1 .1260, M2 .0760,
    #   M3 .0112 -> M0, M1
    ("mean_score", b(0, 0, 1, 1), b(1, 1, 0, 0)),
])
def test_hand_worked_partial_sharing(arbiter, trunk, mid):
    combined = mb.combine(mb.task_masks(SCORES, 0.5, STRUCTURE), arbiter, scores=SCORES, structure=STRUCTURE)
    assert torch.equal(combined[T], trunk) and torch.equal(combined[M], mid)
    assert torch.equal(combined[HA], b(1, 0)) and torch.equal(combined[HB], b(1, 1))
    assert torch.equal(combined[HC], b(1, 0))
    fast = mb.masks_for_keep_ratio(SCORES, 0.5, arbiter, structure=STRUCTURE)   # the search's own path
    assert list(fast) == [T, M, HA, HB, HC]
    assert all(torch.equal(fast[n], combined[n]) for n in fast)


def test_scores_of_a_weight_a_task_does_not_use_are_refused():
    bad = {"a": SCORES["a"], "b": SCORES["b"], "c": {**SCORES["c"], M: t(1, 2, 3, 4)}}
    with pytest.raises(ValueError, match="task 'c' does not use \\(shared by a, b\\)"):
        mb.task_masks(bad, 0.5, STRUCTURE)
    missing = {"a": SCORES["a"], "b": {T: SCORES["b"][T], HB: SCORES["b"][HB]}, "c": SCORES["c"]}
    with pytest.raises(ValueError, match="scores of task 'b' miss backbone"):
        mb.task_masks(missing, 0.5, STRUCTURE)


@pytest.mark.parametrize("arbiter", ["unanimous", "majority", "intersection", "mean_score", 2])
def test_exact_sparsity_with_partial_sharing(arbiter):
    g = torch.Generator().manual_seed(1)
    shapes = {T: (64, 32), M: (48, 64), HA: (8, 48), HB: (8, 48), HC: (8, 32)}
    scores = {task: {n: torch.rand(shapes[n], generator=g) for n in STRUCTURE.pool(task)} for task in STRUCTURE.tasks}
    for target in (0.5, 0.9):
        masks, rho, info = mb.masks_for_sparsity(scores, target, arbiter, structure=STRUCTURE, return_info=True)
        assert info["within_tol"] and abs(mask_sparsity(masks) - target) <= 5e-4
        again = mb.masks_for_keep_ratio(scores, rho, arbiter, structure=STRUCTURE)
        assert all(torch.equal(masks[n], again[n]) for n in masks)


class Partial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 32)
        self.mid = nn.Linear(32, 32)
        self.heads = nn.ModuleList(nn.Linear(32, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = torch.relu(self.trunk(x))
        m = torch.relu(self.mid(h))
        return self.heads[0](m).squeeze(1), self.heads[1](m).squeeze(1), self.heads[2](h).squeeze(1)


def test_api_prunes_and_grows_a_partially_shared_model():
    torch.manual_seed(0)
    model = Partial()
    data = [(torch.randn(16, 6), (torch.randn(16), torch.randn(16), torch.randn(16))) for _ in range(4)]
    spec = TaskSpec(["a", "b", "c"], {t: nn.MSELoss() for t in "abc"})
    structure = TaskStructure.from_gradient_flow(model, spec, data[0])
    assert structure.owners["mid.weight"] == {"a", "b"}
    scores = task_scores(model, spec, data, "snip", structure=structure, generator=0)
    assert "mid.weight" not in scores["c"] and "mid.weight" in scores["a"]
    masks = build_masks(model, scores, 0.7, arbiter="intersection", structure=structure)
    assert abs(mask_sparsity(masks) - 0.7) <= 5e-4
    # dynamic growth on `mid` is arbitrated by a and b (task c has no gradient there)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sparse = dynamic_sparsity(model, optimizer, spec, masks=masks, structure=structure, arbiter="intersection",
                              interval=1, end=3, drop_fraction=0.5)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    for step in range(4):
        record = sparse.before_step(step, data[step])
        assert record is not None and (step < 3 or record["final"])
        assert step == 3 or record["grown"]["backbone"] > 0          # shared layers (trunk, mid) do move
        loss = spec.total_loss(spec.predict(model, data[step]), data[step])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparse.after_step()
        assert {n: int(m.sum()) for n, m in sparse.masks.items()} == counts
    assert sparse.controller.num_updates == 4
