"""Channel importance (prune_utils/channel_importance.py) against independent computations: group L1 norms
summed by hand, SNIP sums of the weight-level scores sliced by hand, and Taylor scores as the derivative of
the loss with respect to a factor that scales one channel's weights (autograd through `functional_call`)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prune_utils.channel_groups import channel_groups
from prune_utils.channel_importance import (CHANNEL_IMPORTANCE, ChannelImportance, get_channel_importance,
                                            register_channel_importance, score_channels)
from prune_utils.saliency import ALL, compute_scores
from tests.helpers import make_batch, tiny_loss, tiny_net

TASKS = ["seg", "sn"]
STAGE4 = "backbone.blocks.3.0.conv2"


@pytest.fixture(scope="module")
def setup():
    net = tiny_net(0)
    with torch.no_grad():      # larger weights than the N(0, 0.01) backbone init, so gradients are not tiny
        for module in net.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
    return net, channel_groups(net), [make_batch(1), make_batch(2)]


def test_magnitude_is_the_group_l1_norm_over_each_tasks_pool(setup):
    net, groups, _ = setup
    scores = score_channels(net, groups, None, None, TASKS, "magnitude")
    block = net.backbone.blocks[0][0]
    inner = block.conv1.weight.abs().sum((1, 2, 3)) + block.conv2.weight.abs().sum((0, 2, 3))
    for task in TASKS:
        assert torch.allclose(scores[task]["backbone.blocks.0.0.conv1"], inner)
    stage4 = net.backbone.ds[3][0].weight.abs().sum((1, 2, 3))
    for b, blk in enumerate(net.backbone.blocks[3]):
        stage4 = stage4 + blk.conv2.weight.abs().sum((1, 2, 3))
        if b > 0:
            stage4 = stage4 + blk.conv1.weight.abs().sum((0, 2, 3))
    head_in = {t: sum(br.conv1.weight.abs().sum((0, 2, 3)) for br in net.heads[t].branches) for t in TASKS}
    for task in TASKS:   # each task counts only its own head's input slices
        assert torch.allclose(scores[task][STAGE4], stage4 + head_in[task], rtol=1e-5)
    both = score_channels(net, groups, None, None, TASKS, "magnitude", task_agnostic_weights={"seg": 1, "sn": 1})
    assert torch.allclose(both[ALL][STAGE4], stage4 + head_in["seg"] + head_in["sn"], rtol=1e-5)
    assert set(scores["seg"]) == {g.name for g in groups.pool("seg")}
    assert set(both[ALL]) == set(groups.names())


def test_snip_sums_the_weight_level_snip_scores_over_the_group(setup):
    net, groups, batches = setup
    channel = score_channels(net, groups, batches, tiny_loss, TASKS, "snip", generator=5)
    weight = compute_scores(net, batches, tiny_loss, TASKS, method="snip", generator=5)
    for task in TASKS:
        w = weight[task]
        head = f"heads.{task}.branches.2"
        expected = w[f"{head}.conv1.weight"].sum((1, 2, 3)) + w[f"{head}.conv2.weight"].sum((0, 2, 3))
        assert torch.allclose(channel[task][f"{head}.conv1"], expected, rtol=1e-5)
        first = (w["backbone.conv1.weight"].sum((1, 2, 3)) + w["backbone.ds.1.0.weight"].sum((0, 2, 3))
                 + w["backbone.blocks.1.0.conv1.weight"].sum((0, 2, 3)))
        for b in range(3):
            first = first + w[f"backbone.blocks.0.{b}.conv2.weight"].sum((1, 2, 3))
            first = first + w[f"backbone.blocks.0.{b}.conv1.weight"].sum((0, 2, 3))
        assert torch.allclose(channel[task]["backbone.conv1"], first, rtol=1e-5)
    assert not torch.allclose(channel["seg"]["backbone.conv1"], channel["sn"]["backbone.conv1"])


def _taylor_by_scaling(net, groups, batches, group_name: str, channel: int, weights: dict[str, float]) -> float:
    """|Σ_batches d/dα Σ_t λ_t L_t(net with every weight slice of the channel multiplied by α)| at α = 1, in
    batch-statistics mode (train-mode BatchNorm, no dropout), as the scoring does."""
    model = copy.deepcopy(net).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    params = dict(model.named_parameters())
    total = 0.0
    for batch in batches:
        alpha = torch.ones((), requires_grad=True)
        scaled = dict(params)
        for member in groups[group_name].weighted():
            w = params[member.weight]
            factor = torch.ones(w.shape[member.dim])
            gate = torch.zeros(w.shape[member.dim])
            gate[channel] = 1.0
            shape = [1] * w.dim()
            shape[member.dim] = -1
            scaled[member.weight] = w.detach() * (factor + gate * (alpha - 1)).view(shape)
        preds = torch.func.functional_call(model, scaled, (batch["img"],))
        loss = sum(lam * tiny_loss(t, preds, batch) for t, lam in weights.items())
        total += float(torch.autograd.grad(loss, alpha)[0])
    return abs(total)


@pytest.mark.parametrize("group_name,channel", [("heads.sn.branches.1.conv1", 7), (STAGE4, 3),
                                                ("backbone.blocks.2.4.conv1", 11)])
def test_taylor_is_the_derivative_of_the_loss_along_the_channel(setup, group_name, channel):
    net, groups, batches = setup
    scores = score_channels(net, groups, batches, tiny_loss, TASKS, "taylor", generator=0)
    for task in TASKS:
        if group_name not in scores[task]:
            continue
        expected = _taylor_by_scaling(net, groups, batches, group_name, channel, {task: 1.0})
        assert scores[task][group_name][channel].item() == pytest.approx(expected, rel=1e-3, abs=1e-7)
    summed = score_channels(net, groups, batches, tiny_loss, TASKS, "taylor", generator=0,
                            task_agnostic_weights={"seg": 1.0, "sn": 2.0})
    expected = _taylor_by_scaling(net, groups, batches, group_name, channel, {"seg": 1.0, "sn": 2.0})
    assert summed[ALL][group_name][channel].item() == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_registry():
    assert set(CHANNEL_IMPORTANCE) >= {"snip", "taylor", "magnitude"}
    with pytest.raises(ValueError, match="unknown channel importance"):
        get_channel_importance("fisher")
    with pytest.raises(ValueError, match="already registered"):
        register_channel_importance("snip", CHANNEL_IMPORTANCE["magnitude"])
    custom = ChannelImportance("random_groups", "random")
    register_channel_importance("random_groups", custom)
    try:
        assert get_channel_importance("random_groups") is custom and not custom.needs_data
    finally:
        del CHANNEL_IMPORTANCE["random_groups"]
