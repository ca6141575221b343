"""The MACs/parameter model (prune_utils/channel_cost.py) against counts taken on real, physically pruned nets."""
from __future__ import annotations

import pytest
import torch

from models import MultiTaskNet
from prune_utils.channel_cost import ChannelCost
from prune_utils.channel_groups import channel_groups, remove_channels

from tests.helpers import counted_macs

TASKS = {"seg": 5, "sn": 3}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = MultiTaskNet(TASKS, width_mult=0.0625)
    return net, channel_groups(net)


def test_paper_net_counts():
    with torch.device("meta"):                  # shapes only: the paper's net costs nothing to trace here
        net = MultiTaskNet({"seg": 40, "sn": 3})
    cost = ChannelCost(net, channel_groups(net), (321, 321))
    assert cost.dense_params == 67_614_700      # tests/test_models.py's reference count
    assert cost.dense_macs == counted_macs(net, (321, 321))


@pytest.mark.parametrize("size", [(65, 65), (49, 83)])
def test_cost_of_any_widths_matches_the_pruned_net(setup, size):
    net, groups = setup
    cost = ChannelCost(net, groups, size)
    assert cost.dense_macs == counted_macs(net, size)
    assert cost.dense_params == sum(p.numel() for p in net.parameters())
    gen = torch.Generator().manual_seed(2)
    keep = {}
    for group in groups:
        mask = torch.rand(group.size, generator=gen) < 0.5
        mask[int(torch.randint(group.size, (1,), generator=gen))] = True
        keep[group.name] = mask
    pruned = remove_channels(net, groups, keep)
    widths = {n: int(m.sum()) for n, m in keep.items()}
    assert cost.macs(widths) == counted_macs(pruned, size)
    assert cost.params(widths) == sum(p.numel() for p in pruned.parameters())
    removed = cost.removed(widths)
    assert removed["macs"] == pytest.approx(1 - counted_macs(pruned, size) / counted_macs(net, size))
