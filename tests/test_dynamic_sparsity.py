"""Dynamic sparse training (DynamicSparsity): schedule, exact-count invariants, growth, resume, DDP."""
from __future__ import annotations

import copy
import io
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from engine.losses import MultiTaskLoss, TaskLoss
from engine.runtime import rng_state, set_rng_state
from prune_utils.structure import TaskStructure
from prune_utils.erk import random_masks, shapes_of
from prune_utils.masks import prunable_parameters
from prune_utils.sparse_training import DynamicSparsity

from tests.helpers import make_batch, tiny_net
LOSS = MultiTaskLoss(["seg", "sn"], [1.0, 20.0])
TASK_LOSS = TaskLoss()


def controller(model, mode="disparse", density=0.3, seed=0, **kw) -> DynamicSparsity:
    kw.setdefault("interval", 2)
    kw.setdefault("end", 8)
    return DynamicSparsity(model=model, density=density, mode=mode, task_loss=TASK_LOSS, total_loss=LOSS,
                           generator=torch.Generator().manual_seed(seed), **kw)


def setup(seed=0, mode="disparse", channels_last=False, **kw):
    model = tiny_net(seed)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    ctl = controller(model, mode=mode, seed=seed, **kw)
    ctl.attach(model, optimizer)
    return model, optimizer, ctl


def step(model, optimizer, ctl, i, records=None):
    model.train()
    batch = make_batch(i)
    record = ctl.before_step(i, model, optimizer, batch, "cpu")
    if records is not None and record is not None:
        records.append(record)
    loss, _ = LOSS(model(batch["img"]), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    ctl.after_step(model, optimizer)
    return record


def moments_zero_at(optimizer, w, where) -> bool:
    state = optimizer.state.get(w, {})
    return all(torch.count_nonzero(state[k][where]) == 0 for k in ("exp_avg", "exp_avg_sq") if k in state)


# ---------------------------------------------------------------------------------------- schedule
def test_cosine_drop_fraction():
    ctl = controller(tiny_net(), interval=50, end=15000)
    assert ctl.drop_fraction_at(0) == 0.5
    assert ctl.drop_fraction_at(7500) == pytest.approx(0.25, abs=1e-15)
    assert ctl.drop_fraction_at(15000) == 0.0
    assert ctl.drop_fraction_at(20000) == 0.0
    assert ctl.drop_fraction_at(3750) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))


def test_update_iterations_final_update_and_freeze():
    model, optimizer, ctl = setup(interval=3, end=8)
    records = []
    for i in range(14):
        step(model, optimizer, ctl, i, records)
    assert [r["iteration"] for r in records] == [0, 3, 6, 8]
    assert [r["final"] for r in records] == [False, False, False, True]
    assert records[0]["drop_fraction"] == 0.5
    assert records[-1]["drop_fraction"] == 0.0
    assert records[-1]["dropped_total"] == records[-1]["grown_total"] == 0  # ERK counts were exact all along
    assert ctl.frozen and ctl.num_updates == 4 and ctl.last_update == 8
    frozen = {n: m.clone() for n, m in ctl.masks.items()}
    for i in range(14, 20):
        assert step(model, optimizer, ctl, i) is None
    assert all(torch.equal(frozen[n], ctl.masks[n]) for n in frozen)
    for name, w in prunable_parameters(model).items():
        assert int(ctl.masks[name].sum()) == ctl.target_counts[name]
        assert torch.count_nonzero(w.detach()[~ctl.masks[name]]) == 0


# ---------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("mode,channels_last,splits", [("disparse", False, 1), ("disparse", True, 2),
                                                       ("rigl", False, 1)])
def test_every_update_keeps_counts_and_zeroes_dropped_and_grown(mode, channels_last, splits):
    model, optimizer, ctl = setup(mode=mode, channels_last=channels_last, growth_splits=splits, interval=2, end=8)
    params = prunable_parameters(model)
    target_sparsity = ctl.sparsity()
    assert target_sparsity == pytest.approx(0.7, abs=1e-3)
    changed_any = False
    for i in range(9):
        old = {n: m.clone() for n, m in ctl.masks.items()}
        old_w = {n: w.detach().clone() for n, w in params.items()}
        alpha = ctl.drop_fraction_at(i)
        batch = make_batch(i)
        model.train()
        record = ctl.before_step(i, model, optimizer, batch, "cpu")
        if i % 2 == 0:
            assert record is not None
            expect = {p: 0 for p in ("backbone", "seg", "sn")}
            for name, mask in old.items():
                active = int(mask.sum())
                if 0 < active < mask.numel() and not record["final"]:
                    expect[TaskStructure.from_model(model).part(name)] += round(alpha * active)
            assert record["dropped"] == expect and record["grown"] == expect
            for name, w in params.items():
                new = ctl.masks[name]
                assert int(new.sum()) == int(old[name].sum()), name  # exact count per layer
                dropped, grown = old[name] & ~new, new & ~old[name]
                assert torch.count_nonzero(w.detach()[~new]) == 0  # dropped (and all inactive) exactly zero
                assert torch.count_nonzero(w.detach()[grown]) == 0  # regrown start at zero
                assert moments_zero_at(optimizer, w, grown | ~new)
                survived = old[name] & new
                kept_same = w.detach()[survived] == old_w[name][survived]
                # survivors keep their value unless dropped-and-regrown in this update (then zero)
                assert bool(((w.detach()[survived] == 0) | kept_same).all())
                changed_any |= bool(dropped.any())
                if channels_last and w.dim() == 4:
                    assert w.is_contiguous(memory_format=torch.channels_last)
            assert ctl.sparsity() == target_sparsity
        else:
            assert record is None
        loss, _ = LOSS(model(batch["img"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ctl.after_step(model, optimizer)
        for name, w in params.items():
            assert torch.count_nonzero(w.detach()[~ctl.masks[name]]) == 0
            assert moments_zero_at(optimizer, w, ~ctl.masks[name])
    assert changed_any
    # fully dense target layers are never touched
    dense = [n for n, c in ctl.target_counts.items() if c == ctl.masks[n].numel()]
    assert dense and all(bool(ctl.masks[n].all()) for n in dense)


def test_update_after_backward_does_not_revive_dropped_weights():
    """A trainer that calls before_step after backward: stale grads at dropped positions are cleared."""
    model, optimizer, ctl = setup(interval=1, end=5)
    for i in range(4):
        batch = make_batch(i)
        loss, _ = LOSS(model(batch["img"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctl.before_step(i, model, optimizer, batch, "cpu")
        optimizer.step()
        for name, w in prunable_parameters(model).items():
            assert torch.count_nonzero(w.detach()[~ctl.masks[name]]) == 0
            assert moments_zero_at(optimizer, w, ~ctl.masks[name])


def test_final_update_reaches_targets_from_other_counts():
    model = tiny_net()
    shapes = shapes_of(model)
    names = list(shapes)
    start = {n: (0.2 if k % 2 else 0.5) for k, n in enumerate(names)}
    masks = random_masks(shapes, start, torch.Generator().manual_seed(0))
    targets = {n: 0.3 for n in names}
    ctl = DynamicSparsity(masks, target_densities=targets, interval=2, end=4, task_loss=TASK_LOSS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    ctl.attach(model, optimizer)
    records = [r for i in range(6) if (r := step(model, optimizer, ctl, i)) is not None]
    for r in records[:-1]:  # regular updates keep the starting counts
        assert r["dropped"] == r["grown"]
    final = records[-1]
    assert final["final"] and final["dropped_total"] > 0 and final["grown_total"] > 0
    for name, w in prunable_parameters(model).items():
        assert int(ctl.masks[name].sum()) == round(0.3 * w.numel())
        assert torch.count_nonzero(w.detach()[~ctl.masks[name]]) == 0


# ---------------------------------------------------------------------------------------- growth
def test_growth_scores_are_dense_gradients_of_the_sparse_net():
    model, optimizer, ctl = setup(interval=1, end=100)
    model.eval()  # deterministic forward (no dropout, running BN stats) for the comparison
    batch = make_batch(5)
    names = list(ctl.masks)
    buffers = [b.clone() for b in model.buffers()]
    scores = ctl._growth_scores(model, batch, "cpu", names)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    reference = tiny_net(seed=3).eval()  # a fresh copy without the controller's hooks
    reference.load_state_dict(model.state_dict())
    ref_params = prunable_parameters(reference)
    preds = reference(batch["img"])
    for task in ("seg", "sn"):
        pool = [n for n in names if n in TaskStructure.from_model(model).pool(task)]
        assert set(scores[task]) == set(pool)
        grads = torch.autograd.grad(TASK_LOSS(task, preds[task], batch), [ref_params[n] for n in pool],
                                    retain_graph=True)
        for name, g in zip(pool, grads):
            torch.testing.assert_close(scores[task][name], g.abs().reshape(-1), rtol=1e-5, atol=1e-12)
    # inactive positions do get a gradient (the masking hooks were off)
    name = "backbone.blocks.1.1.conv1.weight"
    assert torch.count_nonzero(scores["seg"][name][~ctl.masks[name].reshape(-1)]) > 0
    # and the training gradient is still masked afterwards
    model.train()
    loss, _ = LOSS(model(batch["img"]), batch)
    loss.backward()
    w = prunable_parameters(model)[name]
    assert torch.count_nonzero(w.grad[~ctl.masks[name]]) == 0


def test_unanimous_growth_end_to_end_with_hand_set_scores(monkeypatch):
    """Backbone layer: union of the two tasks' wishes; head layer: its own task only."""
    model = tiny_net()
    shapes = shapes_of(model)
    layer, head = "backbone.conv1.weight", "heads.seg.branches.0.conv1.weight"
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
    for name in (layer, head):
        flat = torch.zeros(math.prod(shapes[name]), dtype=torch.bool)
        flat[:20] = True  # positions 0..19 active
        masks[name] = flat.view(shapes[name])
    ctl = DynamicSparsity(masks, interval=1, end=100, task_loss=TASK_LOSS, arbiter="unanimous")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctl.attach(model, optimizer)
    params = prunable_parameters(model)
    with torch.no_grad():
        for name in (layer, head):  # magnitudes 0.1, 0.2, ... -> the drop takes positions 0..9
            flat = torch.zeros(params[name].numel())
            flat[:20] = torch.arange(1, 21) * 0.1
            params[name].copy_(flat.view_as(params[name]))

    def fake_scores(net, batch, device, names):
        assert set(names) == {layer, head}  # dense layers are skipped
        out = {t: {n: torch.zeros(params[n].numel()) for n in names if n in TaskStructure.from_model(model).pool(t)}
               for t in ("seg", "sn")}
        out["seg"][layer][100:110] = torch.arange(10, 0, -1).float()   # seg wants 100 > 101 > ... > 109
        out["sn"][layer][200:210] = torch.arange(10, 0, -1).float()    # sn wants 200 > 201 > ... > 209
        out["sn"][layer][100] = 5.5                                    # ... and 100 after 204
        out["seg"][head][300:310] = torch.arange(10, 0, -1).float()
        return out

    monkeypatch.setattr(ctl, "_growth_scores", fake_scores)
    record = ctl.before_step(0, model, optimizer, make_batch(0), "cpu")  # alpha = 0.5: 10 of 20 per layer
    assert record["dropped"] == {"backbone": 10, "seg": 10, "sn": 0}
    assert record["grown"] == {"backbone": 10, "seg": 10, "sn": 0}
    # union of seg's top-5 {100..104} and sn's top-5 {200..204}: exactly 10 positions
    expected = set(range(10, 20)) | set(range(100, 105)) | set(range(200, 205))
    assert set(torch.nonzero(ctl.masks[layer].reshape(-1)).squeeze(1).tolist()) == expected
    assert set(torch.nonzero(ctl.masks[head].reshape(-1)).squeeze(1).tolist()) == set(range(10, 20)) | set(range(300, 310))
    for name in (layer, head):
        flat = params[name].detach().reshape(-1)
        assert torch.equal(flat[10:20], (torch.arange(11, 21) * 0.1).float())  # survivors untouched
        assert torch.count_nonzero(flat[20:]) == 0 and torch.count_nonzero(flat[:10]) == 0


# ---------------------------------------------------------------------------------------- resume
def _snapshot(model, optimizer, ctl) -> dict:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sparsity": ctl.state_dict(),
                "rng": rng_state()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("mode,splits,load_before_attach", [("disparse", 2, False), ("rigl", 1, True)])
def test_resume_mid_schedule_is_bit_identical(mode, splits, load_before_attach):
    total, cut = 12, 5
    torch.manual_seed(123)
    model, optimizer, ctl = setup(mode=mode, growth_splits=splits, interval=2, end=8)
    for i in range(total):
        step(model, optimizer, ctl, i)
    reference = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), ctl.state_dict())

    torch.manual_seed(123)
    model, optimizer, ctl = setup(mode=mode, growth_splits=splits, interval=2, end=8)
    for i in range(cut):
        step(model, optimizer, ctl, i)
    saved = _snapshot(model, optimizer, ctl)
    del model, optimizer, ctl

    torch.manual_seed(999)  # a fresh process: other init, other random masks, other RNG
    model = tiny_net(seed=77)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    ctl = controller(model, mode=mode, seed=77, growth_splits=1, interval=5, end=50)
    if load_before_attach:
        ctl.load_state_dict(saved["sparsity"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        ctl.attach(model, optimizer)
    else:
        ctl.attach(model, optimizer)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        ctl.load_state_dict(saved["sparsity"])
    set_rng_state(saved["rng"])
    assert (ctl.interval, ctl.end, ctl.growth_splits) == (2, 8, splits)
    for i in range(cut, total):
        step(model, optimizer, ctl, i)

    ref_model, ref_opt, ref_ctl = reference
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref_model[key]), key
    for pid, st in optimizer.state_dict()["state"].items():
        for key, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ref_opt["state"][pid][key])), (pid, key)
    got = ctl.state_dict()
    for name in ref_ctl["masks"]:
        assert torch.equal(got["masks"][name], ref_ctl["masks"][name])
    assert {k: v for k, v in got.items() if k != "masks"} == {k: v for k, v in ref_ctl.items() if k != "masks"}


def test_state_dict_is_weights_only_and_rejects_wrong_mode():
    model, optimizer, ctl = setup()
    step(model, optimizer, ctl, 0)
    state = _snapshot(model, optimizer, ctl)["sparsity"]
    assert state["kind"] == "dynamic" and state["num_updates"] == 1 and state["last_update"] == 0
    other = controller(tiny_net(), mode="rigl")
    with pytest.raises(ValueError, match="mode"):
        other.load_state_dict(state)


def test_constructor_validation():
    model = tiny_net()
    with pytest.raises(ValueError):
        DynamicSparsity(task_loss=TASK_LOSS)
    with pytest.raises(ValueError, match="total_loss"):
        DynamicSparsity(model=model, density=0.1, mode="rigl")
    with pytest.raises(ValueError, match="arbiter"):
        DynamicSparsity(model=model, density=0.1, task_loss=TASK_LOSS, arbiter="vote")
    with pytest.raises(ValueError, match="mode"):
        DynamicSparsity(model=model, density=0.1, task_loss=TASK_LOSS, mode="set")


# ---------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, path: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        model = tiny_net(0)
        ctl = controller(model, seed=0, interval=1, end=3)
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-2, weight_decay=5e-4)
        ctl.attach(model, optimizer)
        records = []
        for i in range(4):
            batch = make_batch(100 * rank + i)  # different data on each rank
            records.append(ctl.before_step(i, model, optimizer, batch, "cpu"))
            loss, _ = LOSS(ddp(batch["img"]), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctl.after_step(model, optimizer)
        torch.save({"masks": ctl.state_dict()["masks"], "model": model.state_dict(), "records": records},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_take_identical_decisions():
    out = tempfile.mkdtemp()
    fd, path = tempfile.mkstemp()
    os.close(fd)
    os.unlink(path)
    mp.spawn(_ddp_worker, args=(2, path, out), nprocs=2, join=True)
    r0, r1 = (torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in range(2))
    assert r0["records"] == r1["records"]
    assert sum(r["dropped_total"] for r in r0["records"] if r) > 0
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for key in r0["model"]:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(r0["model"][key], r1["model"][key]), key
