"""Tiny-Taskonomy in the AdaShare layout (docs/ORIGINAL.md §2.4), 5 tasks.

Root layout: `taskonomy.json` maps split names (`train`, `test`, `test_small`, ...) to 6-tuples
`(rgb, segment_semantic, normal, depth_zbuffer, keypoints2d, edge_texture)` of PNG paths relative to
the root, and `semseg_prior_factor.npy` holds per-class weights (>= 17 values), exposed as
`class_weights` (float32 tensor).

Paths: AdaShare stores `<building>/<domain>/<file>`; DiSparse rewrites every path `a/b/rest` to
`b/taskonomy/a/rest` (the omnidata download layout). `path_rewrite=True` applies it, False does not,
None (default) decides from the first entry: the stored path if it exists, else the rewritten one.

Files are read unchanged and checked (a one-line DataError otherwise): segment_semantic 8- or 16-bit
grayscale with raw labels 0..17, normal 8-bit RGB, depth_zbuffer, keypoints2d and edge_texture 16-bit
grayscale (an 8-bit file there would decode to nonsense silently).

Decoding (every map first resized to `image_size`, 256x256 by default; labels with nearest neighbour):
rgb -> BGR 0..255 (resized with area averaging, or nearest with `rgb_interpolation="nearest"` as in
the original); seg raw r -> class r - 1 (0..16), raw 0 (unlabelled) -> 255 = ignore (the original
trains it as class 0: `unlabelled_to_class0=True`); normal RGB -> 2v/255 - 1 (channel 0 = x), zeroed
(invalid) where depth is invalid with `normals_where_depth_invalid="mask"`, kept as the original with
"keep"; depth z-buffer d -> log(1 + d) / log(2^16), invalid (d >= 64500) -> 0;
keypoint /2^16 clipped to [0, 0.005] and edge /2^16 clipped to [0, 0.08], each mapped linearly to
[-1, 1]. Train mirror negates n_x (as the original). Padded label pixels: seg 255, normal 0, depth 0,
keypoint/edge 255. Unlike the original, a sample whose file fails to load raises a DataError instead of
silently returning sample 0.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .transforms import resize_nearest
from .base import DenseDataset, dense_specs, read_image, read_label_png, read_npy
from .errors import DataError

IGNORE = 255
PRIOR_FILE = "semseg_prior_factor.npy"
NUM_SEG_CLASSES = 17
DEPTH_INVALID_RAW = 64500
KEYPOINT_CLIP = 0.005
EDGE_CLIP = 0.08


def rewrite_path(relative: str) -> str:
    """DiSparse's path rewrite: `a/b/rest` -> `b/taskonomy/a/rest`."""
    parts = relative.replace("\\", "/").split("/")
    if len(parts) < 3:
        return relative
    return "/".join([parts[1], "taskonomy", parts[0], *parts[2:]])


def _to_unit(raw: np.ndarray, clip: float) -> np.ndarray:
    return np.clip(raw.astype(np.float32) / 65536.0, 0.0, clip) * (2.0 / clip) - 1.0


class Taskonomy(DenseDataset):
    """Tiny-Taskonomy split `split` of `root`; train augmentation iff `crop_h`, `crop_w` are given."""

    name = "taskonomy"
    index_file = "taskonomy.json"
    ignore_index = IGNORE
    columns = ("img", "seg", "normal", "depth", "keypoint", "edge")
    min_columns = 6
    specs = dense_specs(IGNORE)
    tasks = ("seg", "sn", "depth", "keypoint", "edge")

    def __init__(self, root: str | os.PathLike, split: str, crop_h: int | None = None, crop_w: int | None = None,
                 *, mirror_normals: bool = True, path_rewrite: bool | None = None,
                 image_size: tuple[int, int] | None = (256, 256), unlabelled_to_class0: bool = False,
                 rgb_interpolation: str = "area", normals_where_depth_invalid: str = "mask",
                 seed: int | None = None, check_files: bool | None = None) -> None:
        if rgb_interpolation not in ("area", "nearest"):
            raise DataError(f"rgb_interpolation must be 'area' or 'nearest', got {rgb_interpolation!r}")
        if normals_where_depth_invalid not in ("mask", "keep"):
            raise DataError(f"normals_where_depth_invalid must be 'mask' or 'keep', got {normals_where_depth_invalid!r}")
        self.mask_normals = normals_where_depth_invalid == "mask"
        self.path_rewrite = path_rewrite
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.unlabelled_to_class0 = bool(unlabelled_to_class0)
        self.rgb_interpolation = rgb_interpolation
        super().__init__(root, split, crop_h, crop_w, mirror_normals=mirror_normals, seed=seed,
                         check_files=check_files)

    def _prepare(self) -> None:
        prior_path = self.root / PRIOR_FILE
        prior = read_npy(prior_path) if prior_path.is_file() else None
        if prior is None:
            raise DataError(f"Taskonomy class prior file {prior_path} not found (semseg_prior_factor.npy is required)")
        prior = prior.reshape(-1)
        if prior.size < NUM_SEG_CLASSES:
            raise DataError(f"{prior_path}: expected at least {NUM_SEG_CLASSES} class weights, got {prior.size}")
        self.class_weights = torch.from_numpy(prior.astype(np.float32))
        if self.path_rewrite is None:
            first = self.entries[0][0]
            self.path_rewrite = not (self.root / first).is_file() and (self.root / rewrite_path(first)).is_file()

    def path(self, relative: str) -> Path:
        return self.root / (rewrite_path(relative) if self.path_rewrite else relative)

    def _resize_label(self, array: np.ndarray) -> np.ndarray:
        if self.image_size is None:
            return array
        return resize_nearest(array, *self.image_size)

    def load_maps(self, index: int) -> dict[str, np.ndarray]:
        entry = self.entries[index]
        rgb_p, seg_p, normal_p, depth_p, key_p, edge_p = (self.path(p) for p in entry[:6])
        bgr = read_image(rgb_p, cv2.IMREAD_COLOR)
        if self.image_size is not None and bgr.shape[:2] != self.image_size:
            h, w = self.image_size
            interp = cv2.INTER_NEAREST_EXACT if self.rgb_interpolation == "nearest" else (
                cv2.INTER_AREA if h <= bgr.shape[0] and w <= bgr.shape[1] else cv2.INTER_LINEAR)
            bgr = cv2.resize(bgr, (w, h), interpolation=interp)
        raw_seg = read_label_png(seg_p)
        if raw_seg.max() > NUM_SEG_CLASSES:
            raise DataError(f"{seg_p}: raw label {int(raw_seg.max())} is outside 0..{NUM_SEG_CLASSES} "
                            f"(0 = unlabelled, 1..{NUM_SEG_CLASSES} = the classes)")
        raw_seg = self._resize_label(raw_seg).astype(np.int64)
        seg = raw_seg - 1
        seg[raw_seg <= 0] = 0 if self.unlabelled_to_class0 else IGNORE
        normal_bgr = self._resize_label(read_label_png(normal_p, (np.uint8,), channels=3))
        normal = normal_bgr[:, :, ::-1].astype(np.float32) * (2.0 / 255.0) - 1.0
        raw_depth = self._resize_label(read_label_png(depth_p, (np.uint16,)))
        valid = raw_depth < DEPTH_INVALID_RAW
        depth = np.where(valid, np.log1p(raw_depth.astype(np.float32)) / math.log(2.0 ** 16), 0.0).astype(np.float32)
        if self.mask_normals:
            normal[~valid] = 0.0
        keypoint = _to_unit(self._resize_label(read_label_png(key_p, (np.uint16,))), KEYPOINT_CLIP)
        edge = _to_unit(self._resize_label(read_label_png(edge_p, (np.uint16,))), EDGE_CLIP)
        return {"img": bgr.astype(np.float32), "seg": seg, "normal": normal, "depth": depth,
                "keypoint": keypoint, "edge": edge}
