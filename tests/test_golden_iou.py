"""The original's IoU analysis number (golden iou_compat.pt) from `prune_utils.iou` on the same masks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.golden import load_golden


@pytest.mark.parametrize("case", ["two_task", "five_task"])
def test_compat_iou_per_layer_and_pooled_match_the_original(case):
    from prune_utils import iou as I

    fx = load_golden("iou_compat.pt")[case]
    tasks, layers = list(fx["tasks"]), list(fx["layer_names"])
    masks = {t: {f"{n}.weight": fx["masks"][t][n] for n in layers} for t in tasks}
    report = I.analyse(masks)
    by_name = {layer.name: layer for layer in report.layers}
    ours = np.array([by_name[f"{n}.weight"].compat for n in layers])
    # float32 division in the original: 1e-6 relative covers it; 0/0 is NaN in both
    np.testing.assert_allclose(ours, fx["iou"].numpy(), rtol=1e-6, equal_nan=True)
    pooled = report.overall["compat"]
    assert pooled == pytest.approx(float(fx["pooled_ratio"]), rel=1e-6, nan_ok=True)
    assert report.as_dict()["overall"]["compat"] == (None if math.isnan(pooled) else pooled)


def test_two_task_compat_is_the_mask_iou_except_for_empty_layers():
    """For two tasks the original's number is |A∩B|/|A∪B|; our `all`/pair IoU calls two empty masks 1.0
    (documented), the original NaN."""
    from prune_utils import iou as I

    fx = load_golden("iou_compat.pt")["two_task"]
    a, b = fx["tasks"]
    for n, expected in zip(fx["layer_names"], fx["iou"].tolist()):
        ma, mb = fx["masks"][a][n], fx["masks"][b][n]
        if math.isnan(expected):
            assert not (ma | mb).any() and I.iou([ma, mb]) == 1.0
        else:
            assert I.iou([ma, mb]) == pytest.approx(expected, rel=1e-6)


def test_five_task_compat_differs_from_the_true_multitask_iou():
    """The original's 5-task number drops weights kept by 3+ tasks; ours (`all`) is the Jaccard index of all
    five masks. Pin the difference on the fixture's layers."""
    from prune_utils import iou as I

    fx = load_golden("iou_compat.pt")["five_task"]
    tasks = list(fx["tasks"])
    differs = 0
    for n, expected in zip(fx["layer_names"], fx["iou"].tolist()):
        masks = [fx["masks"][t][n] for t in tasks]
        votes = sum(m.long() for m in masks)
        true_iou = I.iou(masks)
        assert true_iou == pytest.approx(float((votes == len(tasks)).sum()) / max(int((votes > 0).sum()), 1)
                                         if (votes > 0).any() else 1.0)
        differs += int(math.isnan(expected) or abs(true_iou - expected) > 1e-6)
    assert differs > 0
