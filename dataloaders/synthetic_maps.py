"""Edge and keypoint maps of the synthetic scenes, shared by both scene kinds (dataloaders/synthetic.py,
dataloaders/synthetic_disentangled.py)."""
from __future__ import annotations

import cv2
import numpy as np


def edge_map(surface: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Soft edge map (float32 in [0, 1]) of the boundaries between the ids of `surface`: one pixel per
    boundary pair, on the nearer (occluding) side by `depth` (either side of a crease), slightly blurred."""
    edge_px = np.zeros(surface.shape, dtype=bool)
    for a, b, da, db, ea, eb in ((surface[:-1], surface[1:], depth[:-1], depth[1:], edge_px[:-1], edge_px[1:]),
                                 (surface[:, :-1], surface[:, 1:], depth[:, :-1], depth[:, 1:],
                                  edge_px[:, :-1], edge_px[:, 1:])):
        differ = a != b
        ea |= differ & (da <= db)
        eb |= differ & (da > db)
    edge = cv2.GaussianBlur(edge_px.astype(np.float32), (0, 0), 0.7)
    return np.clip(edge / 0.45, 0.0, 1.0).astype(np.float32)


def keypoint_map(xs: np.ndarray, ys: np.ndarray, height: int, width: int) -> np.ndarray:
    """Keypoint heat map (float32 in [0, 1]): the maximum of Gaussian blobs (sigma 1.2 px per 128 px of
    width, at least 1 px) centred at the image points (xs[i], ys[i])."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    keypoint = np.zeros((height, width), dtype=np.float64)
    sigma = max(1.0, 1.2 * width / 128.0)
    for x, y in zip(xs, ys):
        blob = np.exp(-((u - x) ** 2 + (v - y) ** 2) / (2 * sigma ** 2))
        np.maximum(keypoint, blob, out=keypoint)
    return keypoint.astype(np.float32)
