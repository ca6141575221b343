"""Channel selection (prune_utils/channel_selection.py): per-task top-k and the arbiters at channel level on
hand-set scores with hand-worked results, the task-agnostic and uniform selections, and the MACs search."""
from __future__ import annotations

import pytest
import torch

from models import MultiTaskNet
from prune_utils.channel_cost import ChannelCost
from prune_utils.channel_groups import OUT, ChannelGroup, ChannelGroups, Member, channel_groups, remove_channels
from prune_utils.channel_selection import Target, keep_at, select_channels
from prune_utils.saliency import ALL

T = torch.tensor


def _fake_groups() -> ChannelGroups:
    """Two shared groups (4 and 2 channels) and one 2-channel head group per task (t1, t2, t3)."""
    spec = [("backbone.a", "backbone", 4), ("backbone.b", "backbone", 2), ("heads.t1.h", "t1", 2),
            ("heads.t2.h", "t2", 2), ("heads.t3.h", "t3", 2)]
    return ChannelGroups([ChannelGroup(n, o, s, (Member(n, OUT),)) for n, o, s in spec], ["t1", "t2", "t3"])


# each pool has 4 + 2 + 2 = 8 channels; at keep ratio 0.5 every task keeps its top 4:
#   t1: a0 (8), a2 (7), b0 (6), h0 (5)      t2: a1 (9), a3 (8), b1 (7), h1 (6)
#   t3: a0 (9), a1 (8), b0 (7), a2 (1)  -> t3 keeps none of its head: the head keeps its best, h1 (0.3)
SCORES = {
    "t1": {"backbone.a": T([8., 1., 7., 2.]), "backbone.b": T([6., .5]), "heads.t1.h": T([5., .1])},
    "t2": {"backbone.a": T([1., 9., 2., 8.]), "backbone.b": T([.3, 7.]), "heads.t2.h": T([.2, 6.])},
    "t3": {"backbone.a": T([9., 8., 1., .5]), "backbone.b": T([7., .1]), "heads.t3.h": T([.2, .3])},
}
HEADS = {"heads.t1.h": [True, False], "heads.t2.h": [False, True], "heads.t3.h": [False, True]}


@pytest.mark.parametrize("arbiter,a,b", [
    # union: a channel goes only if every task drops it
    ("unanimous", [True, True, True, True], [True, True]),
    # 2 of 3 votes: a3 and b1 have only t2's
    ("majority", [True, True, True, False], [True, False]),
    # nobody agrees on anything: both groups are emptied and keep their best channel by the tasks' mean
    # pool-normalised score (a0: (8/29.6 + 1/33.5 + 9/26.1)/3 = 0.215 > a1: 0.203; b0: 0.160 > b1: 0.077)
    ("intersection", [True, False, False, False], [True, False]),
    # k = round(mean(3, 3, 4)) = 3 channels by mean normalised score: a0 .215, a1 .203, b0 .160
    ("mean_score", [True, True, False, False], [True, False]),
])
def test_per_task_selection_and_arbiters_on_hand_set_scores(arbiter, a, b):
    keep, emptied = keep_at(SCORES, _fake_groups(), 0.5, "per_task", arbiter)
    assert keep["backbone.a"].tolist() == a
    assert keep["backbone.b"].tolist() == b
    assert {n: keep[n].tolist() for n in HEADS} == HEADS
    expected_empty = ["heads.t3.h"] + (["backbone.a", "backbone.b"] if arbiter == "intersection" else [])
    assert sorted(emptied) == sorted(expected_empty)


def test_global_and_uniform_selections_on_hand_set_scores():
    scores = {ALL: {"backbone.a": T([5., 1., 4., 0.]), "backbone.b": T([3., 9.]), "heads.t1.h": T([2., 8.]),
                    "heads.t2.h": T([.5, .6]), "heads.t3.h": T([7., 6.])}}
    groups = _fake_groups()
    keep, emptied = keep_at(scores, groups, 0.25, "global")        # 12 channels -> top 3: 9, 8, 7
    assert {n: m.tolist() for n, m in keep.items()} == {
        "backbone.a": [True, False, False, False],                # emptied: its best channel comes back
        "backbone.b": [False, True], "heads.t1.h": [False, True], "heads.t2.h": [False, True],
        "heads.t3.h": [True, False]}
    assert emptied == ["backbone.a", "heads.t2.h"]
    keep, _ = keep_at(scores, groups, 0.5, "uniform")              # half of every group
    assert {n: m.tolist() for n, m in keep.items()} == {
        "backbone.a": [True, False, True, False], "backbone.b": [False, True], "heads.t1.h": [False, True],
        "heads.t2.h": [False, True], "heads.t3.h": [True, False]}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 5, "sn": 3}, width_mult=0.0625).eval()
    return net, channel_groups(net)


def _flat_scores(groups: ChannelGroups, tasks) -> dict:
    return {t: {g.name: torch.full((g.size,), 10.0) for g in groups.pool(t)} for t in tasks}


@pytest.mark.parametrize("arbiter,dropped", [("unanimous", [1]), ("majority", [1]), ("intersection", [1, 2, 6])])
def test_a_coupled_group_goes_together_through_selection(tiny, arbiter, dropped):
    """seg gives channels 1 and 6 of the stage-2 residual score 0, sn channels 1 and 2; every other channel
    scores 10. Each task's pool holds 296 shared + 512 head channels = 808; at keep ratio 806.5/808 each task
    keeps 806 and drops exactly its two."""
    net, groups = tiny
    scores = _flat_scores(groups, ["seg", "sn"])
    name = "backbone.blocks.1.0.conv2"
    scores["seg"][name][[1, 6]] = 0.0
    scores["sn"][name][[1, 2]] = 0.0
    keep, emptied = keep_at(scores, groups, 806.5 / 808, "per_task", arbiter)
    assert not emptied
    assert (~keep[name]).nonzero().view(-1).tolist() == dropped
    assert all(bool(mask.all()) for n, mask in keep.items() if n != name)
    pruned = remove_channels(net, groups, keep)
    idx = keep[name].nonzero().view(-1)
    stage2 = [pruned.backbone.blocks[1][b].conv2.weight for b in range(4)] + [pruned.backbone.ds[1][0].weight]
    reference = [net.backbone.blocks[1][b].conv2.weight for b in range(4)] + [net.backbone.ds[1][0].weight]
    for got, ref in zip(stage2, reference):
        assert torch.equal(got, ref[idx])
    readers = [pruned.backbone.blocks[1][b].conv1.weight for b in (1, 2, 3)] + [
        pruned.backbone.blocks[2][0].conv1.weight, pruned.backbone.ds[2][0].weight]
    ref_readers = [net.backbone.blocks[1][b].conv1.weight for b in (1, 2, 3)] + [
        net.backbone.blocks[2][0].conv1.weight, net.backbone.ds[2][0].weight]
    for got, ref in zip(readers, ref_readers):
        assert torch.equal(got, ref[:, idx])


def _random_scores(groups: ChannelGroups, keys, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: {g.name: torch.rand(g.size, generator=gen) for g in (groups if k == ALL else groups.pool(k))}
            for k in keys}


@pytest.mark.parametrize("selection", ["per_task", "global", "uniform"])
@pytest.mark.parametrize("removed", [0.3, 0.5, 0.7])
def test_search_reaches_the_macs_target_within_one_point(tiny, selection, removed):
    net, groups = tiny
    cost = ChannelCost(net, groups, (65, 65))
    scores = _random_scores(groups, ["seg", "sn"] if selection == "per_task" else [ALL])
    result = select_channels(groups, scores, cost, Target("macs", removed), selection, "unanimous")
    assert abs(result.removed["macs"] - removed) <= 0.01 and result.info["within_tol"]
    assert result.macs == cost.macs(result.widths())
    assert 0 < result.fraction < 1


def test_parameter_target_and_the_proposals_behind_the_union(tiny):
    net, groups = tiny
    cost = ChannelCost(net, groups, (65, 65))
    scores = _random_scores(groups, ["seg", "sn"], seed=3)
    result = select_channels(groups, scores, cost, Target("params", 0.4), "per_task", "unanimous")
    assert abs(result.removed["params"] - 0.4) <= 0.01
    for group in groups.shared():
        union = result.proposals["seg"][group.name] | result.proposals["sn"][group.name]
        assert torch.equal(result.keep[group.name], union) or not bool(union.any())


def test_bad_requests_get_one_line_errors(tiny):
    net, groups = tiny
    cost = ChannelCost(net, groups, (33, 33))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Target("macs", 1.0)
    with pytest.raises(ValueError, match="unknown target"):
        Target("flops", 0.5)
    per_task = _random_scores(groups, ["seg", "sn"])
    with pytest.raises(ValueError, match="task-agnostic"):
        select_channels(groups, per_task, cost, Target("macs", 0.5), "global")
    with pytest.raises(ValueError, match="lack task"):
        select_channels(groups, {"seg": per_task["seg"]}, cost, Target("macs", 0.5))
    per_task["sn"]["backbone.conv1"] = torch.rand(3)
    with pytest.raises(ValueError, match="shape"):
        select_channels(groups, per_task, cost, Target("macs", 0.5))
