"""Saliency scores (prune_utils.saliency): hand-computed gradients, shared vs per-task forward, seeds, DDP."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from models import MultiTaskNet
from prune_utils import mask_builder as mb
from prune_utils.masks import prunable_parameters
from prune_utils.saliency import (ALL, SALIENCY, GradientSaliency, compute_scores, copy_probe, make_generator,
                                  register_saliency, take_batches, xavier_probe)


class Toy(nn.Module):
    """backbone: x -> W x (2x2); heads: a(.) and b(.) 1x2 rows; no biases. Loss of a task = sum of its output."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 2, bias=False))
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 1, bias=False), "b": nn.Linear(2, 1, bias=False)})
        with torch.no_grad():
            self.backbone[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
            self.heads["a"].weight.copy_(torch.tensor([[2.0, -1.0]]))
            self.heads["b"].weight.copy_(torch.tensor([[0.0, 4.0]]))

    def forward(self, x):
        f = self.backbone(x)
        return {t: h(f) for t, h in self.heads.items()}


def sum_loss(task, preds, batch):
    return preds[task].sum()


# two batches; their input sums over rows are s1 = (1, 2) and s2 = (-2, 2)
TOY_BATCHES = [{"img": torch.tensor([[1.0, 2.0]])}, {"img": torch.tensor([[-3.0, 1.0], [1.0, 1.0]])}]
W = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
A = torch.tensor([[2.0, -1.0]])
B = torch.tensor([[0.0, 4.0]])
S = [torch.tensor([1.0, 2.0]), torch.tensor([-2.0, 2.0])]


def hand_abs_grads(head, weight):
    """Σ_batches |∂L/∂W|, Σ_batches |∂L/∂head| for L = Σ head·W·x: ∂L/∂W = headᵀ sᵀ, ∂L/∂head = (W s)ᵀ."""
    g_w = sum((head.T @ s.view(1, 2)).abs() for s in S)
    g_h = sum((weight @ s).view(1, 2).abs() for s in S)
    return g_w, g_h


def test_grad_weight2_by_hand():
    scores = compute_scores(Toy(), TOY_BATCHES, sum_loss, ["a", "b"], method="grad_weight2", progress=False)
    assert list(scores["a"]) == ["backbone.0.weight", "heads.a.weight"]
    for task, head in (("a", A), ("b", B)):
        g_w, g_h = hand_abs_grads(head, W)
        # (Σ |g|) ⊙ w², e.g. task a, W[0,0]: (|2·1| + |2·-2|) · 1² = 6
        assert torch.allclose(scores[task]["backbone.0.weight"], g_w * W ** 2)
        assert torch.allclose(scores[task][f"heads.{task}.weight"], g_h * head ** 2)
    assert scores["a"]["backbone.0.weight"][0, 0] == 6.0
    assert torch.equal(scores["b"]["backbone.0.weight"][0], torch.zeros(2))    # head b's first entry is 0


def test_snip_is_abs_grad_times_weight_on_a_xavier_copy():
    model = Toy()
    scores = compute_scores(model, TOY_BATCHES, sum_loss, ["a", "b"], method="snip", generator=7, progress=False)
    # the documented seeding: the base seed is the generator's first draw of randint(0, 2**62)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=make_generator(7)))
    probe = xavier_probe(model, torch.Generator().manual_seed(seed))
    w, a, b = probe.backbone[0].weight.detach(), probe.heads["a"].weight.detach(), probe.heads["b"].weight.detach()
    assert not torch.equal(w, W)                                        # re-drawn, not the model's weights
    for task, head in (("a", a), ("b", b)):
        # SNIP sums |g_batch ⊙ w| over batches; w is fixed, so that is (Σ |g_batch|) ⊙ |w|
        g_w, g_h = hand_abs_grads(head, w)
        assert torch.allclose(scores[task]["backbone.0.weight"], g_w * w.abs(), rtol=1e-6)
        assert torch.allclose(scores[task][f"heads.{task}.weight"], g_h * head.abs(), rtol=1e-6)
    # the model itself is untouched
    assert torch.equal(model.backbone[0].weight, W) and model.backbone[0].weight.grad is None


def test_xavier_probe_statistics_and_independence_from_device_order():
    net = MultiTaskNet({"a": 3, "b": 2}, width_mult=0.0625)
    probe = xavier_probe(net, torch.Generator().manual_seed(0))
    w = prunable_parameters(probe)["heads.a.branches.0.conv1.weight"]     # 64 x 32 x 3 x 3
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    assert float(w.detach().std()) == pytest.approx((2.0 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    again = xavier_probe(net, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(prunable_parameters(probe).values(),
                                                  prunable_parameters(again).values()))
    assert torch.equal(probe.heads["a"].branches[0].conv1.bias, net.heads["a"].branches[0].conv1.bias)


# --------------------------------------------------------------------------------------------------------------
# on a small MultiTaskNet


def small_net(seed=0):
    torch.manual_seed(seed)
    return MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)


def make_batches(n=2, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        normal = torch.randn(2, 3, size, size, generator=g)
        out.append({"img": 50 * torch.randn(2, 3, size, size, generator=g),
                    "seg": torch.randint(0, 4, (2, 1, size, size), generator=g),
                    "normal": normal / normal.norm(dim=1, keepdim=True)})
    return out


def task_loss(task, preds, batch):
    pred = preds[task]
    if task == "seg":
        target = nn.functional.interpolate(batch["seg"].float(), size=pred.shape[-2:]).long()[:, 0]
        return nn.functional.cross_entropy(pred, target)
    target = nn.functional.interpolate(batch["normal"], size=pred.shape[-2:])
    return (1 - nn.functional.cosine_similarity(pred, target, dim=1)).mean()


@pytest.mark.parametrize("method", ["snip", "grad_weight2"])
def test_shared_forward_equals_per_task_forward(method):
    net, batches = small_net(), make_batches()
    shared = compute_scores(net, batches, task_loss, ["seg", "sn"], method=method, generator=3, progress=False)
    separate = compute_scores(net, batches, task_loss, ["seg", "sn"], method=method, generator=3,
                              shared_forward=False, progress=False)
    names = list(prunable_parameters(net))
    for task in ("seg", "sn"):
        pool = [n for n in names if n.startswith("backbone.")] + [n for n in names if n.startswith(f"heads.{task}.")]
        assert list(shared[task]) == pool                                  # the task's pool, backbone first
        for n in shared[task]:
            assert shared[task][n].device.type == "cpu" and shared[task][n].dtype == torch.float32
            assert torch.allclose(shared[task][n], separate[task][n], rtol=1e-5, atol=1e-12), (task, n)
    assert any(float(s.sum()) > 0 for s in shared["seg"].values())


def test_same_seed_same_scores_and_masks_even_with_dropout():
    net, batches = small_net(), make_batches(2)
    run = lambda seed: compute_scores(net, batches, task_loss, ["seg", "sn"], method="snip", generator=seed,
                                      mode="train", progress=False)
    first, second, other = run(5), run(5), run(6)
    assert all(torch.equal(first[t][n], second[t][n]) for t in first for n in first[t])
    assert any(not torch.equal(first[t][n], other[t][n]) for t in first for n in first[t])
    m1, _ = mb.masks_for_sparsity(first, 0.9)
    m2, _ = mb.masks_for_sparsity(second, 0.9)
    assert all(torch.equal(m1[n], m2[n]) for n in m1)
    # no generator: the seed comes from torch's global RNG, so seeding it reproduces the scores
    torch.manual_seed(11)
    a = compute_scores(net, batches, task_loss, ["seg", "sn"], progress=False)
    torch.manual_seed(11)
    b = compute_scores(net, batches, task_loss, ["seg", "sn"], progress=False)
    assert all(torch.equal(a[t][n], b[t][n]) for t in a for n in a[t])


def test_the_callers_model_is_left_alone():
    net, batches = small_net(), make_batches(2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    compute_scores(net, batches, task_loss, ["seg", "sn"], method="grad_weight2", mode="train", progress=False)
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())     # BN running stats included
    assert all(p.grad is None for p in net.parameters())


def test_task_agnostic_scores():
    net, batches = small_net(), make_batches(2)
    per_task = compute_scores(net, batches, task_loss, ["seg", "sn"], generator=1, progress=False)
    agnostic = compute_scores(net, batches, task_loss, ["seg", "sn"], generator=1, progress=False,
                              task_agnostic_weights={"seg": 1.0, "sn": 0.0})
    assert list(agnostic) == [ALL] and list(agnostic[ALL]) == list(prunable_parameters(net))
    for n, s in per_task["seg"].items():        # λ_sn = 0: the summed loss is seg's alone
        assert torch.allclose(agnostic[ALL][n], s, rtol=1e-5, atol=1e-12), n
    assert all(float(agnostic[ALL][n].abs().sum()) == 0 for n in agnostic[ALL] if n.startswith("heads.sn."))
    masks = mb.global_topk(agnostic, 0.8)
    assert 1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) == \
        pytest.approx(0.8, abs=1e-5)


def test_data_free_methods():
    net = small_net()
    weights = prunable_parameters(net)
    mag = compute_scores(net, None, None, ["seg", "sn"], method="magnitude")
    for task in ("seg", "sn"):
        for n, s in mag[task].items():
            assert torch.equal(s, weights[n].detach().abs())
    r1 = compute_scores(net, None, None, ["seg", "sn"], method="random", generator=4)
    r2 = compute_scores(net, None, None, ["seg", "sn"], method="random", generator=4)
    assert all(torch.equal(r1[t][n], r2[t][n]) for t in r1 for n in r1[t])
    assert not torch.equal(r1["seg"]["backbone.conv1.weight"], r1["sn"]["backbone.conv1.weight"])
    agnostic = compute_scores(net, None, None, ["seg", "sn"], method="random", generator=4,
                              task_agnostic_weights={"seg": 1, "sn": 1})
    assert set(agnostic[ALL]) == set(weights)


def test_multitask_loss_object_is_accepted():
    losses = pytest.importorskip("engine.losses")
    net, batches = small_net(), make_batches(1)
    loss = losses.MultiTaskLoss(["seg", "sn"], [1.0, 20.0], ignore_index=255)
    batches[0]["seg"] = batches[0]["seg"].long()
    scores = compute_scores(net, batches, loss, ["seg", "sn"], num_batches=1, progress=False)
    assert set(scores) == {"seg", "sn"}


def test_custom_saliency_registry():
    register_saliency("test_abs_grad_w", GradientSaliency("test_abs_grad_w", copy_probe,
                                                           lambda acc, w: acc.mul_(w.abs())), overwrite=True)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_saliency("test_abs_grad_w", SALIENCY["snip"])
        scores = compute_scores(Toy(), TOY_BATCHES, sum_loss, ["a"], method="test_abs_grad_w", progress=False)
        g_w, _ = hand_abs_grads(A, W)
        assert torch.allclose(scores["a"]["backbone.0.weight"], g_w * W.abs())
    finally:
        SALIENCY.pop("test_abs_grad_w", None)
    with pytest.raises(ValueError, match="unknown saliency"):
        compute_scores(Toy(), TOY_BATCHES, sum_loss, ["a"], method="nope")
    with pytest.raises(ValueError, match="no head for task"):
        compute_scores(Toy(), TOY_BATCHES, sum_loss, ["c"], progress=False)
    with pytest.raises(ValueError, match="mode"):
        compute_scores(Toy(), TOY_BATCHES, sum_loss, ["a"], mode="weird", progress=False)


def test_take_batches_restarts_reiterables_and_warns_on_short_iterators():
    assert len(list(take_batches([1, 2], 5))) == 5
    with pytest.warns(RuntimeWarning, match="2 of the 5"):
        assert list(take_batches(iter([1, 2]), 5)) == [1, 2]
    with pytest.raises(ValueError):
        list(take_batches([], 3))
    assert list(take_batches([1, 2, 3], None)) == [1, 2, 3]


# --------------------------------------------------------------------------------------------------------------
# distributed: ranks score different batches, all_reduce gives every rank the scores of all batches


def _ddp_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        net, batches = small_net(), make_batches(4)
        mine = batches[rank::world]
        scores = compute_scores(net, mine, task_loss, ["seg", "sn"], method="snip", generator=9 + rank,
                                progress=False)       # different generators: rank 0's seed is broadcast
        torch.save(scores, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_all_reduce_matches_single_process(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    net, batches = small_net(), make_batches(4)
    order = batches[0::2] + batches[1::2]
    single = compute_scores(net, order, task_loss, ["seg", "sn"], method="snip", generator=9, progress=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for t in single:
            for n in single[t]:
                scale = float(single[t][n].abs().max())      # summation order and thread count differ
                assert torch.allclose(got[t][n], single[t][n], rtol=1e-4, atol=1e-5 * scale), (rank, t, n)
