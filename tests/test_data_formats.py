"""Cityscapes (.npy) and Tiny-Taskonomy (PNG) loaders on small hand-made roots in their documented formats
(docs/ORIGINAL.md §2.3, §2.4): decoding, label sets, invalid values, path rewrite, class weights."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from dataloaders import IMG_MEAN_BGR, CityScapes, DataError, Taskonomy, build_dataset

H, W = 16, 32


@pytest.fixture(scope="module")
def city_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(2):
        rgb = rng.uniform(0, 1, (H, W, 3))
        depth = rng.uniform(0.01, 0.2, (H, W, 1)).astype(np.float32)
        depth[0, :4] = 0.0
        labels = {n: rng.integers(-1, n, (H, W)).astype(np.int64) for n in (2, 7, 19)}
        names = [f"img_{i}.npy", f"depth_{i}.npy", f"l2_{i}.npy", f"l7_{i}.npy", f"l19_{i}.npy"]
        for name, array in zip(names, [rgb, depth, labels[2], labels[7], labels[19]]):
            np.save(root / name, array)
        entries.append(names)
    (root / "cityscape.json").write_text(json.dumps({"train": entries, "test": entries}))
    return root


def test_cityscapes_decoding_and_label_sets(city_root):
    ds = CityScapes(city_root, "test")
    assert ds.tasks == ("seg", "depth") and ds.ignore_index == -1 and ds.class_weights is None
    item = ds[0]
    rgb = np.load(city_root / "img_0.npy")
    expected = (rgb[:, :, ::-1] * 255).astype(np.float32) - IMG_MEAN_BGR
    assert np.allclose(item["img"].numpy().transpose(1, 2, 0), expected, atol=1e-3)
    assert item["seg"].dtype == torch.int64 and tuple(item["seg"].shape) == (1, H, W)
    assert torch.equal(item["seg"], item["label19"])
    assert torch.equal(item["label7"][0], torch.from_numpy(np.load(city_root / "l7_0.npy")))
    assert item["depth"].dtype == torch.float32 and tuple(item["depth"].shape) == (1, H, W)
    assert (item["depth"][0, 0, :4] == 0).all() and (item["depth"][0, 1:] > 0).all()
    assert torch.equal(CityScapes(city_root, "test", num_class=7)[0]["seg"], item["label7"])
    with pytest.raises(DataError, match="2, 7 or 19"):
        CityScapes(city_root, "test", num_class=5)


def test_cityscapes_train_crop_pads_labels_with_minus_one(city_root):
    ds = CityScapes(city_root, "train", 40, 48)          # bigger than any scaled 16x32 frame below 1.25x
    item = ds[(0, 1)]
    pad = (item["img"] == torch.from_numpy(-IMG_MEAN_BGR).view(3, 1, 1)).all(0)
    assert pad.any()
    for key in ("seg", "label2", "label7", "label19"):
        assert (item[key][0][pad] == -1).all() and item[key].dtype == torch.int64
    assert (item["depth"][0][pad] == 0).all()
    cfg = {"dataset": "cityscapes", "data_root": str(city_root), "tasks": ["seg", "depth"], "num_classes": [7, 1],
           "data": {"crop_h": 8, "crop_w": 8}}
    assert build_dataset(cfg, "train").num_class == 7


def _png16(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture(scope="module")
def taskonomy_root(tmp_path_factory):
    """Files in the omnidata layout (<domain>/taskonomy/<building>/<file>), index in AdaShare's
    (<building>/<domain>/<file>): the DiSparse path rewrite is needed and auto-detected."""
    root = tmp_path_factory.mktemp("taskonomy")
    rng = np.random.default_rng(1)
    entries = []
    domains = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
    for i in range(2):
        maps = {
            "rgb": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "segment_semantic": np.kron(rng.integers(0, 18, (8, 8)), np.ones((8, 8), int)).astype(np.uint8),
            "normal": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "depth_zbuffer": rng.integers(0, 65535, (64, 64), dtype=np.uint16),
            "keypoints2d": rng.integers(0, 1000, (64, 64), dtype=np.uint16),
            "edge_texture": rng.integers(0, 8000, (64, 64), dtype=np.uint16),
        }
        maps["depth_zbuffer"][:8, :8] = 65535
        entry = []
        for domain in domains:
            name = f"point_{i}_{domain}.png"
            _png16(root / domain / "taskonomy" / "bldg" / name, maps[domain])
            entry.append(f"bldg/{domain}/{name}")
        entries.append(entry)
    (root / "taskonomy.json").write_text(json.dumps({"train": entries, "test": entries, "test_small": entries[:1]}))
    np.save(root / "semseg_prior_factor.npy", np.linspace(0.5, 2.0, 18))
    return root


def test_taskonomy_decoding(taskonomy_root):
    ds = Taskonomy(taskonomy_root, "test", image_size=(32, 32))
    assert ds.path_rewrite is True and ds.tasks == ("seg", "sn", "depth", "keypoint", "edge")
    assert ds.class_weights.dtype == torch.float32 and ds.class_weights.shape == (18,)
    item = ds[0]
    for key, channels in (("img", 3), ("seg", 1), ("normal", 3), ("depth", 1), ("keypoint", 1), ("edge", 1)):
        assert tuple(item[key].shape) == (channels, 32, 32)
    assert item["seg"].dtype == torch.int64
    base = taskonomy_root / "{}" / "taskonomy" / "bldg" / "point_0_{}.png"
    raw_seg = cv2.imread(str(base).format("segment_semantic", "segment_semantic"), cv2.IMREAD_UNCHANGED)[::2, ::2]
    expected_seg = np.where(raw_seg == 0, 255, raw_seg.astype(np.int64) - 1)
    assert np.array_equal(item["seg"][0].numpy(), expected_seg)             # unlabelled -> ignore, 1..17 -> 0..16
    raw_depth = cv2.imread(str(base).format("depth_zbuffer", "depth_zbuffer"), cv2.IMREAD_UNCHANGED)[1::2, 1::2]
    valid = raw_depth < 64500
    depth = item["depth"][0].numpy()
    assert np.allclose(depth[valid], np.log1p(raw_depth[valid].astype(np.float64)) / math.log(65536), atol=1e-6)
    assert (depth[:4, :4] == 0).all() and (item["normal"][:, :4, :4] == 0).all()   # invalid depth -> no normal
    raw_key = cv2.imread(str(base).format("keypoints2d", "keypoints2d"), cv2.IMREAD_UNCHANGED)[1::2, 1::2]
    key = np.clip(raw_key / 65536, 0, 0.005) / 0.005 * 2 - 1
    assert np.allclose(item["keypoint"][0].numpy(), key, atol=1e-5)
    assert item["edge"].min() >= -1 and item["edge"].max() <= 1
    compat = Taskonomy(taskonomy_root, "test", image_size=(32, 32), unlabelled_to_class0=True)[0]["seg"][0].numpy()
    assert np.array_equal(compat, np.maximum(expected_seg, 0) * (expected_seg != 255))


def test_taskonomy_train_padding_and_normal_flip(taskonomy_root):
    ds = Taskonomy(taskonomy_root, "train", 48, 48, image_size=(32, 32))
    item = ds[(1, 0)]
    pad = (item["img"] == torch.from_numpy(-IMG_MEAN_BGR).view(3, 1, 1)).all(0)
    assert pad.any()
    assert (item["seg"][0][pad] == 255).all() and (item["keypoint"][0][pad] == 255).all()
    assert (item["edge"][0][pad] == 255).all() and (item["depth"][0][pad] == 0).all()
    assert (item["normal"][:, pad] == 0).all()
    assert len(Taskonomy(taskonomy_root, "test_small")) == 1
    assert Taskonomy.specs["normal"].normal and ds.mirror_normals      # n_x negated on mirror, as the original


def test_taskonomy_needs_the_prior_file(taskonomy_root, tmp_path):
    import shutil
    root = tmp_path / "t"
    shutil.copytree(taskonomy_root, root)
    (root / "semseg_prior_factor.npy").unlink()
    with pytest.raises(DataError, match="semseg_prior_factor.npy"):
        Taskonomy(root, "test")
    np.save(root / "semseg_prior_factor.npy", np.ones(5))
    with pytest.raises(DataError, match="at least 17"):
        Taskonomy(root, "test")
    np.save(root / "semseg_prior_factor.npy", np.ones(17))
    with pytest.raises(DataError, match=r"missing: .*bldg/rgb/point_0_rgb\.png"):
        Taskonomy(root, "test", path_rewrite=False)
