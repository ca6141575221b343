"""The synthetic generator: NYUv2 round trip, geometric consistency, byte determinism, CLI, safe generation."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dataloaders.synthetic as synthetic
from dataloaders import DataError, NYUv2, build_dataset, ensure_synthetic, generate_synthetic

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _config(root, **synth):
    section = {"n_train": 3, "n_test": 2, "size": [32, 40], "seed": 4}
    section.update(synth)
    return {"dataset": "synthetic", "data_root": str(root), "tasks": ["seg", "sn", "depth"], "num_classes": [8, 3, 1],
            "data": {"crop_h": 16, "crop_w": 16, "image_shape": [32, 40], "batch_size": 2, "test_batch_size": 2,
                     "num_workers": 0, "mirror_normals": True}, "synthetic": section}


def test_round_trip_through_the_nyuv2_loader(synthetic_root):
    meta = json.loads((synthetic_root / "synthetic_meta.json").read_text())
    assert meta["n_train"] == 8 and meta["n_test"] == 4 and meta["size"] == [48, 64] and meta["num_classes"] == 8
    for split, n in (("train", 8), ("test", 4)):
        ds = NYUv2(synthetic_root, split, num_classes=8)
        assert len(ds) == n and ds.tasks == ("seg", "sn", "depth", "keypoint", "edge")
        labels = set()
        for i in range(n):
            item = ds[i]
            assert item["name"] == f"img/{split}_{i:05d}.png"
            seg, normal, depth = item["seg"].numpy(), item["normal"].numpy(), item["depth"].numpy()
            assert item["img"].shape == (3, 48, 64) and seg.dtype == np.int64 and seg.shape == (1, 48, 64)
            labels |= set(np.unique(seg).tolist())
            norms = np.sqrt((normal ** 2).sum(0))
            valid = normal.any(axis=0)
            assert 0.5 < valid.mean() < 1.0                        # invalid only along surface boundaries
            assert np.abs(norms[valid] - 1).max() < 0.01            # 8-bit quantised unit vectors
            assert (depth > 0.05).all() and depth.max() < 12        # metric, all valid inside a room
            for key in ("keypoint", "edge"):
                m = item[key].numpy()
                assert m.shape == (1, 48, 64) and m.min() >= -1 and m.max() <= 1
                assert (m > 0).any() and (m == -1).mean() > 0.5     # sparse structures on a -1 background
            assert 0 < (seg == 255).mean() < 0.2
        assert labels <= set(range(8)) | {255} and {0, 1} <= labels
    # seg ids match the meta's class list: floors face up (z ~ +1 in the NYU camera axes)
    item = NYUv2(synthetic_root, "train", num_classes=8)[0]
    floor = (item["seg"][0] == 0) & (item["normal"] != 0).any(0)
    assert item["normal"][2][floor].median() > 0.8


def _angles_from_depth(depth, normal, k):
    """Angle (deg) between stored normals and normals of the back-projected depth, on interior pixels."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([(u - k["cx"]) / k["fx"] * depth, (v - k["cy"]) / k["fy"] * depth, depth], -1)   # OpenCV axes
    du = pts[1:-1, 2:] - pts[1:-1, :-2]
    dv = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    flip = (n * pts[1:-1, 1:-1]).sum(-1) > 0                                 # face the camera
    n[flip] *= -1
    n_nyu = np.stack([n[..., 0], n[..., 2], -n[..., 1]], -1)                # x right, y forward, z up
    valid = normal.any(-1)
    interior = valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1]
    stored = normal[1:-1, 1:-1] / np.linalg.norm(normal[1:-1, 1:-1], axis=-1, keepdims=True).clip(1e-9)
    cos = (n_nyu * stored).sum(-1).clip(-1, 1)
    return np.degrees(np.arccos(cos))[interior]


def test_normals_agree_with_the_depth_gradient(synthetic_root):
    meta = json.loads((synthetic_root / "synthetic_meta.json").read_text())
    k = meta["intrinsics"]
    angles = []
    for i in range(8):
        depth = np.load(synthetic_root / f"depth/train_{i:05d}.npy")
        png = cv2.imread(str(synthetic_root / f"normal_mask/train_{i:05d}.png"))[:, :, ::-1].astype(np.float64)
        normal = np.where((png == 255).all(-1, keepdims=True), 0.0, png * 2 / 255 - 1)
        angles.append(_angles_from_depth(depth.astype(np.float64), normal, k))
    angles = np.concatenate(angles)
    assert angles.size > 8 * 48 * 64 * 0.4
    assert np.median(angles) < 1.0, np.median(angles)
    assert np.percentile(angles, 90) < 3.0, np.percentile(angles, 90)


def test_same_seed_same_bytes(tmp_path):
    a = generate_synthetic(tmp_path / "a", n_train=2, n_test=1, size=(24, 32), seed=9)
    b = generate_synthetic(tmp_path / "b", n_train=2, n_test=1, size=(24, 32), seed=9)
    c = generate_synthetic(tmp_path / "c", n_train=2, n_test=1, size=(24, 32), seed=10)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db and len(da) == 3 * 6 + 2
    assert da["img/train_00000.png"] != dc["img/train_00000.png"]
    # a train image does not depend on the number of test images
    d = generate_synthetic(tmp_path / "d", n_train=2, n_test=3, size=(24, 32), seed=9)
    assert _digest(d)["depth/train_00001.npy"] == da["depth/train_00001.npy"]


def test_up_to_forty_classes(tmp_path):
    root = generate_synthetic(tmp_path / "c40", n_train=6, n_test=0, size=(32, 40), seed=1, num_classes=40)
    ds = NYUv2(root, "train", num_classes=40)
    labels = set()
    for i in range(len(ds)):
        labels |= set(np.unique(ds[i]["seg"].numpy()).tolist())
    assert max(labels - {255}) < 40 and len(labels - {0, 1, 2, 255}) >= 4
    with pytest.raises(DataError, match="num_classes"):
        generate_synthetic(tmp_path / "c41", n_train=1, n_test=0, size=(32, 40), num_classes=41)


def test_ensure_synthetic_generates_once_and_checks_settings(tmp_path):
    root = tmp_path / "data" / "synthetic"
    cfg = _config(root)
    ds = build_dataset(cfg, "train")                         # generates on first use
    assert len(ds) == 3 and ds.name == "synthetic" and ds.crop == (16, 16)
    stamp = (root / "synthetic_meta.json").stat().st_mtime_ns
    assert ensure_synthetic(cfg) == root and (root / "synthetic_meta.json").stat().st_mtime_ns == stamp
    assert not [p for p in root.parent.iterdir() if p.name != "synthetic"]      # no temporary folder left
    with pytest.raises(DataError, match=r"n_train=3 \(config: 5\)"):
        ensure_synthetic(_config(root, n_train=5))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(DataError, match="holds no dataset"):
        ensure_synthetic(_config(tmp_path / "junk"))
    cfg["data_root"] = None
    with pytest.raises(DataError, match="--data-root or set DISPARSE_DATA"):
        build_dataset(cfg, "train")


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real = synthetic.render_scene
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", failing)
    root = tmp_path / "syn"
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(_config(root), progress=False)
    assert list(tmp_path.iterdir()) == []                     # neither the root nor a partial folder
    monkeypatch.setattr(synthetic, "render_scene", real)
    ensure_synthetic(_config(root), progress=False)
    assert len(NYUv2(root, "test", num_classes=8)) == 2


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "dataloaders.synthetic", "--out", str(out), "--n-train", "2", "--n-test", "1",
           "--size", "24x32", "--seed", "9", "--quiet"]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 images" in done.stdout and "Warning" not in done.stderr
    assert _digest(out) == _digest(generate_synthetic(tmp_path / "api", n_train=2, n_test=1, size=(24, 32), seed=9))
    assert synthetic.main(["--out", str(out), "--n-train", "1", "--n-test", "0", "--quiet"]) == 2   # not empty
    assert synthetic.main(["--out", str(out), "--n-train", "1", "--n-test", "1", "--size", "24x32", "--quiet",
                           "--force"]) == 0
    assert len(json.loads((out / "nyu_v2_3task.json").read_text())["train"]) == 1
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(out), "--size", "big"])
