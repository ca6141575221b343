"""Architecture specs (models/architecture.py): the default net rebuilt bit for bit, custom widths, bad specs."""
from __future__ import annotations

import copy

import pytest
import torch

from models import MultiTaskNet, architecture_of, default_architecture

TASKS = {"seg": 5, "sn": 3}


def test_default_spec_of_the_paper_net():
    spec = default_architecture(["seg", "sn"], 1.0)
    assert spec["backbone"] == {"stem": 64, "stage_widths": [64, 128, 256, 512],
                                "block_widths": [[64] * 3, [128] * 4, [256] * 6, [512] * 3]}
    assert spec["heads"] == {"seg": [[1024, 1024]] * 4, "sn": [[1024, 1024]] * 4}


@pytest.mark.parametrize("width", [0.0625, 0.125])
def test_building_from_the_default_spec_is_bit_identical(width):
    torch.manual_seed(3)
    reference = MultiTaskNet(TASKS, width)
    torch.manual_seed(3)
    rebuilt = MultiTaskNet(TASKS, architecture=default_architecture(list(TASKS), width))
    a, b = reference.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert architecture_of(reference) == default_architecture(list(TASKS), width)


def test_custom_widths_build_the_layers_they_name():
    spec = default_architecture(list(TASKS), 0.0625)
    spec["backbone"]["stage_widths"] = [3, 5, 7, 9]
    spec["backbone"]["stem"] = 3
    spec["backbone"]["block_widths"] = [[1, 2, 3], [4, 5, 6, 7], [1, 1, 1, 1, 1, 2], [8, 9, 10]]
    spec["heads"]["sn"] = [[2, 3], [4, 5], [6, 7], [8, 9]]
    net = MultiTaskNet(TASKS, architecture=spec).eval()
    b = net.backbone
    assert b.conv1.weight.shape == (3, 3, 7, 7)
    assert b.blocks[1][2].conv1.weight.shape == (6, 5, 3, 3) and b.blocks[1][2].conv2.weight.shape == (5, 6, 3, 3)
    assert b.ds[0] is None and b.ds[3][0].weight.shape == (9, 7, 1, 1)
    branch = net.heads["sn"].branches[2]
    assert branch.conv1.weight.shape == (6, 9, 3, 3) and branch.conv2.weight.shape == (7, 6, 1, 1)
    assert branch.conv3.weight.shape == (3, 7, 1, 1)
    assert architecture_of(net) == spec
    with torch.no_grad():
        out = net(torch.randn(1, 3, 33, 33))
    assert out["seg"].shape == (1, 5, 5, 5) and out["sn"].shape == (1, 3, 5, 5)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(version=2), "version"),
    (lambda s: s["backbone"].update(stem=0), "stem"),
    (lambda s: s["backbone"].update(stage_widths=[1, 2, 3]), "stage_widths"),
    (lambda s: s["backbone"]["block_widths"][2].pop(), "block_widths"),
    (lambda s: s["heads"].pop("sn"), "do not match the tasks"),
    (lambda s: s["heads"].update(sn=[[1, 2]] * 3), "heads.sn"),
    (lambda s: s["heads"].update(sn=[[1, 2.5]] * 4), "heads.sn"),
])
def test_bad_specs_get_one_line_errors(edit, message):
    spec = copy.deepcopy(default_architecture(list(TASKS), 0.0625))
    edit(spec)
    with pytest.raises(ValueError, match=message):
        MultiTaskNet(TASKS, architecture=spec)
