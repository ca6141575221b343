"""NYUv2 in the AdaShare on-disk layout (docs/ORIGINAL.md §2.2); also reads the synthetic scenes.

Root layout: `nyu_v2_3task.json` maps split names (`train`, `test`, ...) to entries
`[img, seg, normal, depth]` of paths relative to the root: `img/<id>.png` (8-bit RGB), `seg/<id>.png`
(8- or 16-bit grayscale, read unchanged, classes 0..C-1, 255 = unlabelled; anything else is refused), `normal_mask/<id>.png` (8-bit RGB,
v = (n + 1) * 255 / 2, (255, 255, 255) = invalid), `depth/<id>.npy` (float32 metres, Fortran order is
fine). Entries may carry two more columns, `keypoint` and `edge` (8-bit grayscale, v -> 2v/255 - 1;
the synthetic generator writes them); when every entry of the split has them, the dataset also
provides the `keypoint` and `edge` tasks.

Differences from the original loader (all deliberate, see docs/CONVENTIONS.md): `seg` is int64 (not
uint8), `normal` is decoded to [-1, 1] with invalid pixels as the zero vector (not raw 0..255), depth is
float32 in both modes, the mirror negates n_x unless `mirror_normals=False`, and test images of any
size work (the original tied the mean array to 480x640).
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from .base import (DenseDataset, clean_depth, decode_normal_png, decode_unit_png, dense_specs, read_image, read_label_png,
                   read_npy)
from .errors import DataError

IGNORE = 255


class NYUv2(DenseDataset):
    """NYUv2 split `split` of `root`; train augmentation iff `crop_h`, `crop_w` are given.

    num_classes: labels must lie in 0..num_classes-1 or be 255 (checked per sample, one-line error).
    mirror_normals: negate n_x on mirror (False reproduces the original's quirk).
    """

    name = "nyuv2"
    index_file = "nyu_v2_3task.json"
    ignore_index = IGNORE
    columns = ("img", "seg", "normal", "depth", "keypoint", "edge")
    min_columns = 4
    specs = dense_specs(IGNORE)

    def __init__(self, root: str | os.PathLike, split: str, crop_h: int | None = None, crop_w: int | None = None,
                 *, mirror_normals: bool = True, num_classes: int = 40, seed: int | None = None,
                 check_files: bool | None = None) -> None:
        if not 1 <= int(num_classes) <= 255:
            raise DataError(f"NYUv2 num_classes must be in 1..255, got {num_classes}")
        self.num_classes = int(num_classes)
        super().__init__(root, split, crop_h, crop_w, mirror_normals=mirror_normals, seed=seed,
                         check_files=check_files)

    def _prepare(self) -> None:
        self.has_extra = all(len(entry) >= 6 for entry in self.entries)

    @property
    def tasks(self) -> tuple[str, ...]:
        return ("seg", "sn", "depth", "keypoint", "edge") if self.has_extra else ("seg", "sn", "depth")

    def load_maps(self, index: int) -> dict[str, np.ndarray]:
        entry = self.entries[index]
        img_path, seg_path, normal_path, depth_path = (self.path(p) for p in entry[:4])
        img = read_image(img_path, cv2.IMREAD_COLOR)
        seg = read_label_png(seg_path).astype(np.int64)      # 8- or 16-bit, values as stored
        bad = (seg >= self.num_classes) & (seg != IGNORE)
        if bad.any():
            raise DataError(f"{seg_path}: label {int(seg[bad][0])} is outside 0..{self.num_classes - 1} "
                            f"and is not the ignore value {IGNORE}")
        normal = decode_normal_png(read_label_png(normal_path, (np.uint8,), channels=3))
        depth = read_npy(depth_path)
        if depth.ndim not in (2, 3) or (depth.ndim == 3 and depth.shape[2] != 1):
            raise DataError(f"{depth_path}: expected an HxW depth array, got shape {depth.shape}")
        maps = {"img": img.astype(np.float32), "seg": seg, "normal": normal, "depth": clean_depth(depth)}
        if self.has_extra:
            maps["keypoint"] = decode_unit_png(read_label_png(self.path(entry[4]), (np.uint8,)))
            maps["edge"] = decode_unit_png(read_label_png(self.path(entry[5]), (np.uint8,)))
        return maps
