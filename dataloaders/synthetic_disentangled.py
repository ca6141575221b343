"""The `disentangled` kind of synthetic scene: segmentation, depth and surface normals are drawn
independently of each other and each is shown in the image by its own cue, so the tasks need
different features (`python -m dataloaders.synthetic --scene-kind disentangled`).

The `shared` kind (dataloaders/synthetic.py) renders one room: class, depth and normals all follow
from the same geometry (the floor is far down and faces up, objects are near, ...), so one set of
features serves every task. Here the three label maps come from three independent random layers, and
the RGB image is their product:

| task | label layer | cue in the image |
|---|---|---|
| seg | Voronoi cells (4-8 per image), each an independent uniform class 0..C-1 | colour: class c has hue c/C (± 0.15 of the spacing), saturation 0.7-0.95; brightness is drawn per cell (0.45-0.65) and carries no class |
| depth | a background plane at 4-6 m and 2-5 fronto-parallel rectangles at 1-5 m, painted far to near | defocus: a fine random binary texture (cells of width/64 px, ±30 % brightness) blurred with sigma = 3 px * (z - 1) / 5 per 128 px of width, so near regions are crisp and far ones smooth |
| sn | a height field of 3-6 Gaussian bumps (70 %) and dents (radius 12-28 % of the width, slope up to ~50°) on a plane facing the camera | shading: Lambertian light from above the camera (no left-right component, so a mirrored image is a correct image of the mirrored scene), 0.35 ambient |

pixel = albedo(seg cell) * shading(normal) * (1 + 0.3 * blurred texture(depth)) * exposure (0.9-1.1),
plus Gaussian noise (std 2.5 of 255). The blur cue does not depend on the image scale (rescaling
stretches the texture and the blur alike), so the loaders' random scaling leaves it intact.

Labels are independent by construction: the class of a pixel tells nothing about its depth or normal
(tests/test_data_synthetic.py measures this, and that every task's cue is readable from the RGB).
Every pixel is valid in every map (no ignore labels, no invalid normals). Normals use the shared
kind's NYU camera axes (x right, y forward, z up, facing the camera: a flat pixel is (0, -1, 0)).
Edges are the depth layer's discontinuities, keypoints the centres of the bumps and dents, drawn like
the shared kind's. This is a controlled cue experiment, not a physical scene: depth and normals do
not agree with each other (the depth layer is piecewise constant).
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .synthetic_maps import edge_map, keypoint_map

SEG_CELLS = (4, 9)                 # integers(low, high): 4..8 cells
HUE_JITTER = 0.15                  # in units of the hue spacing 1/C
DEPTH_RANGE = (1.0, 5.0)           # rectangles
BACKGROUND_DEPTH = (4.0, 6.0)
RECTANGLES = (2, 6)                # 2..5
BLUR_AT_128 = 3.0                  # texture blur sigma (px, 128 px wide image) at the far end, z = 6 m
BLUR_DEPTHS = (1.0, 6.0)           # sigma grows linearly from 0 at 1 m to BLUR_AT_128 at 6 m
TEXTURE_CELLS = 64                 # texture cells across the width
TEXTURE_AMPLITUDE = 0.3
BUMPS = (3, 7)                     # 3..6
LIGHT = np.array([0.0, -1.0, 0.8]) / np.linalg.norm([0.0, -1.0, 0.8])   # NYU axes, towards the light
AMBIENT = 0.35
FLAT = np.array([0.0, -1.0, 0.0])


def blur_sigma(depth: np.ndarray | float, width: int) -> np.ndarray:
    """Texture blur (pixels) at z-depth `depth` (metres) in an image `width` px wide."""
    low, high = BLUR_DEPTHS
    return BLUR_AT_128 * width / 128.0 * np.clip((np.asarray(depth, dtype=np.float64) - low) / (high - low), 0, 1)


def _seg_layer(rng: np.random.Generator, height: int, width: int, num_classes: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(class map int64, albedo HxWx3): Voronoi cells, each an independent class and colour."""
    n = int(rng.integers(*SEG_CELLS))
    sites = rng.uniform(0.0, 1.0, size=(n, 2)) * [height, width]
    classes = rng.integers(0, num_classes, size=n)
    hues = (classes + rng.uniform(-HUE_JITTER, HUE_JITTER, size=n)) / num_classes
    sats = rng.uniform(0.7, 0.95, size=n)
    values = rng.uniform(0.45, 0.65, size=n)
    colours = np.array([colorsys.hsv_to_rgb(h % 1.0, s, v) for h, s, v in zip(hues, sats, values)])
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    cell = ((v[..., None] - sites[:, 0]) ** 2 + (u[..., None] - sites[:, 1]) ** 2).argmin(axis=-1)
    return classes[cell], colours[cell]


def _depth_layer(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(region id map, depth map): a background plane and rectangles painted far to near."""
    n = int(rng.integers(*RECTANGLES))
    depths = np.concatenate([[rng.uniform(*BACKGROUND_DEPTH)], np.sort(rng.uniform(*DEPTH_RANGE, size=n))[::-1]])
    region = np.zeros((height, width), dtype=np.int64)
    for k in range(1, n + 1):
        ch, cw = rng.uniform(0, height), rng.uniform(0, width)
        hh, hw = rng.uniform(0.12, 0.35) * height, rng.uniform(0.12, 0.35) * width
        top, bottom = int(round(max(0.0, ch - hh))), int(round(min(height, ch + hh)))
        left, right = int(round(max(0.0, cw - hw))), int(round(min(width, cw + hw)))
        region[top:bottom, left:right] = k
    return region, depths[region]


def _defocus_texture(rng: np.random.Generator, region: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """A random ±1 texture, blurred in each depth region by that region's defocus sigma."""
    height, width = region.shape
    cell = max(1, int(round(width / TEXTURE_CELLS)))
    coarse = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(-(-height // cell), -(-width // cell)))
    sharp = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]
    texture = np.empty((height, width), dtype=np.float32)
    for k in np.unique(region):
        inside = region == k
        sigma = float(blur_sigma(depth[inside][0], width))
        texture[inside] = (cv2.GaussianBlur(sharp, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)[inside]
                           if sigma > 0.05 else sharp[inside])
    return texture


def _normal_layer(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(normals HxWx3 in NYU camera axes, bump centres N x 2 as (u, v)): Gaussian bumps and dents."""
    n = int(rng.integers(*BUMPS))
    centres = rng.uniform(0.0, 1.0, size=(n, 2)) * [width, height]
    radii = rng.uniform(0.12, 0.28, size=n) * width
    heights = rng.uniform(0.8, 2.0, size=n) * radii * np.where(rng.random(n) < 0.7, 1.0, -1.0)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    grad_u = np.zeros((height, width))
    grad_v = np.zeros((height, width))
    for (cu, cv), r, a in zip(centres, radii, heights):
        bump = a * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * r * r))
        grad_u -= bump * (u - cu) / (r * r)
        grad_v -= bump * (v - cv) / (r * r)
    # Surface y = -h (towards the camera), image v pointing down: n ~ (-dh/du, -1, dh/dv), facing the camera.
    normal = np.stack([-grad_u, -np.ones_like(grad_u), grad_v], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return normal, centres


def render_disentangled(rng: np.random.Generator, height: int, width: int, num_classes: int = 8
                        ) -> dict[str, np.ndarray]:
    """One scene of the disentangled kind; the same keys, dtypes and conventions as `render_scene`."""
    seg, albedo = _seg_layer(rng, height, width, num_classes)
    region, depth = _depth_layer(rng, height, width)
    texture = _defocus_texture(rng, region, depth)
    normal, centres = _normal_layer(rng, height, width)
    shading = AMBIENT + (1.0 - AMBIENT) * np.clip(normal @ LIGHT, 0.0, None) / float(FLAT @ LIGHT)
    exposure = rng.uniform(0.9, 1.1)
    rgb = albedo * (shading * exposure * (1.0 + TEXTURE_AMPLITUDE * texture))[..., None] * 255.0
    rgb = rgb + rng.normal(0.0, 2.5, size=(height, width, 3))
    return {"rgb": np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "seg": seg.astype(np.uint8),
            "normal": normal.astype(np.float32), "depth": depth.astype(np.float32),
            "keypoint": keypoint_map(centres[:, 0], centres[:, 1], height, width),
            "edge": edge_map(region, depth)}
