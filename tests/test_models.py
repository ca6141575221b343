"""The model matches docs/ORIGINAL.md §1: parameter counts, layer order, output sizes, init, channels_last."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models import MultiTaskNet
from prune_utils.structure import TaskStructure
from prune_utils.masks import prunable_parameters


def _meta_net(tasks: dict[str, int]) -> MultiTaskNet:
    with torch.device("meta"):
        return MultiTaskNet(tasks)


@pytest.mark.parametrize("tasks,total,prunable,convs", [
    ({"seg": 40, "sn": 3}, 67_614_700, 67_581_120, 60),
    ({"seg": 19, "depth": 1}, 67_520_400, 67_486_912, 60),
    ({"seg": 17, "sn": 3, "depth": 1, "keypoint": 1, "edge": 1}, 136_763_292, 136_705_216, 96),
    ({"seg": 40, "sn": 3, "depth": 1}, 90_695_664, 90_653_888, 72),
])
def test_parameter_counts_match_reference(tasks, total, prunable, convs):
    net = _meta_net(tasks)
    assert sum(p.numel() for p in net.parameters()) == total
    weights = prunable_parameters(net)
    assert len(weights) == convs
    assert sum(w.numel() for w in weights.values()) == prunable
    assert sum(p.numel() for p in net.backbone.parameters()) == 21_284_672


def test_backbone_layer_order_and_shortcuts():
    net = _meta_net({"seg": 40, "sn": 3})
    names = list(prunable_parameters(net))
    structure = TaskStructure.from_model(net)
    backbone = [n for n in names if structure.part(n) == "backbone"]
    assert list(structure.shared) == backbone and structure.params == tuple(names)
    assert len(backbone) == 36
    assert backbone[0] == "backbone.conv1.weight"
    assert backbone[1] == "backbone.blocks.0.0.conv1.weight"
    assert backbone[-3:] == ["backbone.ds.1.0.weight", "backbone.ds.2.0.weight", "backbone.ds.3.0.weight"]
    assert names[36:48] == [f"heads.seg.branches.{b}.conv{c}.weight" for b in range(4) for c in (1, 2, 3)]
    assert [structure.part(n) for n in names[48:]] == ["sn"] * 12
    assert sorted(structure.side_layers) == backbone[-3:] and structure.chain == tuple(backbone[:33])
    assert structure.pool("sn") == tuple(backbone + names[48:])
    assert TaskStructure.from_names(names, ["seg", "sn"]) == structure     # the same partition from the paths


def test_layer_geometry():
    net = _meta_net({"seg": 40})
    b = net.backbone
    assert b.maxpool.ceil_mode
    stage3_first = b.blocks[2][0].conv1
    assert (stage3_first.stride, stage3_first.dilation, stage3_first.padding) == ((1, 1), (2, 2), (2, 2))
    assert b.blocks[3][2].conv2.dilation == (4, 4)
    assert b.blocks[1][0].conv1.stride == (2, 2) and b.ds[1][0].stride == (2, 2)
    assert b.ds[0] is None
    branch = net.heads["seg"].branches[3]
    assert branch.conv1.dilation == (24, 24) and branch.conv1.bias is not None
    assert branch.drop1.p == 0.5


@pytest.mark.parametrize("size,expected", [((321, 321), (41, 41)), ((224, 224), (29, 29)),
                                           ((480, 640), (61, 81)), ((256, 512), (33, 65))])
def test_output_sizes(size, expected):
    net = MultiTaskNet({"seg": 5, "sn": 3}, width_mult=0.0625).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, *size))
    assert out["seg"].shape == (1, 5, *expected)
    assert out["sn"].shape == (1, 3, *expected)


def test_a_net_built_on_the_meta_device_has_every_entry_of_a_real_one():
    """The tools build shape-only nets on the meta device (task structure, original-format key checks); the
    backbone's init is skipped there, nothing else."""
    with torch.device("meta"):
        meta = MultiTaskNet({"seg": 40, "sn": 3}, width_mult=0.25)
    real = MultiTaskNet({"seg": 40, "sn": 3}, width_mult=0.25)
    meta_state, real_state = meta.state_dict(), real.state_dict()
    assert list(meta_state) == list(real_state)
    assert all(meta_state[k].is_meta and meta_state[k].shape == v.shape for k, v in real_state.items())


def test_backbone_init_is_normal_001_and_heads_default():
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 40}, width_mult=0.5)
    w = net.backbone.blocks[3][0].conv2.weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.01) < 5e-4
    conv1 = net.heads["seg"].branches[0].conv1
    bound = 1 / (conv1.in_channels * 9) ** 0.5
    assert conv1.weight.abs().max() <= bound and conv1.weight.abs().max() > 0.9 * bound


def test_branches_are_summed():
    net = MultiTaskNet({"seg": 3}, width_mult=0.0625).eval()
    x = torch.randn(1, net.backbone.out_channels, 7, 7)
    head = net.heads["seg"]
    with torch.no_grad():
        assert torch.allclose(head(x), sum(b(x) for b in head.branches), atol=1e-6)


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625).eval()
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    for task in ref:
        assert torch.allclose(ref[task], out[task], atol=1e-5)


def test_any_number_of_tasks_and_bad_tasks():
    net = MultiTaskNet({"edge": 1}, width_mult=0.0625)
    assert list(net(torch.zeros(1, 3, 33, 33))) == ["edge"]
    with pytest.raises(ValueError, match="at least one task"):
        MultiTaskNet({})
    with pytest.raises(ValueError, match="positive int"):
        MultiTaskNet({"seg": 0})
    with pytest.raises(ValueError, match="neither"):
        TaskStructure.from_names(["stem.weight"], ["seg"])
    assert isinstance(net.heads, nn.ModuleDict)
