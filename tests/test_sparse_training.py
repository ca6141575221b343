"""Static masked training (StaticSparsity), ERK densities (docs/ORIGINAL.md §6.1) and growth selection."""
from __future__ import annotations

import io
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

from engine.losses import MultiTaskLoss
from models import MultiTaskNet
from prune_utils.arbiters import arbiter_quorum, select_growth
from prune_utils.erk import (erk_densities, erk_epsilon, random_masks, shapes_of,
                             target_counts)
from prune_utils.masks import prunable_parameters, sparsity
from prune_utils.sparse_training import StaticSparsity, split_batch
from prune_utils.structure import TaskStructure
from prune_utils.topk import keep_count_round

from tests.helpers import make_batch, tiny_net


LOSS = MultiTaskLoss(["seg", "sn"], [1.0, 20.0])


def half_masks(model: nn.Module, seed: int = 1) -> dict:
    shapes = shapes_of(model)
    return random_masks(shapes, {n: 0.5 for n in shapes}, torch.Generator().manual_seed(seed))


def train_steps(model, optimizer, ctl, steps: int, call_after_step: bool = True, start: int = 0) -> None:
    model.train()
    for i in range(start, start + steps):
        batch = make_batch(i)
        ctl.before_step(i, model, optimizer, batch, "cpu")
        loss, _ = LOSS(model(batch["img"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if call_after_step:
            ctl.after_step(model, optimizer)


def assert_pruned_exactly_zero(model, optimizer, masks) -> None:
    for name, w in prunable_parameters(model).items():
        pruned = ~masks[name].to(w.device)
        assert torch.count_nonzero(w.detach()[pruned]) == 0, name
        if w.grad is not None:
            assert torch.count_nonzero(w.grad[pruned]) == 0, name
        for key, value in optimizer.state.get(w, {}).items():
            if torch.is_tensor(value) and value.shape == w.shape:
                assert torch.count_nonzero(value[pruned]) == 0, (name, key)


# ---------------------------------------------------------------------------------------- static
@pytest.mark.parametrize("call_after_step", [True, False])
def test_static_adam_coupled_weight_decay_keeps_pruned_weights_and_moments_zero(call_after_step):
    model = tiny_net()
    masks = half_masks(model)
    before = {n: w.detach().clone() for n, w in prunable_parameters(model).items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    ctl = StaticSparsity(masks)
    ctl.attach(model, optimizer)
    # without after_step the grad hooks alone must suffice for Adam + coupled L2 (grad 0, weight 0)
    train_steps(model, optimizer, ctl, 4, call_after_step=call_after_step)
    assert_pruned_exactly_zero(model, optimizer, masks)
    for name, w in prunable_parameters(model).items():
        assert optimizer.state[w]["exp_avg"].abs().sum() > 0
        kept = masks[name]
        assert not torch.equal(w.detach()[kept], before[name][kept]), f"{name} did not train"
    assert ctl.sparsity() == pytest.approx(sparsity(masks))
    assert 0.49 < ctl.sparsity() < 0.51


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_static_other_optimizers(opt):
    model = tiny_net()
    masks = half_masks(model)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1) if opt == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4))
    ctl = StaticSparsity(masks)
    ctl.attach(model, optimizer)
    train_steps(model, optimizer, ctl, 3)
    assert_pruned_exactly_zero(model, optimizer, masks)


def test_attach_clears_existing_optimizer_state_and_weights():
    model = tiny_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    batch = make_batch(0)
    LOSS(model(batch["img"]), batch)[0].backward()
    optimizer.step()  # dense state everywhere
    masks = half_masks(model)
    ctl = StaticSparsity(masks)
    ctl.attach(model, optimizer)
    assert_pruned_exactly_zero(model, optimizer, masks)
    train_steps(model, optimizer, ctl, 2)
    assert_pruned_exactly_zero(model, optimizer, masks)


def test_static_channels_last():
    model = tiny_net().to(memory_format=torch.channels_last)
    masks = half_masks(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    ctl = StaticSparsity(masks)
    ctl.attach(model, optimizer)
    train_steps(model, optimizer, ctl, 3)
    assert_pruned_exactly_zero(model, optimizer, masks)
    w = model.backbone.blocks[0][0].conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_static_state_dict_is_weights_only_loadable_and_round_trips():
    model = tiny_net()
    masks = half_masks(model)
    ctl = StaticSparsity(masks)
    ctl.attach(model, torch.optim.Adam(model.parameters()))
    buf = io.BytesIO()
    torch.save(ctl.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = StaticSparsity(half_masks(model, seed=7))
    other.load_state_dict(state)
    assert all(torch.equal(other.masks[n], masks[n]) for n in masks)
    with pytest.raises(ValueError):
        other.load_state_dict({**state, "kind": "dynamic"})


def test_static_rejects_masks_that_do_not_fit():
    model = tiny_net()
    masks = half_masks(model)
    masks.pop("backbone.conv1.weight")
    with pytest.raises(ValueError, match="missing"):
        StaticSparsity(masks).attach(model, None)


def test_static_under_ddp_single_process():
    model = tiny_net()
    masks = half_masks(model)
    fd, path = tempfile.mkstemp()
    os.close(fd)
    os.unlink(path)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-2, weight_decay=5e-4)
        ctl = StaticSparsity(masks)
        ctl.attach(ddp, optimizer)
        train_steps(ddp, optimizer, ctl, 2, call_after_step=False)
        assert_pruned_exactly_zero(model, optimizer, masks)
    finally:
        dist.destroy_process_group()
        if os.path.exists(path):
            os.unlink(path)


# ---------------------------------------------------------------------------------------- ERK
def nyu_shapes() -> dict:
    with torch.device("meta"):
        return shapes_of(MultiTaskNet({"seg": 40, "sn": 3}))


def test_erk_full_nyuv2_at_density_0_1_matches_reference():
    shapes = nyu_shapes()
    eps, dense = erk_epsilon(shapes, 0.1)
    assert eps == pytest.approx(72.83, abs=0.005)
    heads_conv3 = {f"heads.{t}.branches.{b}.conv3.weight" for t in ("seg", "sn") for b in range(4)}
    assert dense == {"backbone.conv1.weight", "backbone.ds.1.0.weight", "backbone.ds.2.0.weight"} | heads_conv3
    d = erk_densities(shapes, 0.1)
    expect = {"backbone.blocks.0.1.conv2.weight": 0.4643, "backbone.blocks.1.0.conv1.weight": 0.3535,
              "backbone.blocks.1.2.conv1.weight": 0.2438, "backbone.blocks.2.0.conv1.weight": 0.1869,
              "backbone.blocks.2.4.conv2.weight": 0.1293, "backbone.blocks.3.0.conv1.weight": 0.0994,
              "backbone.blocks.3.2.conv2.weight": 0.0689, "backbone.ds.3.0.weight": 0.7151,
              "heads.seg.branches.2.conv1.weight": 0.0531, "heads.sn.branches.0.conv2.weight": 0.2657}
    for name, value in expect.items():
        assert d[name] == pytest.approx(value, abs=5e-5), name
    for name in shapes:
        if name.startswith("backbone.blocks.0."):
            assert d[name] == pytest.approx(0.4643, abs=5e-5)
        if name in dense:
            assert d[name] == 1.0
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(d[n] * math.prod(s) for n, s in shapes.items()) / total == pytest.approx(0.1, abs=1e-12)


@pytest.mark.parametrize("density,sparse_layers", [
    (0.3, lambda n: not (n.startswith(("backbone.conv1", "backbone.ds.", "backbone.blocks.0.",
                                       "backbone.blocks.1.0.conv1")) or n.endswith("conv3.weight"))),
    (0.7, lambda n: n in {f"backbone.blocks.3.{b}.conv{c}.weight" for b, c in ((0, 2), (1, 1), (1, 2), (2, 1), (2, 2))}
     or n.endswith("conv1.weight") and n.startswith("heads.")),
])
def test_erk_dense_sets_at_other_densities(density, sparse_layers):
    shapes = nyu_shapes()
    d = erk_densities(shapes, density)
    assert {n for n in shapes if d[n] < 1.0} == {n for n in shapes if sparse_layers(n)}
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(d[n] * math.prod(s) for n, s in shapes.items()) / total == pytest.approx(density, abs=1e-12)


def test_erk_rejects_bad_density():
    with pytest.raises(ValueError):
        erk_densities({"a": (4, 4)}, 0.0)
    assert erk_densities({"a": (4, 4), "b": (8, 8)}, 1.0) == {"a": 1.0, "b": 1.0}


def test_random_masks_hit_counts_exactly_and_are_seeded():
    model = tiny_net()
    shapes = shapes_of(model)
    dens = erk_densities(shapes, 0.2)
    masks = random_masks(shapes, dens, torch.Generator().manual_seed(3))
    counts = target_counts(shapes, dens)
    for name, shape in shapes.items():
        assert masks[name].dtype == torch.bool and tuple(masks[name].shape) == shape
        assert int(masks[name].sum()) == counts[name] == keep_count_round(dens[name], math.prod(shape))
    again = random_masks(shapes, dens, torch.Generator().manual_seed(3))
    assert all(torch.equal(masks[n], again[n]) for n in shapes)
    assert sparsity(masks) == pytest.approx(0.8, abs=len(shapes) / sum(m.numel() for m in masks.values()))


# ---------------------------------------------------------------------------------------- growth choice
def test_select_growth_union_and_intersection_by_hand():
    # 8 positions, 0 and 1 active; candidates 2..7
    candidates = torch.tensor([False, False, True, True, True, True, True, True])
    a = torch.tensor([9.0, 9.0, 0.9, 0.1, 0.8, 0.0, 0.3, 0.2])
    b = torch.tensor([9.0, 9.0, 0.1, 0.95, 0.7, 0.6, 0.0, 0.05])
    # ranks over candidates (0 = best):  pos:  2  3  4  5  6  7
    #   task a: 2 > 4 > 6 > 7 > 3 > 5      ra:  0  4  1  5  2  3
    #   task b: 3 > 4 > 5 > 2 > 7 > 6      rb:  3  0  1  2  5  4
    # union (quorum 1) key = min rank:          0  0  1  2  2  3 ; sums 3 4 2 7 7 7
    union = select_growth(candidates, [a, b], 3, quorum=1)
    assert union.tolist() == [2, 3, 4]           # = top-2(a) | top-2(b) = {2, 4} | {3, 4}
    assert select_growth(candidates, [a, b], 5, quorum=1).tolist() == [2, 3, 4, 5, 6]  # 5 vs 6: tie -> index
    # intersection (quorum 2) key = max rank:   3  4  1  5  5  4
    assert select_growth(candidates, [a, b], 2, quorum=2).tolist() == [4, 2]
    # one task: plain top-n over candidates, never an active position
    assert select_growth(candidates, [a], 2).tolist() == [2, 4]
    assert select_growth(candidates, [a, b], 0).numel() == 0
    with pytest.raises(ValueError):
        select_growth(candidates, [a, b], 7)


def test_select_growth_ties_break_by_index():
    candidates = torch.ones(6, dtype=torch.bool)
    zeros = torch.zeros(6)
    assert select_growth(candidates, [zeros], 3).tolist() == [0, 1, 2]
    assert select_growth(candidates, [zeros, zeros], 3, quorum=1).tolist() == [0, 1, 2]


def test_arbiter_quorum():
    assert arbiter_quorum("unanimous", 5) == 1
    assert arbiter_quorum("majority", 5) == 3
    assert arbiter_quorum("majority", 2) == 1   # ceil(T/2): a tie keeps, as the static arbiter
    assert arbiter_quorum("intersection", 5) == 5
    assert arbiter_quorum(2, 3) == 2
    with pytest.raises(ValueError):
        arbiter_quorum("vote", 2)
    with pytest.raises(ValueError):
        arbiter_quorum(4, 3)


@pytest.mark.parametrize("name", ["unanimous", "majority", "intersection"])
def test_growth_order_matches_the_static_arbiter_on_top_k_sets(name):
    """The first |A(top-k)| grown positions are exactly the static arbiter A applied to per-task top-k."""
    arbiters = pytest.importorskip("prune_utils.arbiters")
    g = torch.Generator().manual_seed(0)
    num_tasks, size = 3, 60
    candidates = torch.rand(size, generator=g) > 0.3
    scores = [torch.rand(size, generator=g) for _ in range(num_tasks)]
    quorum = arbiter_quorum(name, num_tasks)
    cand_idx = torch.nonzero(candidates).squeeze(1)
    for k in (1, 3, 7, 12, 20):
        top_k = {}
        for t, s in enumerate(scores):
            mask = torch.zeros(size, dtype=torch.bool)
            mask[cand_idx[torch.sort(s[cand_idx], descending=True, stable=True).indices[:k]]] = True
            top_k[f"t{t}"] = {"layer": mask}
        expected = arbiters.ARBITERS[name](top_k)["layer"]
        n = int(expected.sum())
        chosen = select_growth(candidates, scores, n, quorum)
        got = torch.zeros(size, dtype=torch.bool)
        got[chosen] = True
        assert torch.equal(got, expected), k


def test_score_arbiter_refused_for_growth():
    pytest.importorskip("prune_utils.arbiters")
    with pytest.raises(ValueError, match="vote"):
        arbiter_quorum("mean_score", 2)


def test_split_batch():
    batch = make_batch(0, b=5)
    parts = split_batch(batch, 2)
    assert [p["img"].shape[0] for p in parts] == [2, 3] or [p["img"].shape[0] for p in parts] == [3, 2]
    assert sum(len(p["name"]) for p in parts) == 5
    assert torch.equal(torch.cat([p["seg"] for p in parts]), batch["seg"])
    assert len(split_batch(batch, 9)) == 5


def test_owner_partition_of_tiny_net_is_structural():
    names = list(prunable_parameters(tiny_net()))
    structure = TaskStructure.from_model(tiny_net())
    assert {structure.part(n) for n in names} == {"backbone", "seg", "sn"}


def test_after_step_reapplies_masks_only_every_reapply_every_steps():
    model = tiny_net()
    masks = half_masks(model)
    ctl = StaticSparsity(masks, reapply_every=3)
    ctl.attach(model)
    name, weight = next(iter(prunable_parameters(model).items()))
    pruned = ~masks[name]
    with torch.no_grad():
        weight[pruned] = 7.0          # something outside the optimizer writes into pruned positions
    before = weight.detach().clone()
    ctl.after_step(model)
    ctl.after_step(model)
    assert torch.equal(weight, before)               # steps 1, 2: weights untouched (no per-step cost)
    ctl.after_step(model)
    assert (weight[pruned] == 0).all()                # step 3: the safety net zeroes them
    assert torch.equal(weight[~pruned], before[~pruned])
    with pytest.raises(ValueError, match="reapply_every must be a positive"):
        StaticSparsity(masks, reapply_every=0)
