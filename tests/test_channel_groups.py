"""Channel groups (prune_utils/channel_groups.py): the couplings of the DeepLab-ResNet34 + ASPP net worked out
by hand, owners, outputs never pruned, and physical removal checked against the dense net."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models import MultiTaskNet
from prune_utils.channel_groups import IN, NORM, OUT, channel_groups, remove_channels

TASKS = {"seg": 5, "sn": 3}


@pytest.fixture(scope="module")
def net() -> MultiTaskNet:
    torch.manual_seed(0)
    model = MultiTaskNet(TASKS, width_mult=0.0625)
    with torch.no_grad():   # BatchNorm away from identity, so a wrong channel slice shows in the outputs
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
    return model.eval()


@pytest.fixture(scope="module")
def groups(net):
    return channel_groups(net)


def test_group_names_sizes_and_owners(groups):
    # stage residuals: stem + stage 1 (no shortcut), stages 2-4 (named by their first block's conv2);
    # 16 blocks' inner widths; per head, 4 branches x (conv1, conv2) hidden widths
    residual = {"backbone.conv1": 4, "backbone.blocks.1.0.conv2": 8, "backbone.blocks.2.0.conv2": 16,
                "backbone.blocks.3.0.conv2": 32}
    inner = {f"backbone.blocks.{s}.{b}.conv1": w for s, (n, w) in enumerate([(3, 4), (4, 8), (6, 16), (3, 32)])
             for b in range(n)}
    heads = {f"heads.{t}.branches.{b}.conv{c}": 64 for t in TASKS for b in range(4) for c in (1, 2)}
    assert groups.sizes() == {**residual, **inner, **heads}
    assert groups.names()[0] == "backbone.conv1" and groups.names()[-1] == "heads.sn.branches.3.conv2"
    owners = {g.name: g.owner for g in groups}
    assert {owners[n] for n in {**residual, **inner}} == {"backbone"}
    assert all(owners[n] == n.split(".")[1] for n in heads)


def test_outputs_are_never_pruned(groups):
    assert groups.fixed == [f"heads.{t}.branches.{b}.conv3" for t in TASKS for b in range(4)]
    members = {m.layer for g in groups for m in g.members if m.kind == OUT}
    assert not any(layer.endswith("conv3") for layer in members)


def test_residual_groups_couple_what_the_wiring_adds(groups):
    last = {(m.layer, m.kind) for m in groups["backbone.blocks.3.0.conv2"].members}
    expected = {("backbone.ds.3.0", OUT), ("backbone.ds.3.1", NORM)}
    for b in range(3):
        expected |= {(f"backbone.blocks.3.{b}.conv2", OUT), (f"backbone.blocks.3.{b}.bn2", NORM)}
    expected |= {("backbone.blocks.3.1.conv1", IN), ("backbone.blocks.3.2.conv1", IN)}
    expected |= {(f"heads.{t}.branches.{b}.conv1", IN) for t in TASKS for b in range(4)}   # every head reads it
    assert last == expected
    first = {(m.layer, m.kind) for m in groups["backbone.conv1"].members}
    assert {("backbone.conv1", OUT), ("backbone.bn1", NORM), ("backbone.ds.1.0", IN),
            ("backbone.blocks.1.0.conv1", IN), ("backbone.blocks.0.2.conv2", OUT)} <= first
    inner = {(m.layer, m.kind) for m in groups["backbone.blocks.2.3.conv1"].members}
    assert inner == {("backbone.blocks.2.3.conv1", OUT), ("backbone.blocks.2.3.bn1", NORM),
                     ("backbone.blocks.2.3.conv2", IN)}


def test_removing_a_coupled_group_slices_every_member_alike(net, groups):
    kept = torch.tensor([True, False, False, True, True, False, True, True])      # stage 2 residual: drop 1, 2, 5
    pruned = remove_channels(net, groups, {"backbone.blocks.1.0.conv2": kept})
    idx = kept.nonzero().view(-1)
    for b in range(4):
        block, ref = pruned.backbone.blocks[1][b], net.backbone.blocks[1][b]
        assert torch.equal(block.conv2.weight, ref.conv2.weight[idx])
        assert torch.equal(block.bn2.running_mean, ref.bn2.running_mean[idx])
        if b > 0:
            assert torch.equal(block.conv1.weight, ref.conv1.weight[:, idx])
    assert torch.equal(pruned.backbone.ds[1][0].weight, net.backbone.ds[1][0].weight[idx])
    assert torch.equal(pruned.backbone.ds[2][0].weight, net.backbone.ds[2][0].weight[:, idx])
    assert torch.equal(pruned.backbone.blocks[2][0].conv1.weight, net.backbone.blocks[2][0].conv1.weight[:, idx])
    assert net.backbone.ds[1][0].weight.shape[0] == 8      # the original is untouched


def test_removing_channels_nobody_reads_leaves_outputs_unchanged(net, groups):
    """Zero the input slices of every consumer of the removed channels: they no longer reach the outputs,
    so the dense net (computed before removal) and the smaller net must agree."""
    gen = torch.Generator().manual_seed(1)
    keep = {}
    dense = MultiTaskNet(TASKS, width_mult=0.0625)
    dense.load_state_dict(net.state_dict())
    modules = dict(dense.named_modules())
    with torch.no_grad():
        for group in groups:
            mask = torch.rand(group.size, generator=gen) < 0.6
            mask[0] = True
            keep[group.name] = mask
            for member in group.members:
                if member.kind == IN:
                    modules[member.layer].weight[:, ~mask] = 0.0
    dense.eval()
    pruned = remove_channels(dense, groups, keep).eval()
    x = torch.randn(2, 3, 41, 57, generator=gen)
    with torch.no_grad():
        expected, got = dense(x), pruned(x)
    for task in TASKS:
        assert got[task].shape == expected[task].shape == (2, TASKS[task], 6, 8)
        assert torch.allclose(got[task], expected[task], atol=1e-5, rtol=1e-5)
    assert pruned.backbone.blocks[3][1].conv1.weight.shape[1] == int(keep["backbone.blocks.3.0.conv2"].sum())
    assert pruned.heads["sn"].branches[2].conv2.weight.shape == (int(keep["heads.sn.branches.2.conv2"].sum()),
                                                                 int(keep["heads.sn.branches.2.conv1"].sum()), 1, 1)


def test_removal_refuses_bad_keeps(net, groups):
    with pytest.raises(ValueError, match="every channel"):
        remove_channels(net, groups, {"backbone.conv1": torch.zeros(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        remove_channels(net, groups, {"backbone.conv1": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown channel group"):
        remove_channels(net, groups, {"heads.seg.branches.0.conv3": torch.ones(5, dtype=torch.bool)})


def test_grouping_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = MultiTaskNet(TASKS, width_mult=0.0625).train()
    model.heads["sn"].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    channel_groups(model)
    assert model.training and not model.heads["sn"].training and model.heads["seg"].training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
