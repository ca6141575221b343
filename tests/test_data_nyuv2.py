"""The real NYUv2 frames (../shared/data/nyuv2_samples) through the NYUv2 loader, test and train mode.

Expected values follow docs/ORIGINAL.md §2.2 adapted to docs/CONVENTIONS.md (int64 seg, decoded normals).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dataloaders import IMG_MEAN_BGR, NYUv2, build_loader

def _check_ranges(item, size):
    h, w = size
    img, seg, normal, depth = item["img"], item["seg"], item["normal"], item["depth"]
    assert img.dtype == torch.float32 and tuple(img.shape) == (3, h, w)
    assert seg.dtype == torch.int64 and tuple(seg.shape) == (1, h, w)
    assert normal.dtype == torch.float32 and tuple(normal.shape) == (3, h, w)
    assert depth.dtype == torch.float32 and tuple(depth.shape) == (1, h, w)
    img, seg, normal = img.numpy(), seg.numpy(), normal.numpy()
    # BGR, Caffe mean subtracted, no /255: within [-mean, 255 - mean]
    assert img.min() >= -122.68 - 1e-3 and img.max() <= 255 - 104.0 + 1e-3
    assert set(np.unique(seg).tolist()) <= set(range(40)) | {255}
    norms = np.sqrt((normal ** 2).sum(axis=0))
    zero = ~normal.any(axis=0)
    assert (norms[~zero] > 0.0).all() and (norms[~zero] < 1.03).all()
    assert np.abs(normal).max() <= 1.0
    assert (depth.numpy() >= 0).all()


def test_test_mode_full_size_matches_files(nyuv2_samples):
    ds = NYUv2(nyuv2_samples, "test")
    assert len(ds) == 1 and ds.tasks == ("seg", "sn", "depth") and ds.ignore_index == 255
    assert ds.class_weights is None and not ds.train
    item = ds[0]
    assert item["name"] == "img/1314.png"
    _check_ranges(item, (480, 640))
    img, seg, normal, depth = (item[k].numpy() for k in ("img", "seg", "normal", "depth"))
    # image: BGR file pixels minus the mean
    bgr = cv2.imread(str(nyuv2_samples / "img/1314.png")).astype(np.float32)
    assert np.allclose(img.transpose(1, 2, 0), bgr - IMG_MEAN_BGR, atol=1e-4)
    # seg: the PNG values, with the documented ignore fraction (20.96 % for 1314)
    assert np.array_equal(seg[0], cv2.imread(str(nyuv2_samples / "seg/1314.png"), cv2.IMREAD_GRAYSCALE))
    assert abs((seg == 255).mean() - 0.2096) < 0.001
    assert {0, 1, 4, 5, 6, 7, 9, 14, 17, 22, 38, 39} <= set(np.unique(seg).tolist())
    # normals: invalid (255,255,255) pixels are the zero vector (22.0 % for 1314), valid ones have norm ~0.99
    zero = ~normal.any(axis=0)
    assert abs(zero.mean() - 0.220) < 0.005
    assert abs(np.median(np.sqrt((normal ** 2).sum(0))[~zero]) - 0.99) < 0.02
    # channel 0 is x (the PNG's R): decoded from the RGB file, not the BGR array
    rgb = cv2.imread(str(nyuv2_samples / "normal_mask/1314.png"))[:, :, ::-1].astype(np.float32)
    assert np.allclose(normal.transpose(1, 2, 0)[~zero], rgb[~zero] * 2 / 255 - 1, atol=1e-6)
    # depth: metres, filled (all > 0), range 1.60-6.52 for 1314
    assert depth.min() > 1.5 and 6.4 < depth.max() < 6.6


def test_train_mode_crops_with_valid_ranges(nyuv2_samples):
    ds = NYUv2(nyuv2_samples, "train", 321, 321)
    assert len(ds) == 3 and ds.train
    mean = IMG_MEAN_BGR.reshape(3, 1)
    for i in range(len(ds)):
        item = ds[(i, 7)]
        _check_ranges(item, (321, 321))
        seg, normal, depth, img = (item[k].numpy() for k in ("seg", "normal", "depth", "img"))
        pad = depth[0] == 0                  # real NYU depth is filled: zero depth = padding
        assert (seg[0][pad] == 255).all()
        assert not normal[:, pad].any()
        assert np.allclose(img[:, pad], -mean, atol=1e-4)
        assert (depth[0][~pad] > 0.7).all()
        assert item["name"] == ds.entries[i][0]


def test_loader_over_samples(nyuv2_samples, tmp_path):
    config = {"dataset": "nyuv2", "data_root": str(nyuv2_samples), "tasks": ["seg", "sn"], "num_classes": [40, 3],
              "data": {"crop_h": 64, "crop_w": 96, "batch_size": 2, "test_batch_size": 1, "num_workers": 0,
                       "mirror_normals": True}}
    loader = build_loader(config, "train", seed=0)
    batch = next(iter(loader))
    assert tuple(batch["img"].shape) == (2, 3, 64, 96) and tuple(batch["seg"].shape) == (2, 1, 64, 96)
    assert len(batch["name"]) == 2 and all(n.startswith("img/") for n in batch["name"])
    test_batch = next(iter(build_loader(config, "test")))
    assert tuple(test_batch["normal"].shape) == (1, 3, 480, 640)


def test_fortran_order_depth_is_read(nyuv2_samples):
    header = (nyuv2_samples / "depth/0061.npy").read_bytes()[:128]
    assert b"'fortran_order': True" in header
    item = NYUv2(nyuv2_samples, "train")[0]
    expected = np.load(nyuv2_samples / "depth/0061.npy")
    assert np.array_equal(item["depth"][0].numpy(), expected)
    assert json.loads((nyuv2_samples / "nyu_v2_3task.json").read_text())["train"][0][0] == item["name"]
