"""Channel pruning end to end (prune_utils/channel_pruning.py): every method lands on its MACs target as
counted on the real smaller net, checkpoints reload from the architecture spec with weights_only=True,
extraction keeps exactly the channels the chosen tasks proposed, and channel IoU comes out of the report."""
from __future__ import annotations

import pytest
import torch

from models import MultiTaskNet, default_architecture
from prune_utils.channel_groups import channel_groups
from prune_utils.channel_pruning import (CHANNEL_METHODS, channel_task_masks, extract_tasks, prune_channels,
                                         score_for_method)
from prune_utils.iou import analyse
from tests.helpers import counted_macs, make_batch, tiny_loss, tiny_net

TASKS = ["seg", "sn"]
SIZE = (65, 65)


@pytest.fixture(scope="module")
def net():
    return tiny_net(0).eval()


@pytest.fixture(scope="module")
def groups(net):
    return channel_groups(net)


@pytest.fixture(scope="module")
def batches():
    return [make_batch(1), make_batch(2)]


@pytest.fixture(scope="module")
def pruned(net, groups, batches):
    scores = score_for_method(net, groups, "disparse_channel", batches, tiny_loss, TASKS, generator=0)
    return prune_channels(net, scores, method="disparse_channel", arbiter="unanimous", macs_removed=0.5,
                          input_size=SIZE, groups=groups)


@pytest.mark.parametrize("method", sorted(CHANNEL_METHODS))
def test_every_method_removes_the_requested_macs_of_the_real_net(net, groups, batches, method):
    scores = score_for_method(net, groups, method, batches, tiny_loss, TASKS, generator=0,
                              loss_weights={"seg": 1.0, "sn": 20.0})
    result = prune_channels(net, scores, method=method, macs_removed=0.5, input_size=SIZE, groups=groups)
    counted = 1 - counted_macs(result.model, SIZE) / counted_macs(net, SIZE)
    assert abs(counted - 0.5) <= 0.01
    assert result.macs_removed == pytest.approx(counted)
    assert result.params_removed == pytest.approx(
        1 - sum(p.numel() for p in result.model.parameters()) / sum(p.numel() for p in net.parameters()))
    with torch.no_grad():
        out = result.model.eval()(torch.randn(2, 3, 49, 33))
    assert out["seg"].shape == (2, 5, 7, 5) and out["sn"].shape == (2, 3, 7, 5)
    assert isinstance(result.model, MultiTaskNet) and result.report["method"] == method


def test_parameter_target_and_the_model_is_left_alone(net, groups, batches):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = prune_channels(net, None, method="uniform", params_removed=0.3, input_size=SIZE, groups=groups)
    counted = 1 - sum(p.numel() for p in result.model.parameters()) / sum(p.numel() for p in net.parameters())
    assert abs(counted - 0.3) <= 0.01
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    widths = result.architecture["heads"]["seg"]
    assert len({tuple(w) for w in widths}) == 1          # uniform: every branch scaled alike


def test_checkpoint_reloads_from_the_architecture_spec(pruned, tmp_path):
    path = tmp_path / "pruned.pth"
    torch.save({"model": pruned.model.state_dict(), "tasks": TASKS, "num_classes": [5, 3],
                **pruned.checkpoint_fields()}, path)
    data = torch.load(path, weights_only=True)
    assert data["architecture"] != default_architecture(TASKS, 0.0625)
    assert 0.49 <= data["macs_removed"] <= 0.51 and 0 < data["params_removed"] < 1
    assert data["channels"]["groups"][0]["kept"].dtype == torch.bool
    net = MultiTaskNet(dict(zip(data["tasks"], data["num_classes"])), architecture=data["architecture"])
    net.load_state_dict(data["model"])
    x = torch.randn(1, 3, 57, 41)
    with torch.no_grad():
        expected, got = pruned.model.eval()(x), net.eval()(x)
    for task in TASKS:
        assert torch.equal(expected[task], got[task])


def test_extracting_all_tasks_gives_back_the_pruned_net(pruned):
    again = extract_tasks(pruned.model, TASKS, pruned.report)
    assert again.architecture == pruned.architecture
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        a, b = pruned.model.eval()(x), again.model.eval()(x)
    assert all(torch.equal(a[t], b[t]) for t in TASKS)


def test_extracting_one_task_keeps_the_channels_it_proposed(pruned):
    seg = extract_tasks(pruned.model, ["seg"], pruned.report)
    assert list(seg.model.tasks) == ["seg"] and list(seg.model.heads) == ["seg"]
    entries = {e["name"]: e for e in pruned.report["groups"]}
    kept_in_seg = {e["name"]: e["kept"] for e in seg.report["groups"]}
    for name, entry in entries.items():
        if entry["owner"] == "sn":
            assert name not in kept_in_seg
            continue
        if entry["owner"] == "seg":
            assert torch.equal(kept_in_seg[name], entry["kept"])
            continue
        wanted = entry["kept"] & entry["proposals"]["seg"]
        expected = wanted if bool(wanted.any()) else None
        if expected is not None:
            assert torch.equal(kept_in_seg[name], expected)
        else:                                        # nothing seg wants survived: one channel the net kept
            assert int(kept_in_seg[name].sum()) == 1 and bool((kept_in_seg[name] & entry["kept"]).any())
    # the weights are the pruned net's, sliced at the surviving positions
    entry = entries["backbone.blocks.2.3.conv1"]
    positions = kept_in_seg["backbone.blocks.2.3.conv1"][entry["kept"]].nonzero().view(-1)
    assert torch.equal(seg.model.backbone.blocks[2][3].conv1.weight,
                       pruned.model.backbone.blocks[2][3].conv1.weight[positions])
    # fractions against the dense single-task net, counted independently
    dense_seg = MultiTaskNet({"seg": 5}, width_mult=0.0625)
    assert seg.macs_removed == pytest.approx(1 - counted_macs(seg.model, SIZE) / counted_macs(dense_seg, SIZE))
    assert counted_macs(seg.model, SIZE) < counted_macs(pruned.model, SIZE)


def test_extracting_from_a_dense_net_drops_only_the_other_heads(net):
    sn = extract_tasks(net, ["sn"])
    assert sn.architecture["backbone"] == default_architecture(TASKS, 0.0625)["backbone"]
    x = torch.randn(1, 3, 33, 49)
    with torch.no_grad():
        assert torch.equal(sn.model.eval()(x)["sn"], net(x)["sn"])
    assert sn.macs_removed == pytest.approx(0.0) and sn.params_removed == pytest.approx(0.0)
    with pytest.raises(ValueError, match="distinct tasks"):
        extract_tasks(net, ["depth"])


def test_channel_iou_from_the_report(pruned):
    masks, structure = channel_task_masks(pruned.report)
    assert structure.shared == tuple(e["name"] for e in pruned.report["groups"] if e["owner"] == "backbone")
    report = analyse(masks, structure)
    name = "backbone.blocks.3.1.conv1"
    a, b = masks["seg"][name], masks["sn"][name]
    expected = int((a & b).sum()) / int((a | b).sum())
    layer = next(layer for layer in report.layers if layer.name == name)
    assert layer.all == pytest.approx(expected)
    assert 0 < expected < 1                       # the tasks differ, but not entirely


def test_bad_requests(net, groups):
    with pytest.raises(ValueError, match="exactly one"):
        prune_channels(net, None, method="uniform", groups=groups)
    with pytest.raises(ValueError, match="unknown channel-pruning method"):
        prune_channels(net, None, method="l1", macs_removed=0.5, groups=groups)
    with pytest.raises(ValueError, match="needs channel scores"):
        prune_channels(net, None, method="disparse_channel", macs_removed=0.5, groups=groups)
    with pytest.raises(ValueError, match="always scores with"):
        score_for_method(net, groups, "channel_snip", None, None, TASKS, importance="taylor")
