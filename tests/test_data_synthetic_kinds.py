"""The two synthetic scene kinds: `shared` unchanged byte for byte, `disentangled` with independent labels
and one readable image cue per task, the config switch, and roots that never mix the kinds."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import stats

import dataloaders.synthetic as synthetic
from dataloaders import DataError, NYUv2, build_dataset, ensure_synthetic, generate_synthetic
from dataloaders.synthetic_disentangled import LIGHT
from engine.config import CONFIG_DIR, load_config

N_IMAGES, SIZE = 40, (32, 40)
DISENTANGLED_CONFIG = CONFIG_DIR / "synthetic_disentangled.yaml"


def _scene_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes, except the meta file."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != synthetic.META_FILE:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _load(root: Path, i: int) -> dict[str, np.ndarray]:
    png = cv2.imread(str(root / f"normal_mask/train_{i:05d}.png"))[:, :, ::-1].astype(np.float64)
    return {"bgr": cv2.imread(str(root / f"img/train_{i:05d}.png")),
            "seg": cv2.imread(str(root / f"seg/train_{i:05d}.png"), cv2.IMREAD_GRAYSCALE).astype(np.int64),
            "depth": np.load(root / f"depth/train_{i:05d}.npy").astype(np.float64),
            "normal": png * 2 / 255 - 1, "normal_valid": ~(png == 255).all(-1)}


def _correlation_ratio(labels: np.ndarray, values: np.ndarray) -> float:
    """eta^2: the share of the variance of `values` explained by the class `labels` (0 = independent)."""
    mean = values.mean()
    between = sum((labels == c).mean() * (values[labels == c].mean() - mean) ** 2 for c in np.unique(labels))
    return float(between / values.var())


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kinds")
    return {kind: generate_synthetic(base / kind, n_train=N_IMAGES, n_test=0, size=SIZE, seed=3, scene_kind=kind)
            for kind in synthetic.SCENE_KINDS}


def test_shared_scenes_are_byte_identical_to_before_scene_kinds(tmp_path):
    # digest of the files written by the generator before the disentangled kind existed (commit 49f0ee4)
    root = generate_synthetic(tmp_path / "s", n_train=2, n_test=1, size=(24, 32), seed=9)
    assert _scene_digest(root) == "76644a59a198c9263d0389a6693f685b4cddffed04332a6085136df8ca6476e0"
    assert json.loads((root / synthetic.META_FILE).read_text())["scene_kind"] == "shared"


def test_disentangled_labels_are_independent_of_each_other(kinds):
    """Pooled over 40 images, the seg class explains (nearly) none of the depth or normal variance in the
    disentangled kind, but a large share of it in the shared rooms (the floor is far down and faces up)."""
    ratios = {}
    for kind, root in kinds.items():
        seg, depth, normal = [], [], []
        for i in range(N_IMAGES):
            maps = _load(root, i)
            valid = maps["normal_valid"] & (maps["seg"] != 255)
            seg.append(maps["seg"][valid])
            depth.append(maps["depth"][valid])
            normal.append(maps["normal"][valid])
        seg, depth, normal = map(np.concatenate, (seg, depth, normal))
        ratios[kind] = {"depth": _correlation_ratio(seg, depth), "up": _correlation_ratio(seg, normal[:, 2]),
                        "depth~up": abs(np.corrcoef(depth, normal[:, 2])[0, 1])}
    assert ratios["shared"]["depth"] > 0.25 and ratios["shared"]["up"] > 0.6, ratios
    assert ratios["disentangled"]["depth"] < 0.08 and ratios["disentangled"]["up"] < 0.08, ratios
    assert ratios["disentangled"]["depth~up"] < 0.1 < ratios["shared"]["depth~up"], ratios


def test_each_disentangled_task_is_readable_from_its_own_cue(kinds):
    root = kinds["disentangled"]
    hue_hits, region_depth, region_contrast, shading_r = [], [], [], []
    for i in range(N_IMAGES):
        maps = _load(root, i)
        # seg <- colour: the nearest class hue (class c has hue c / 8) names the label
        hue = cv2.cvtColor(maps["bgr"], cv2.COLOR_BGR2HSV_FULL)[..., 0].astype(np.float64) / 256
        hue_hits.append(np.rint(hue * 8).astype(np.int64) % 8 == maps["seg"])
        # depth <- blur: relative fine-scale contrast falls with depth
        gray = maps["bgr"].astype(np.float64).mean(-1)
        smooth = cv2.GaussianBlur(gray, (0, 0), 2.0)
        contrast = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 1.0)) / np.maximum(smooth, 1.0)
        for z in np.unique(maps["depth"]):
            inside = maps["depth"] == z
            if inside.sum() >= 40:
                region_depth.append(z)
                region_contrast.append(contrast[inside].mean())
        # normals <- shading: within one colour cell, smoothed brightness follows n . light
        lit = maps["normal"] @ LIGHT
        for c in np.unique(maps["seg"]):
            cell = maps["seg"] == c
            if cell.sum() >= 100:
                shading_r.append(np.corrcoef(smooth[cell], lit[cell])[0, 1])
    assert np.concatenate([h.ravel() for h in hue_hits]).mean() > 0.95
    rho = stats.spearmanr(region_depth, region_contrast)[0]
    assert len(region_depth) > 60 and rho < -0.8, rho
    assert np.median(shading_r) > 0.8, np.median(shading_r)


def test_disentangled_maps_through_the_loader_and_config(tmp_path):
    config = load_config(config_file=DISENTANGLED_CONFIG,
                         overrides=["synthetic.n_train=3", "synthetic.n_test=1", "synthetic.size=[32,40]",
                                    "data.image_shape=[32,40]", "data.crop_h=16", "data.crop_w=16"],
                         data_root=str(tmp_path / "dis"))
    shared = load_config(dataset="synthetic")
    assert config["dataset"] == "synthetic" and config["synthetic"]["scene_kind"] == "disentangled"
    assert load_config(config_file=DISENTANGLED_CONFIG)["data_root"] != shared["data_root"]
    build_dataset(config, "train")                                   # generated on first use
    item = NYUv2(tmp_path / "dis", "test", num_classes=8)[0]
    normal, seg, depth = item["normal"].numpy(), item["seg"].numpy(), item["depth"].numpy()
    assert np.abs(np.sqrt((normal ** 2).sum(0)) - 1).max() < 0.01      # every pixel valid, unit length
    assert (normal[1] < 0).all()                                      # facing the camera (y forward)
    assert seg.max() < 8 and (depth >= 1.0).all() and depth.max() <= 6.0
    assert json.loads((tmp_path / "dis" / synthetic.META_FILE).read_text())["scene_kind"] == "disentangled"


def test_a_root_holds_one_kind(tmp_path):
    section = {"n_train": 2, "n_test": 1, "size": [24, 32], "seed": 1}
    config = {"dataset": "synthetic", "data_root": str(tmp_path / "root"), "tasks": ["seg", "sn", "depth"],
              "num_classes": [8, 3, 1], "synthetic": dict(section, scene_kind="shared")}
    ensure_synthetic(config, progress=False)
    config["synthetic"]["scene_kind"] = "disentangled"
    with pytest.raises(DataError, match=r"scene_kind='shared' \(config: 'disentangled'\)"):
        ensure_synthetic(config, progress=False)
    # a root written before scene kinds existed (no scene_kind in its meta) is a shared one
    meta_path = tmp_path / "root" / synthetic.META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["scene_kind"]
    meta_path.write_text(json.dumps(meta))
    config["synthetic"]["scene_kind"] = "shared"
    assert ensure_synthetic(config, progress=False) == tmp_path / "root"
    config["synthetic"]["scene_kind"] = "cartoon"
    with pytest.raises(DataError, match="unknown scene kind 'cartoon'"):
        ensure_synthetic(config, progress=False)


def test_cli_scene_kind_is_deterministic(tmp_path):
    args = ["--n-train", "2", "--n-test", "1", "--size", "24x32", "--seed", "5", "--quiet",
            "--scene-kind", "disentangled"]
    assert synthetic.main(["--out", str(tmp_path / "a"), *args]) == 0
    assert synthetic.main(["--out", str(tmp_path / "b"), *args]) == 0
    assert _scene_digest(tmp_path / "a") == _scene_digest(tmp_path / "b")
    shared = generate_synthetic(tmp_path / "c", n_train=2, n_test=1, size=(24, 32), seed=5)
    assert _scene_digest(shared) != _scene_digest(tmp_path / "a")
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "d"), "--scene-kind", "cartoon"])
