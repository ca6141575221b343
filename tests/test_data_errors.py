"""Bad data gives a one-line DataError that says what is wrong and where."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from dataloaders import CityScapes, DataError, NYUv2, Taskonomy, build_dataset, build_loader


@pytest.fixture()
def root(synthetic_root, tmp_path):
    copy = tmp_path / "root"
    shutil.copytree(synthetic_root, copy)
    return copy


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    return message


def test_missing_root_names_the_expected_path(tmp_path):
    missing = tmp_path / "nowhere"
    message = _raises("does not exist", NYUv2, missing, "test")
    assert str(missing) in message and "nyu_v2_3task.json" in message and "--data-root" in message
    _raises("cityscape.json", CityScapes, missing, "test")
    _raises("taskonomy.json", Taskonomy, missing, "test")


def test_missing_index_file(tmp_path):
    message = _raises("index file", NYUv2, tmp_path, "test")
    assert str(tmp_path / "nyu_v2_3task.json") in message and "not found" in message


def test_broken_index_file(root):
    (root / "nyu_v2_3task.json").write_text("{not json")
    _raises("cannot read index file", NYUv2, root, "train")
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": [["img/a.png", "seg/a.png"]]}))
    _raises(r"entry 0 of split 'train' must list at least 4", NYUv2, root, "train")


def test_unknown_split_lists_the_available_ones(root):
    message = _raises("unknown split 'val'", NYUv2, root, "val")
    assert "available: train, test" in message


def test_listed_file_missing_is_named(root):
    (root / "normal_mask" / "train_00003.png").unlink()
    (root / "depth" / "train_00005.npy").unlink()
    message = _raises("is missing", NYUv2, root, "train")
    assert str(root / "normal_mask" / "train_00003.png") in message and "(and 1 more)" in message
    # a lazily checked dataset names it when the sample is read
    ds = NYUv2(root, "train", check_files=False)
    _raises(r"missing: .*train_00003\.png", ds.__getitem__, 3)
    assert NYUv2(root, "test").tasks   # other splits are unaffected


def test_unreadable_files_are_named(root):
    (root / "img" / "train_00001.png").write_bytes(b"not a png at all")
    ds = NYUv2(root, "train")
    message = _raises("cannot read image", ds.__getitem__, 1)
    assert str(root / "img" / "train_00001.png") in message
    (root / "depth" / "train_00002.npy").write_bytes(b"garbage")
    message = _raises("cannot read array", ds.__getitem__, 2)
    assert "train_00002.npy" in message and "not a .npy file" in message
    np.save(root / "depth" / "train_00004.npy", np.zeros((2, 3, 4), np.float32))
    _raises("expected an HxW depth array", ds.__getitem__, 4)


def test_image_and_label_of_different_sizes(root):
    seg = cv2.imread(str(root / "seg" / "test_00000.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "seg" / "test_00000.png"), seg[:-2])
    message = _raises("seg is 46x64 but img is 48x64", NYUv2(root, "test").__getitem__, 0)
    assert "test_00000" in message


def test_labels_outside_the_class_range(root):
    ds = NYUv2(root, "test", num_classes=3)
    message = _raises(r"label \d+ is outside 0\.\.2 and is not the ignore value 255", ds.__getitem__, 0)
    assert "seg/test_00000.png" in message


def test_config_level_errors(root):
    cfg = {"dataset": "nyuv2", "data_root": None, "tasks": ["seg", "sn"], "num_classes": [40, 3],
           "data": {"crop_h": 8, "crop_w": 8, "batch_size": 2, "test_batch_size": 1, "num_workers": 0}}
    _raises("pass --data-root or set DISPARSE_DATA", build_dataset, cfg, "train")
    cfg["data_root"] = str(root)
    cfg["tasks"], cfg["num_classes"] = ["seg", "keypoint", "edge"], [40, 1, 1]
    assert build_dataset(cfg, "test").tasks[-1] == "edge"      # the synthetic root has keypoint/edge columns
    (root / "nyu_v2_3task.json").write_text(json.dumps(
        {"test": [e[:4] for e in json.loads((root / "nyu_v2_3task.json").read_text())["test"]]}))
    _raises("config also asks for keypoint, edge", build_dataset, cfg, "test")
    cfg["dataset"] = "kitti"
    _raises("unknown dataset 'kitti'", build_dataset, cfg, "test")
    cfg["dataset"] = "nyuv2"
    _raises("batch size must be positive", build_loader, {**cfg, "tasks": ["seg"], "num_classes": [40]}, "test",
            batch_size=0)
    _raises("give both crop_h and crop_w", NYUv2, root, "test", 8, None)
