"""Sparsity report (prune_utils.report): rows and totals, parameter and MAC counts, writers."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from models import MultiTaskNet
from prune_utils.mask_builder import masks_for_sparsity
from prune_utils.masks import dense_masks, prunable_parameters
from prune_utils.structure import TaskStructure
from prune_utils.report import (OVERALL, build_report, format_table, layer_rows, mac_counts, param_counts, summarize,
                                write_csv, write_json)


class ToyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3, stride=2, groups=2))
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 3)})

    def forward(self, x):
        f = self.backbone(x).mean(dim=(2, 3))
        return {"a": self.heads["a"](f)}


def test_macs_by_hand():
    net = ToyConv()
    masks = dense_masks(net)
    masks["backbone.0.weight"] = torch.zeros(4, 2, 3, 3, dtype=torch.bool)
    masks["backbone.0.weight"].view(-1)[:36] = True                      # density 0.5
    macs = mac_counts(net, masks, (1, 2, 5, 5))
    # conv 0: 4x5x5 outputs x (2 x 3 x 3) = 1800; conv 1 (stride 2, groups 2): 4x2x2 outputs x (2 x 3 x 3) = 288;
    # linear: 3 outputs x 4 inputs = 12
    assert macs["layers"]["backbone.0.weight"] == {"dense": 1800, "kept": 900.0}
    assert macs["layers"]["backbone.1.weight"]["dense"] == 288
    assert macs["layers"]["heads.a.weight"]["dense"] == 12
    assert macs["dense"] == 1800 + 288 + 12 and macs["kept"] == 900 + 288 + 12
    assert macs["parts"]["backbone"]["dense"] == 2088 and macs["parts"]["a"]["dense"] == 12
    assert mac_counts(net, masks, (3, 2, 5, 5), device="cpu")["dense"] == macs["dense"]   # per sample, real run


def test_rows_sum_to_totals_and_parts():
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
    params = prunable_parameters(net)
    names = list(params)
    scores = {t: {n: torch.rand(params[n].shape) for n in TaskStructure.from_model(net).pool(t)} for t in ("seg", "sn")}
    masks, _ = masks_for_sparsity(scores, 0.7)
    rows = layer_rows(masks, net)
    assert [r["name"] for r in rows] == names
    summary = summarize(rows)
    assert list(summary) == ["backbone", "seg", "sn", OVERALL]
    assert summary[OVERALL]["total"] == sum(r["total"] for r in rows) == sum(w.numel() for w in params.values())
    assert summary[OVERALL]["kept"] == sum(r["kept"] for r in rows) == sum(int(m.sum()) for m in masks.values())
    assert summary[OVERALL]["kept"] == sum(summary[p]["kept"] for p in ("backbone", "seg", "sn"))
    assert summary[OVERALL]["sparsity"] == pytest.approx(0.7, abs=5e-4)
    for r in rows:
        assert r["sparsity"] == pytest.approx(1 - r["kept"] / r["total"])
    counts = param_counts(net, masks)
    assert counts["total"] == sum(p.numel() for p in net.parameters())
    assert counts["kept"] == counts["other"] + summary[OVERALL]["kept"]


def test_build_report_and_writers(tmp_path):
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
    masks = dense_masks(net)
    for m in masks.values():
        m.view(-1)[::2] = False
    report = build_report(net, masks, input_size=(1, 3, 32, 32))
    assert report["macs"]["kept"] == pytest.approx(sum(r["macs_kept"] for r in report["layers"]))
    assert 0.49 < report["macs"]["kept"] / report["macs"]["dense"] < 0.51
    table = format_table(report)
    assert "overall" in table and "backbone.conv1.weight" in table and "MACs" in table
    write_csv(report["layers"], tmp_path / "layers.csv")
    write_json(report, tmp_path / "report.json")
    with open(tmp_path / "layers.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == len(report["layers"]) and lines[0]["shape"] == "4x3x7x7"
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["overall"]["total"] == \
        report["summary"]["overall"]["total"]


def test_macs_from_an_empty_batch_equal_the_meta_device_and_a_real_forward():
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
    masks = dense_masks(net)
    for m in masks.values():
        m.view(-1)[::3] = False
    empty = mac_counts(net, masks, (1, 3, 33, 47))                          # default: no arithmetic
    assert empty == mac_counts(net, masks, (1, 3, 33, 47), device="meta")
    assert empty["dense"] == mac_counts(net, masks, (2, 3, 33, 47), device="cpu")["dense"]
    report = build_report(net, masks, input_size=(1, 3, 33, 47))
    assert report["macs"] == {k: v for k, v in empty.items() if k != "layers"}
    assert report["params"] == param_counts(net, masks)


class RefusesEmptyBatches(ToyConv):
    def forward(self, x):
        if x.shape[0] == 0:
            raise RuntimeError("this model needs at least one sample")
        return super().forward(x)


def test_macs_fall_back_to_the_meta_device_for_a_model_that_refuses_empty_batches():
    net = RefusesEmptyBatches()
    assert mac_counts(net, None, (1, 2, 5, 5))["dense"] == 1800 + 288 + 12
