"""Cityscapes in AdaShare's formatted `.npy` layout (docs/ORIGINAL.md §2.3).

Root layout: `cityscape.json` (no "s") maps split names to 5-tuples `(img, depth, label2, label7,
label19)` of `.npy` paths relative to the root. Formats: image HxWx3 RGB float in [0, 1] (a uint8
0..255 image is also accepted); depth HxW or HxWx1 float, values <= 3e-5 invalid (stored as 0; units
as distributed); labels HxW integer maps of the 2-, 7- and 19-class sets with -1 = ignore.

Items carry `img` (BGR, 0..255, mean-subtracted), `seg` (= label<num_class>, int64, ignore -1),
`depth`, and `label2`, `label7`, `label19` (int64). Padded label pixels in a train crop are -1, padded
depth 0. Test mode uses the stored size (256x512 for the AdaShare copy), no resize.
"""
from __future__ import annotations

import os

import numpy as np

from .transforms import MapSpec
from .base import DenseDataset, clean_depth, read_npy
from .errors import DataError

IGNORE = -1
LABEL_SETS = (2, 7, 19)


def _labels(array: np.ndarray, path, num_class: int) -> np.ndarray:
    """An HxW integer (or integral float) map of classes 0..num_class-1, negative = ignore; a one-line
    DataError naming the file for any other dtype or value (e.g. 255 used as the ignore value)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise DataError(f"{path}: expected an HxW label map, got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise DataError(f"{path}: expected an integer label map, got dtype {array.dtype}")
    if array.dtype.kind == "f":
        array = np.where(np.isfinite(array), np.rint(array), IGNORE)
    labels = array.astype(np.int64)
    labels[labels < 0] = IGNORE
    if labels.max(initial=IGNORE) >= num_class:
        raise DataError(f"{path}: label {int(labels.max())} is outside 0..{num_class - 1} of the {num_class}-class "
                        f"set (the ignore value is {IGNORE})")
    return labels


class CityScapes(DenseDataset):
    """Cityscapes split `split` of `root`; `num_class` (2, 7 or 19; -1 means 19) picks the `seg` label set."""

    name = "cityscapes"
    index_file = "cityscape.json"
    ignore_index = IGNORE
    columns = ("img", "depth", "label2", "label7", "label19")
    min_columns = 5
    specs = {
        "img": MapSpec("image", 0.0, np.float32),
        "seg": MapSpec("label", IGNORE, np.int64),
        "depth": MapSpec("label", 0.0, np.float32),
        "label2": MapSpec("label", IGNORE, np.int64),
        "label7": MapSpec("label", IGNORE, np.int64),
        "label19": MapSpec("label", IGNORE, np.int64),
    }
    tasks = ("seg", "depth")

    def __init__(self, root: str | os.PathLike, split: str, crop_h: int | None = None, crop_w: int | None = None,
                 *, mirror_normals: bool = True, num_class: int = 19, seed: int | None = None,
                 check_files: bool | None = None) -> None:
        num_class = 19 if num_class == -1 else int(num_class)
        if num_class not in LABEL_SETS:
            raise DataError(f"Cityscapes num_class must be 2, 7 or 19, got {num_class}")
        self.num_class = num_class
        # mirror_normals is accepted for a uniform signature; Cityscapes has no normals.
        super().__init__(root, split, crop_h, crop_w, mirror_normals=mirror_normals, seed=seed,
                         check_files=check_files)

    def load_maps(self, index: int) -> dict[str, np.ndarray]:
        entry = self.entries[index]
        img_path, depth_path, *label_paths = (self.path(p) for p in entry[:5])
        rgb = read_npy(img_path)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DataError(f"{img_path}: expected an HxWx3 RGB image array, got shape {rgb.shape}")
        bgr = rgb[:, :, ::-1].astype(np.float32)
        if rgb.dtype != np.uint8:          # AdaShare's copy stores RGB in [0, 1]
            bgr *= 255.0
        depth = read_npy(depth_path)
        if depth.ndim not in (2, 3) or (depth.ndim == 3 and depth.shape[2] != 1):
            raise DataError(f"{depth_path}: expected an HxW or HxWx1 depth array, got shape {depth.shape}")
        maps = {"img": bgr, "depth": clean_depth(depth)}
        for n, path in zip(LABEL_SETS, label_paths):
            maps[f"label{n}"] = _labels(read_npy(path), path, n)
        maps["seg"] = maps[f"label{self.num_class}"]
        return maps
