"""Train-time augmentation, written once over a dict of named maps (docs/ORIGINAL.md §2.1).

Every map of a sample (the image and each label map, HxW or HxWxC numpy arrays of one common size)
goes through the same three steps with the same random draws:

1. random scale s ~ U[0.5, 1.5): new size floor(h*s) x floor(w*s); the image is resized bilinearly,
   every label map with nearest neighbour;
2. horizontal mirror with probability 0.5; a map flagged as a normal map also has its x component
   (channel 0) negated when `mirror_normals` is true. `mirror_normals=False` reproduces the original
   NYUv2 loader, which flips the normal map but leaves n_x as it was (docs/ORIGINAL.md §2.2, "mirror
   without normal sign flip"): half of its training normals are then mirror images of the truth;
3. pad-then-random-crop to the crop size: a map smaller than the crop is padded symmetrically
   (centred), padded pixels take the map's `pad` value (the image 0, i.e. -mean after mean
   subtraction; each label map its invalid value), and a uniformly random crop window is cut.

Geometry: the bilinear image resize (OpenCV, half-pixel centres) and the nearest label resize
(pixel centres, i.e. "nearest-exact": source index floor((i + 0.5) * in / out)) sample the same
points, so labels stay aligned with the image. The original used OpenCV's legacy nearest mode
(floor(i * in / out)), which shifts labels by up to half a source pixel against the image.

Randomness comes only from the `numpy.random.Generator` passed in, drawn in a fixed order (scale,
mirror, crop row, crop column), so a sample is a pure function of its data and that generator's seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import cv2
import numpy as np

SCALE_RANGE = (0.5, 1.5)


@dataclass(frozen=True)
class MapSpec:
    """How one named map is augmented and turned into a tensor.

    kind: "image" (bilinear resize) or "label" (nearest); pad: value of padded pixels (the map's
    invalid value, 0 for the image); dtype: numpy dtype of the output map; normal: negate channel 0
    on mirror (when mirroring normals is enabled).
    """

    kind: str
    pad: float
    dtype: type = np.float32
    normal: bool = False


@dataclass(frozen=True)
class AugParams:
    """The random draws of one augmentation: scaled size, mirror flag, crop window origin (in the padded map)."""

    scale: float
    height: int
    width: int
    mirror: bool
    top: int
    left: int


def draw_params(rng: np.random.Generator, size: tuple[int, int], crop: tuple[int, int],
                scale_range: tuple[float, float] = SCALE_RANGE) -> AugParams:
    """Draw scale, mirror and crop position for a sample of `size` (h, w) cut to `crop` (h, w)."""
    h, w = size
    crop_h, crop_w = crop
    scale = float(rng.uniform(*scale_range))
    new_h, new_w = max(1, int(h * scale)), max(1, int(w * scale))
    mirror = bool(rng.random() < 0.5)
    top = int(rng.integers(0, max(new_h, crop_h) - crop_h + 1))
    left = int(rng.integers(0, max(new_w, crop_w) - crop_w + 1))
    return AugParams(scale, new_h, new_w, mirror, top, left)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize with pixel-centre sampling; any dtype, HxW or HxWxC."""
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (OpenCV, half-pixel centres) of a float image, HxW or HxWxC."""
    if array.shape[:2] == (height, width):
        return array
    out = cv2.resize(np.ascontiguousarray(array, dtype=np.float32), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    if array.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing channel axis of length 1
        out = out[:, :, None]
    return out


def _crop_with_pad(array: np.ndarray, params: AugParams, crop: tuple[int, int], pad: float) -> np.ndarray:
    """The crop window of `array` centred in a pad-filled canvas of size max(size, crop)."""
    crop_h, crop_w = crop
    h, w = array.shape[:2]
    off_y = (max(h, crop_h) - h) // 2          # where the map sits in the padded canvas
    off_x = (max(w, crop_w) - w) // 2
    out = np.full((crop_h, crop_w) + array.shape[2:], pad, dtype=array.dtype)
    # window [top, top+crop_h) of the canvas; the map occupies [off_y, off_y+h)
    y0, y1 = max(params.top, off_y), min(params.top + crop_h, off_y + h)
    x0, x1 = max(params.left, off_x), min(params.left + crop_w, off_x + w)
    if y0 < y1 and x0 < x1:
        out[y0 - params.top:y1 - params.top, x0 - params.left:x1 - params.left] = \
            array[y0 - off_y:y1 - off_y, x0 - off_x:x1 - off_x]
    return out


def apply_params(maps: Mapping[str, np.ndarray], specs: Mapping[str, MapSpec], params: AugParams,
                 crop: tuple[int, int], *, mirror_normals: bool = True) -> dict[str, np.ndarray]:
    """Scale, mirror and crop every map with the same `params` (see the module docstring)."""
    out: dict[str, np.ndarray] = {}
    for key, array in maps.items():
        spec = specs[key]
        if spec.kind == "image":
            array = resize_bilinear(array, params.height, params.width)
        elif spec.kind == "label":
            array = resize_nearest(array, params.height, params.width)
        else:
            raise ValueError(f"map {key!r}: unknown kind {spec.kind!r} (expected 'image' or 'label')")
        if params.mirror:
            array = array[:, ::-1]
            if spec.normal and mirror_normals:
                array = array.copy()
                array[..., 0] = 0.0 - array[..., 0]   # 0 - x: invalid all-zero vectors stay +0.0
        out[key] = _crop_with_pad(array, params, crop, spec.pad)
    return out


def augment(maps: Mapping[str, np.ndarray], specs: Mapping[str, MapSpec], crop: tuple[int, int],
            rng: np.random.Generator, *, mirror_normals: bool = True,
            scale_range: tuple[float, float] = SCALE_RANGE) -> dict[str, np.ndarray]:
    """Random scale, mirror and pad-then-crop of all `maps` together; returns crop-sized maps."""
    first = next(iter(maps.values()))
    params = draw_params(rng, first.shape[:2], crop, scale_range)
    return apply_params(maps, specs, params, crop, mirror_normals=mirror_normals)
