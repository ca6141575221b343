"""Golden fixtures from the original code (../shared/golden, or $DISPARSE_GOLDEN_DIR): loading, on-disk
roots written back from a fixture's test-mode targets, a stand-in net and the configs the golden tests use.

Nothing here knows a fixture's numbers: tasks, class counts, image shape, N, λ and prior factors are read
from the file, so any fixture set of the same layout works (the golden README describes the layout).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import pytest
import torch
from torch import nn

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_ENV = "DISPARSE_GOLDEN_DIR"
TARGET_KEYS = {"seg": "target_seg", "sn": "target_normal", "depth": "target_depth", "keypoint": "target_keypoint",
               "edge": "target_edge"}
# The original's loader semantics, as config overrides (README "Differences from the original code").
ORIGINAL_TASKONOMY = ["taskonomy.unlabelled=class0", "taskonomy.normals_where_depth_invalid=keep",
                      "taskonomy.rgb_interpolation=nearest"]
KEYPOINT_CLIP, EDGE_CLIP, DEPTH_LOG_BASE = 0.005, 0.08, math.log(2.0 ** 16)


def golden_dir() -> Path:
    """$DISPARSE_GOLDEN_DIR, else ../shared/golden beside the repository."""
    env = os.environ.get(GOLDEN_ENV)
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "golden"


def load_golden(name: str) -> dict:
    """A fixture file (weights_only); skips the test with a reason when the folder or file is absent."""
    path = golden_dir() / name
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not found (set {GOLDEN_ENV} or provide ../shared/golden)")
    return torch.load(path, weights_only=True)


def n_images(fx: Mapping) -> int:
    return int(fx[f"pred_{fx['tasks'][0]}"].shape[0])


def predictions(fx: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    return {t: fx[f"{prefix}pred_{t}"] for t in fx["tasks"]}


class StoredPredictions(nn.Module):
    """Stand-in net: returns the fixture's predictions in loader order (as the golden run did)."""

    def __init__(self, preds: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.preds = dict(preds)
        self.offset = 0

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        b = img.shape[0]
        out = {t: p[self.offset:self.offset + b] for t, p in self.preds.items()}
        self.offset += b
        return out


# ----------------------------------------------------------------------------- roots in the original layouts

def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def write_nyuv2_root(fx: Mapping, root: Path) -> Path:
    """The NYUv2 layout (img/seg/normal_mask PNGs, depth npy, nyu_v2_3task.json) holding the fixture's targets.

    The fixture's normals are the raw B, G, R values OpenCV read, so writing them with OpenCV gives back the
    same file content; the image is unused (the stand-in net ignores it).
    """
    entries = []
    for i in range(fx["target_seg"].shape[0]):
        h, w = fx["target_seg"].shape[-2:]
        rel = [f"img/{i:04d}.png", f"seg/{i:04d}.png", f"normal_mask/{i:04d}.png", f"depth/{i:04d}.npy"]
        _png(root / rel[0], np.zeros((h, w, 3), np.uint8))
        _png(root / rel[1], fx["target_seg"][i, 0].numpy().astype(np.uint8))
        _png(root / rel[2], fx["target_normal"][i].permute(1, 2, 0).numpy().astype(np.uint8))
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / rel[3], fx["target_depth"][i, 0].numpy().astype(np.float32))
        entries.append(rel)
    (root / "nyu_v2_3task.json").write_text(json.dumps({"test": entries}))
    return root


def write_cityscapes_root(fx: Mapping, root: Path) -> Path:
    """AdaShare's formatted Cityscapes (.npy per map, cityscape.json); every label set large enough holds the
    fixture's seg target, so whichever `num_classes` fits it gives it back; smaller sets hold it modulo their
    size (the loader checks every set's range)."""
    entries = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(fx["target_seg"].shape[0]):
        h, w = fx["target_seg"].shape[-2:]
        rel = [f"{i}_{k}.npy" for k in ("img", "depth", "label2", "label7", "label19")]
        np.save(root / rel[0], np.zeros((h, w, 3), np.float32))
        np.save(root / rel[1], fx["target_depth"][i, 0].numpy()[..., None].astype(np.float32))
        seg = fx["target_seg"][i, 0].numpy().astype(np.int32)
        for n, name in zip((2, 7, 19), rel[2:]):
            np.save(root / name, seg if seg.max() < n else np.where(seg < 0, -1, seg % n).astype(np.int32))
        entries.append(rel)
    (root / "cityscape.json").write_text(json.dumps({"test": entries}))
    return root


def taskonomy_raw(fx: Mapping, i: int) -> dict[str, np.ndarray]:
    """The raw Tiny-Taskonomy files of image i that the original loader decodes into the fixture's targets
    (the inverse of its decoding; the loader test checks that ours decodes them back)."""
    seg, mask = fx["target_seg"][i, 0].numpy(), fx["target_seg_mask"][i, 0].numpy()
    raw_seg = np.where((seg == 0) & (mask == 0), 0, seg + 1).astype(np.uint8)        # unlabelled -> raw 0
    normal = np.rint((fx["target_normal"][i].permute(1, 2, 0).numpy().astype(np.float64) + 1) * 127.5)
    depth = np.rint(np.expm1(fx["target_depth"][i, 0].numpy().astype(np.float64) * DEPTH_LOG_BASE))

    def unit16(x: torch.Tensor, clip: float) -> np.ndarray:
        return np.rint((x.numpy().astype(np.float64) + 1) / 2 * clip * 65536).astype(np.uint16)

    return {"rgb": np.zeros((*seg.shape, 3), np.uint8), "segment_semantic": raw_seg,
            "normal": normal.astype(np.uint8)[:, :, ::-1], "depth_zbuffer": depth.astype(np.uint16),
            "keypoints2d": unit16(fx["target_keypoint"][i, 0], KEYPOINT_CLIP),
            "edge_texture": unit16(fx["target_edge"][i, 0], EDGE_CLIP)}


def write_taskonomy_root(fx: Mapping, root: Path) -> Path:
    """Tiny-Taskonomy in DiSparse's layout: the index lists `<building>/<domain>/<file>`, the files live at
    `<domain>/taskonomy/<building>/<file>` (the original's path rewrite), plus semseg_prior_factor.npy."""
    entries = []
    for i in range(fx["target_seg"].shape[0]):
        raw = taskonomy_raw(fx, i)
        rel = []
        for domain, array in raw.items():
            _png(root / domain / "taskonomy" / "bldg" / f"point_{i}_{domain}.png", array)
            rel.append(f"bldg/{domain}/point_{i}_{domain}.png")
        entries.append(rel)
    (root / "taskonomy.json").write_text(json.dumps({"test": entries}))
    np.save(root / "semseg_prior_factor.npy", fx["semseg_prior_factor"].numpy())
    return root


ROOT_WRITERS = {"nyuv2": write_nyuv2_root, "cityscapes": write_cityscapes_root, "taskonomy": write_taskonomy_root}


def golden_config(fx: Mapping, root: Path, *extra: str, tasks: list[str] | None = None,
                  lambdas: list[float] | None = None) -> dict:
    """Our config for the fixture's dataset with the fixture's tasks, classes, λ and image shape, the
    original's metric definitions and (Taskonomy) its loader semantics."""
    from engine.config import load_config
    tasks = list(tasks or fx["tasks"])
    classes = list(fx["num_classes"]) + [1] * (len(tasks) - len(fx["tasks"]))
    weights = [float(x) for x in (lambdas or fx.get("lambdas") or [1.0] * len(tasks))]
    h, w = (int(v) for v in fx["image_shape"])
    sets = [f"tasks=[{','.join(tasks)}]", f"num_classes={classes}", f"loss_weights={weights}",
            f"data.image_shape=[{h},{w}]", "data.num_workers=0", "eval.metrics_compat=adashare", "model.width_mult=0.0625"]
    if fx["dataset"] == "taskonomy":
        sets += ORIGINAL_TASKONOMY
    return load_config(fx["dataset"], overrides=[*sets, *extra], data_root=str(root))


def loaded_test_batch(fx: Mapping, root: Path, config: Mapping) -> tuple[dict, Any]:
    """All N test items of the written root as one batch through our loader, and the dataset object."""
    from dataloaders import build_loader
    loader = build_loader(config, "test", batch_size=n_images(fx), shuffle=False, train=False)
    return next(iter(loader)), loader.dataset


def golden_batch(file: str, tmp_path: Path, *extra: str, **config_kwargs: Any) -> tuple[dict, Path, dict, dict, Any]:
    """(fixture, root written from it, our config for it, the loaded test batch of all N items, dataset)."""
    fx = load_golden(file)
    root = ROOT_WRITERS[fx["dataset"]](fx, tmp_path / fx["dataset"])
    config = golden_config(fx, root, *extra, **config_kwargs)
    batch, data = loaded_test_batch(fx, root, config)
    return fx, root, config, batch, data


def evaluate_golden(fx: Mapping, tmp_path: Path, batch_size: int, compat: str = "adashare",
                    normals_space: str | None = None) -> dict:
    """The fixture's predictions through `engine.evaluate.evaluate` (eval_pruned_net.py's path) over our loader
    of the written root, in batches of `batch_size`; normals read as an original net's unless told otherwise."""
    from dataloaders import build_loader
    from engine.evaluate import evaluate
    from fileio.normals import original_normals_space

    root = ROOT_WRITERS[fx["dataset"]](fx, tmp_path / fx["dataset"])
    config = golden_config(fx, root, f"data.test_batch_size={batch_size}")
    loader = build_loader(config, "test", shuffle=False, train=False)
    model = StoredPredictions(predictions(fx))
    metrics = evaluate(model, loader, config, loader.dataset, torch.device("cpu"), compat=compat, progress=False,
                       normals_space=normals_space or original_normals_space(config["dataset"], config["tasks"]))
    assert model.offset == n_images(fx)                      # every prediction was consumed, in order
    return metrics
