"""IoU analysis: pure measures on hand-made masks, the report, the watershed rule and the writers."""
from __future__ import annotations

import math

import pytest
import torch

from prune_utils import iou as I



def bools(*bits):
    return torch.tensor(bits, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------- measures


def test_identical_masks_give_one_and_disjoint_give_zero():
    a = bools(1, 0, 1, 1, 0, 0)
    assert I.iou([a, a.clone()]) == 1.0
    assert I.iou([a, a, a]) == 1.0
    assert I.iou([a, ~a]) == 0.0
    assert I.compat_iou([a, ~a]) == 0.0
    assert I.compat_iou([a, a]) == 1.0


def test_hand_computed_two_tasks():
    a = bools(1, 1, 1, 0, 0, 0, 1, 0)
    b = bools(0, 1, 1, 1, 0, 0, 0, 0)
    # ∩ = {1, 2} -> 2 ; ∪ = {0, 1, 2, 3, 6} -> 5
    assert I.intersection_union([a, b]) == (2, 5)
    assert I.iou([a, b]) == pytest.approx(0.4)
    # for two tasks the multi-task IoU is the pairwise IoU and the original's compat metric agrees
    assert I.compat_iou([a, b]) == pytest.approx(0.4)


def test_hand_computed_three_tasks_and_compat_quirk():
    a = bools(1, 1, 1, 1, 0, 0, 0, 0)
    b = bools(1, 1, 0, 0, 1, 0, 0, 0)
    c = bools(1, 0, 1, 0, 0, 0, 0, 1)
    # ∩ = {0} ; ∪ = {0, 1, 2, 3, 4, 7} -> 1/6
    assert I.iou([a, b, c]) == pytest.approx(1 / 6)
    # votes M = [3, 2, 2, 1, 1, 0, 0, 1] -> histogram h0=2, h1=3, h2=2, h3=1
    assert I.keep_count_histogram([a, b, c]) == [2, 3, 2, 1]
    # compat drops the weight kept by all three: #{M=2}/#{M in {1,2}} = 2/5
    assert I.compat_iou([a, b, c]) == pytest.approx(2 / 5)
    assert I.iou([a, b]) == pytest.approx(2 / 5)       # {0,1} / {0,1,2,3,4}
    assert I.iou([a, c]) == pytest.approx(2 / 5)       # {0,2} / {0,1,2,3,7}
    assert I.iou([b, c]) == pytest.approx(1 / 5)       # {0}   / {0,1,2,4,7}


def test_empty_masks_convention_and_errors():
    z = torch.zeros(5, dtype=torch.bool)
    assert I.iou([z, z]) == 1.0
    assert math.isnan(I.compat_iou([z, z]))        # the original's 0/0 (golden iou_compat.pt has such layers)
    with pytest.raises(ValueError):
        I.iou([torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)])
    with pytest.raises(ValueError):
        I.iou([])


def test_multidimensional_masks():
    a = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    b = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    a[0, :, 0, 0] = True       # 3 weights
    b[0, :2, 0, 0] = True      # 2 of them
    b[1, 0, 1, 1] = True       # +1 elsewhere
    assert I.iou([a, b]) == pytest.approx(2 / 4)


# ---------------------------------------------------------------------------------------------- watershed


def test_watershed_on_hand_made_profile():
    profile = [0.9, 0.85, 0.8, 0.4, 0.35, 0.1, 0.05]
    found = I.watershed(profile)
    assert found["index"] == 3 and found["drop"] == pytest.approx(0.4)
    assert found["before"] == 0.8 and found["after"] == 0.4
    # ties: the first largest drop wins; a rise is never a watershed
    assert I.watershed([1.0, 0.5, 0.6, 0.1])["index"] == 1
    assert I.watershed([0.1, 0.2, 0.3]) is None            # never falls: no watershed
    assert I.watershed([0.4, 0.4]) is None
    assert I.watershed([0.5]) is None


# The original's shipped NYUv2 profile (docs/ORIGINAL.md §8, 33 conv layers): the rule must pick
# backbone.blocks.2.0.conv2 (index 16), the watershed the paper names.
NYU_REFERENCE = [0.967749, 0.946809, 0.938702, 0.928480, 0.913026, 0.909212, 0.893020, 0.865893, 0.755082,
                 0.725929, 0.669541, 0.635667, 0.575011, 0.555841, 0.470727, 0.381130, 0.128797, 0.101490,
                 0.049357, 0.043805, 0.017640, 0.022083, 0.021285, 0.013681, 0.030293, 0.030242, 0.035944,
                 0.061445, 0.033927, 0.028364, 0.033636, 0.063291, 0.027733]
TASKONOMY_REFERENCE_COMPAT = [0.989457, 0.976315, 0.972876, 0.967266, 0.963888, 0.962345, 0.953648, 0.938852,
                              0.893534, 0.886495, 0.864476, 0.852673, 0.819763, 0.810727, 0.771233, 0.723281,
                              0.512332, 0.476691, 0.389375, 0.354660, 0.262135, 0.248079, 0.168787, 0.170185,
                              0.100184, 0.117498, 0.060252, 0.066459, 0.004620, 0.007081, 0.000936, 0.000000,
                              0.000935]


def test_watershed_rule_on_published_profiles():
    assert I.watershed(NYU_REFERENCE)["index"] == 16
    assert I.watershed(TASKONOMY_REFERENCE_COMPAT)["index"] == 16


# ---------------------------------------------------------------------------------------------- report

NAMES = ["backbone.conv1.weight", "backbone.blocks.0.0.conv1.weight", "backbone.blocks.0.0.conv2.weight",
         "backbone.ds.1.0.weight", "heads.seg.branches.0.conv1.weight"]


def make_task_masks():
    seg = {NAMES[0]: bools(1, 1, 1, 1), NAMES[1]: bools(1, 1, 0, 0), NAMES[2]: bools(1, 0, 0, 0),
           NAMES[3]: bools(1, 1), NAMES[4]: bools(1, 0)}
    sn = {NAMES[0]: bools(1, 1, 1, 0), NAMES[1]: bools(0, 1, 1, 0), NAMES[2]: bools(0, 1, 0, 0),
          NAMES[3]: bools(1, 0)}
    depth = {NAMES[0]: bools(1, 1, 1, 1), NAMES[1]: bools(1, 1, 1, 0), NAMES[2]: bools(0, 0, 0, 1),
             NAMES[3]: bools(0, 1)}
    return {"seg": seg, "sn": sn, "depth": depth}


def test_report_layers_pairs_overall_and_watershed():
    report = I.analyse(make_task_masks())
    assert report.tasks == ["seg", "sn", "depth"]
    assert [l.name for l in report.conv_layers] == NAMES[:3]          # heads ignored
    assert [l.index for l in report.conv_layers] == [0, 1, 2]
    assert [l.name for l in report.shortcut_layers] == [NAMES[3]]
    assert report.shortcut_layers[0].index is None
    conv1, b1, b2 = report.conv_layers
    assert conv1.all == pytest.approx(3 / 4)
    assert conv1.pairs == {"seg_X_sn": pytest.approx(3 / 4), "seg_X_depth": 1.0, "sn_X_depth": pytest.approx(3 / 4)}
    assert b1.all == pytest.approx(1 / 3)                             # ∩ {1}, ∪ {0,1,2}
    assert b2.all == 0.0
    assert b1.kept == {"seg": 2, "sn": 2, "depth": 3}
    # conv1: votes [3,3,3,2] -> compat = 1/1 ; b1: votes [2,3,2,0] -> 2/2
    assert conv1.compat == 1.0 and b1.compat == 1.0
    # pooled over all backbone layers (shortcut included): ∩ = 3+1+0+0, ∪ = 4+3+3+2
    assert report.overall["all"] == pytest.approx(4 / 12)
    assert report.overall["pairs"]["seg_X_sn"] == pytest.approx((3 + 1 + 0 + 1) / (4 + 3 + 2 + 2))
    assert report.overall["mean_conv"] == pytest.approx((3 / 4 + 1 / 3 + 0) / 3)
    # profile 0.75 -> 0.333 -> 0: the largest drop is into layer 1
    assert report.watershed["index"] == 1 and report.watershed["layer"] == NAMES[1]
    assert set(report.pair_watersheds) == {"seg_X_sn", "seg_X_depth", "sn_X_depth"}


def test_two_task_report_all_equals_pair():
    masks = make_task_masks()
    report = I.analyse({"seg": masks["seg"], "sn": masks["sn"]})
    for layer in report.layers:
        assert layer.all == layer.pairs["seg_X_sn"] == layer.compat
    assert report.overall["all"] == report.overall["pairs"]["seg_X_sn"]


def test_report_rejects_bad_inputs():
    masks = make_task_masks()
    with pytest.raises(ValueError, match="two tasks"):
        I.analyse({"seg": masks["seg"]})
    broken = {"seg": masks["seg"], "sn": {k: v for k, v in masks["sn"].items() if k != NAMES[1]}}
    with pytest.raises(ValueError, match="lacks backbone layer"):
        I.analyse(broken)


def test_writers_and_plot(tmp_path):
    report = I.analyse(make_task_masks())
    rows = I.to_csv_rows(report)
    assert rows[0][:4] == ["index", "layer", "kind", "numel"]
    assert "iou_seg_X_depth" in rows[0] and rows[0][-1] == "compat"
    assert len(rows) == 1 + len(report.layers) + 1
    data = report.as_dict()
    assert data["pairs"] == ["seg_X_sn", "seg_X_depth", "sn_X_depth"]
    assert data["layers"][3]["kind"] == "shortcut"
    text = I.summary_table(report)
    assert "watershed: layer 1" in text and "overall (pooled)" in text
    from prune_utils.plots import iou_bar_plot
    out = tmp_path / "plot.png"
    iou_bar_plot(report, out)
    assert out.stat().st_size > 1000
    assert not math.isnan(report.overall["all"])
