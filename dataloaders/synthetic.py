"""Synthetic indoor scenes in the NYUv2 on-disk layout: RGB, semantic labels, metric depth, surface
normals, edges and keypoints that agree with each other, so every task is learnable from the image.

    python -m dataloaders.synthetic --out DIR --n-train 160 --n-test 40 --size 96x128 --seed 0
    python -m dataloaders.synthetic --out DIR --scene-kind disentangled

Two kinds of scene (`--scene-kind`, config key `synthetic.scene_kind`): `shared` (the default, described
below) renders rooms, in which every task follows from the same geometry; `disentangled`
(dataloaders/synthetic_disentangled.py) draws the seg, depth and normal maps independently and shows
each by its own image cue (colour, defocus blur, shading), so the tasks need different features.
`configs/synthetic_disentangled.yaml` selects it with its own data root (data/synthetic_disentangled):
a root holds one kind, and asking for the other kind at an existing root is an error.

Each image is a room (floor, four walls, ceiling: axis-aligned planes) holding 3-7 objects (boxes
turned about the vertical axis standing on the floor, spheres on the floor or on a box), seen
through a pinhole camera placed in the room (height 1.1-1.7 m, looking into it, tilted down 5-30°,
small roll). Everything is ray-cast analytically with numpy, one ray per pixel, in closed form
(plane, slab and quadric intersections).

Classes: 0 floor, 1 wall, 2 ceiling; objects take classes 3..C-1 (odd = box, even = sphere), C =
`num_classes` (4..40, default 8). Appearance: each class has a fixed base colour and texture
(floor tiles, striped wallpaper, plain ceiling; objects plain / stripes / checker / dots), jittered
per instance, lit by a point light near the ceiling with Lambertian shading (ambient + diffuse from
the true normals, distance fall-off), a per-image exposure and Gaussian pixel noise.

Files (the NYUv2 layout, read by `dataloaders.NYUv2`): `img/<id>.png` RGB, `seg/<id>.png` labels with
255 = ignore on the occluded side of object outlines, `normal_mask/<id>.png` with v = (n + 1) * 255 / 2,
invalid (255, 255, 255) on pixels next to a surface boundary, `depth/<id>.npy` float32 z-depth in
metres (all valid), `keypoint/<id>.png` and `edge/<id>.png` (8-bit, v -> 2v/255 - 1 in [-1, 1]),
`nyu_v2_3task.json` with entries [img, seg, normal, depth, keypoint, edge], and
`synthetic_meta.json` (generator settings, camera intrinsics, class names). Ids: `train_00000`, ...,
`test_00000`, ...

Normals are in the camera frame with NYU's axes (as measured on the real samples: floors have
z ~ +1, walls facing the camera y ~ -1): x = image right, y = forward (away from the camera along
the optical axis), z = camera up; they face the camera. Depth is the z-depth along the optical axis.
Intrinsics: fx = fy = 0.81 * width (NYU's Kinect field of view), cx = (width - 1) / 2,
cy = (height - 1) / 2 with pixel (u, v) centred at integer coordinates: the camera-frame point of
pixel (u, v) at depth z is (z (u - cx) / fx, z (v - cy) / fy, z) in OpenCV axes (x right, y down,
z forward).

Edges are surface discontinuities (occlusion outlines and creases between planar faces: any change of
the surface id between 4-neighbours), slightly blurred; keypoints are the visible projected vertices of
the boxes and the room corners, drawn as Gaussian blobs.

Determinism: image i of split s is drawn from `numpy.random.default_rng([seed, s, i])`, so the same
seed gives the same bytes, and a train image does not depend on how many test images there are.
Generation writes into a temporary sibling folder and renames it into place at the end, so an
interrupted run leaves no half-written dataset behind.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from .errors import DataError
from .synthetic_maps import edge_map, keypoint_map

GENERATOR = "disparse-synthetic-scenes"
VERSION = 1
META_FILE = "synthetic_meta.json"
INDEX_FILE = "nyu_v2_3task.json"
MIN_CLASSES, MAX_CLASSES = 4, 40
DEFAULTS = {"n_train": 160, "n_test": 40, "size": [96, 128], "seed": 0}
SCENE_KINDS = ("shared", "disentangled")
SPLIT_CODES = {"train": 0, "test": 1}
FOCAL_PER_WIDTH = 0.81          # NYU Kinect: fx ~ 518.8 px at 640 px width
NORMAL_FRAME = "camera frame, x right, y forward (optical axis), z up; normals face the camera"
EPS = 1e-6


# --------------------------------------------------------------------------- classes and appearance

def class_names(num_classes: int) -> list[str]:
    names = ["floor", "wall", "ceiling"]
    for c in range(3, num_classes):
        names.append(f"{'box' if c % 2 else 'sphere'}_{c}")
    return names


def class_shape(c: int) -> str:
    return "box" if c % 2 else "sphere"


def class_colour(c: int) -> np.ndarray:
    """Fixed base albedo (RGB in [0, 1]) of class c."""
    if c == 0:
        return np.array([0.55, 0.40, 0.27])
    if c == 1:
        return np.array([0.80, 0.76, 0.66])
    if c == 2:
        return np.array([0.93, 0.93, 0.90])
    hue = ((c - 3) * 0.618034 + 0.02) % 1.0
    sat = (0.80, 0.55, 0.95)[c % 3]
    val = (0.85, 0.62)[(c // 3) % 2]
    return np.array(colorsys.hsv_to_rgb(hue, sat, val))


def _texture(c: int, q: np.ndarray, scale: float) -> np.ndarray:
    """Multiplicative brightness pattern of class c at local coordinates q (N x 3, metres)."""
    if c == 0:                                      # floor tiles
        tiles = (np.floor(q[:, 0] / scale) + np.floor(q[:, 1] / scale)) % 2
        return 0.82 + 0.18 * tiles
    if c == 1:                                      # striped wallpaper (along-wall coordinate)
        along = q[:, 0] + q[:, 1]
        return 0.93 + 0.07 * (np.sin(2 * np.pi * along / 0.2) > 0)
    if c == 2:
        return np.ones(len(q))
    kind = (c - 3) % 4
    if kind == 0:                                   # plain
        return np.ones(len(q))
    if kind == 1:                                   # horizontal stripes
        return 0.72 + 0.28 * (np.sin(2 * np.pi * q[:, 2] / (0.6 * scale)) > 0)
    if kind == 2:                                   # checker
        cells = np.floor(q / (0.5 * scale)).sum(axis=1) % 2
        return 0.68 + 0.32 * cells
    dots = np.cos(2 * np.pi * q / (0.4 * scale)).prod(axis=1)   # dots
    return 1.0 - 0.35 * (dots > 0.5)


# --------------------------------------------------------------------------- geometry

def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation; columns = camera right, down, forward in the world (x, y, z = up)."""
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.cos(yaw) * np.cos(pitch), np.sin(pitch)])
    right = np.array([forward[1], -forward[0], 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    right, down = np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down
    return np.stack([right, down, forward], axis=1)


def intrinsics(height: int, width: int) -> dict[str, float]:
    f = FOCAL_PER_WIDTH * width
    return {"fx": f, "fy": f, "cx": (width - 1) / 2.0, "cy": (height - 1) / 2.0}


class _Plane:
    def __init__(self, axis: int, value: float, inward: float, cls: int) -> None:
        self.axis, self.value, self.inward, self.cls = axis, value, inward, cls
        self.normal = np.zeros(3)
        self.normal[axis] = inward

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        d = dirs[:, self.axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.value - origin[self.axis]) / d
        return np.where(np.isfinite(t) & (t > EPS), t, np.inf)

    def shade_info(self, origin, dirs, t):
        points = origin + t[:, None] * dirs
        return np.broadcast_to(self.normal, points.shape), points, np.zeros(len(t), dtype=np.int64)


class _Box:
    def __init__(self, centre: np.ndarray, half: np.ndarray, yaw: float, cls: int) -> None:
        self.centre, self.half, self.rot, self.cls = centre, half, _rot_z(yaw), cls

    def local(self, points: np.ndarray) -> np.ndarray:
        return (points - self.centre) @ self.rot     # row-vector form of rot.T @ (p - c)

    def contains(self, point: np.ndarray, margin: float) -> bool:
        return bool((np.abs(self.local(point[None])[0]) < self.half + margin).all())

    def _slab(self, origin, dirs):
        o = self.local(origin[None])[0]
        d = dirs @ self.rot
        d = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1 = (-self.half - o) / d
        t2 = (self.half - o) / d
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        return o, d, tmin, tmin.max(axis=1), tmax.min(axis=1)

    def intersect(self, origin, dirs):
        _, _, _, near, far = self._slab(origin, dirs)
        return np.where((near <= far) & (near > EPS), near, np.inf)

    def shade_info(self, origin, dirs, t):
        o, d, tmin, _, _ = self._slab(origin, dirs)
        axis = tmin.argmax(axis=1)
        rows = np.arange(len(t))
        sign = -np.sign(d[rows, axis])
        n_local = np.zeros((len(t), 3))
        n_local[rows, axis] = sign
        q = o + t[:, None] * d
        face = axis * 2 + (sign > 0)
        return n_local @ self.rot.T, q, face.astype(np.int64)

    def corners(self) -> np.ndarray:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
        return self.centre + (signs * self.half) @ self.rot.T


class _Sphere:
    def __init__(self, centre: np.ndarray, radius: float, spin: float, cls: int) -> None:
        self.centre, self.radius, self.rot, self.cls = centre, radius, _rot_z(spin), cls

    def contains(self, point: np.ndarray, margin: float) -> bool:
        return bool(np.linalg.norm(point - self.centre) < self.radius + margin)

    def intersect(self, origin, dirs):
        oc = origin - self.centre
        a = (dirs * dirs).sum(axis=1)
        b = 2.0 * dirs @ oc
        c = oc @ oc - self.radius ** 2
        disc = b * b - 4 * a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        t = (-b - root) / (2 * a)
        return np.where((disc >= 0) & (t > EPS), t, np.inf)

    def shade_info(self, origin, dirs, t):
        points = origin + t[:, None] * dirs
        normal = (points - self.centre) / self.radius
        return normal, (points - self.centre) @ self.rot, np.zeros(len(t), dtype=np.int64)


# --------------------------------------------------------------------------- scene sampling and rendering

def _sample_scene(rng: np.random.Generator, num_classes: int) -> dict[str, Any]:
    room = np.array([rng.uniform(3.5, 6.5), rng.uniform(4.0, 8.0), rng.uniform(2.4, 3.2)])
    cam = np.array([rng.uniform(0.3, 0.7) * room[0], rng.uniform(0.25, 0.8), rng.uniform(1.1, 1.7)])
    yaw = rng.uniform(-0.6, 0.6)
    pitch = -rng.uniform(np.deg2rad(5), np.deg2rad(30))
    roll = rng.uniform(-0.07, 0.07)
    objects: list[Any] = []
    boxes: list[_Box] = []
    for _ in range(int(rng.integers(3, 8))):
        cls = int(rng.integers(3, num_classes))
        dist = rng.uniform(1.3, max(1.6, room[1] - cam[1] - 0.3))
        ang = yaw + rng.uniform(-0.55, 0.55)
        xy = cam[:2] + dist * np.array([np.sin(ang), np.cos(ang)])
        if class_shape(cls) == "box":
            half = np.array([rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.75)])
            margin = half[:2].max() * 1.2 + 0.05
            xy = np.clip(xy, margin, room[:2] - margin)
            obj: Any = _Box(np.array([xy[0], xy[1], half[2]]), half, rng.uniform(0, np.pi / 2), cls)
        else:
            radius = rng.uniform(0.15, 0.45)
            on_box = boxes and rng.random() < 0.35
            if on_box:
                base = boxes[int(rng.integers(len(boxes)))]
                centre = np.array([base.centre[0], base.centre[1], 2 * base.half[2] + radius])
            else:
                xy = np.clip(xy, radius + 0.05, room[:2] - radius - 0.05)
                centre = np.array([xy[0], xy[1], radius])
            obj = _Sphere(centre, radius, rng.uniform(0, 2 * np.pi), cls)
        if obj.contains(cam, 0.25):
            continue
        objects.append(obj)
        if isinstance(obj, _Box):
            boxes.append(obj)
    light = np.array([rng.uniform(0.2, 0.8) * room[0], rng.uniform(0.2, 0.8) * room[1], room[2] - 0.1])
    return {"room": room, "cam": cam, "rot": _camera_rotation(yaw, pitch, roll), "objects": objects,
            "light": light, "exposure": rng.uniform(0.85, 1.15),
            "jitter": rng.uniform(0.88, 1.12, size=(len(objects) + 6, 3)),
            "tex_scale": rng.uniform(0.35, 0.6)}


def _boundaries(ids: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a different id."""
    out = np.zeros(ids.shape, dtype=bool)
    dy = ids[1:, :] != ids[:-1, :]
    dx = ids[:, 1:] != ids[:, :-1]
    out[1:, :] |= dy
    out[:-1, :] |= dy
    out[:, 1:] |= dx
    out[:, :-1] |= dx
    return out


def render_scene(rng: np.random.Generator, height: int, width: int, num_classes: int = 8) -> dict[str, np.ndarray]:
    """One random scene: `rgb` uint8 HxWx3 (RGB), `seg` uint8 (255 = ignore), `normal` float32 HxWx3
    (NYU camera axes, zero where invalid), `depth` float32 metres, `keypoint`, `edge` float32 in [0, 1]."""
    scene = _sample_scene(rng, num_classes)
    room, cam, rot = scene["room"], scene["cam"], scene["rot"]
    k = intrinsics(height, width)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_cam = np.stack([(u - k["cx"]) / k["fx"], (v - k["cy"]) / k["fy"], np.ones_like(u)], axis=-1).reshape(-1, 3)
    dirs = rays_cam @ rot.T                        # world directions with unit camera-z component: t = depth

    prims: list[Any] = [_Plane(2, 0.0, 1.0, 0), _Plane(2, room[2], -1.0, 2),
                        _Plane(0, 0.0, 1.0, 1), _Plane(0, room[0], -1.0, 1),
                        _Plane(1, 0.0, 1.0, 1), _Plane(1, room[1], -1.0, 1)]
    prims += scene["objects"]
    hits = np.stack([p.intersect(cam, dirs) for p in prims])
    owner = hits.argmin(axis=0)
    t = hits[owner, np.arange(len(owner))]
    if not np.isfinite(t).all():                   # cannot happen inside a closed room
        raise RuntimeError("synthetic renderer: a ray left the room")

    n_pix = len(t)
    normal_w = np.zeros((n_pix, 3))
    albedo = np.zeros((n_pix, 3))
    seg = np.zeros(n_pix, dtype=np.int64)
    surface = np.zeros(n_pix, dtype=np.int64)
    instance = np.zeros(n_pix, dtype=np.int64)
    for idx, prim in enumerate(prims):
        sel = owner == idx
        if not sel.any():
            continue
        normal, q, face = prim.shade_info(cam, dirs[sel], t[sel])
        if isinstance(prim, _Plane):
            q = cam + t[sel, None] * dirs[sel]
        normal_w[sel] = normal
        seg[sel] = prim.cls
        surface[sel] = idx * 8 + face
        instance[sel] = 0 if idx < 6 else idx - 5
        albedo[sel] = class_colour(prim.cls) * scene["jitter"][idx] * _texture(prim.cls, q, scene["tex_scale"])[:, None]

    points = cam + t[:, None] * dirs
    to_light = scene["light"] - points
    dist = np.linalg.norm(to_light, axis=1)
    lambert = np.clip((normal_w * to_light).sum(axis=1) / dist, 0.0, 1.0)
    shade = 0.32 + 0.85 * lambert / (1.0 + 0.03 * dist ** 2)
    rgb = albedo * (shade * scene["exposure"])[:, None] * 255.0
    rgb = rgb.reshape(height, width, 3) + rng.normal(0.0, 2.5, size=(height, width, 3))
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    depth = t.reshape(height, width)
    # Normals in the camera frame with NYU axes: (right, forward, up) = (n.r, n.f, -n.d).
    n_cam = normal_w @ rot                         # OpenCV camera axes (x right, y down, z forward)
    normal = np.stack([n_cam[:, 0], n_cam[:, 2], -n_cam[:, 1]], axis=-1).reshape(height, width, 3)
    surface = surface.reshape(height, width)
    instance = instance.reshape(height, width)
    seg = seg.reshape(height, width)

    surf_edge = _boundaries(surface)
    normal[surf_edge] = 0.0                        # invalid on both sides of a surface boundary (as sensors)
    # Seg ignore on the occluded side of object outlines (mixed pixels of a real sensor).
    occluded = np.zeros_like(surf_edge)
    for axis in (0, 1):
        for step in (1, -1):
            nb_inst = np.roll(instance, step, axis=axis)
            nb_depth = np.roll(depth, step, axis=axis)
            mask = (nb_inst != instance) & (nb_depth < depth - 0.05)
            if axis == 0:
                mask[0 if step == 1 else -1, :] = False
            else:
                mask[:, 0 if step == 1 else -1] = False
            occluded |= mask
    seg = seg.astype(np.uint8)
    seg[occluded] = 255

    corners = [box.corners() for box in scene["objects"] if isinstance(box, _Box)]
    corners.append(np.array([[x, y, z] for x in (0, room[0]) for y in (0, room[1]) for z in (0, room[2])]))
    verts = np.concatenate(corners) - cam
    vc = verts @ rot                               # OpenCV camera coordinates
    z = vc[:, 2]
    front = z > 0.05
    uu = np.where(front, k["fx"] * vc[:, 0] / np.where(front, z, 1) + k["cx"], -1e9)
    vv = np.where(front, k["fy"] * vc[:, 1] / np.where(front, z, 1) + k["cy"], -1e9)
    ui, vi = np.rint(uu).astype(np.int64), np.rint(vv).astype(np.int64)
    inside = front & (ui >= 0) & (ui < width) & (vi >= 0) & (vi < height)
    visible = depth[vi[inside], ui[inside]] >= z[inside] - (0.03 * z[inside] + 0.03)   # not behind something nearer
    keypoint = keypoint_map(uu[inside][visible], vv[inside][visible], height, width)
    return {"rgb": rgb, "seg": seg, "normal": normal.astype(np.float32), "depth": depth.astype(np.float32),
            "keypoint": keypoint, "edge": edge_map(surface, depth)}


# --------------------------------------------------------------------------- writing

def encode_normal(normal: np.ndarray) -> np.ndarray:
    """Float HxWx3 (x, y, z; all-zero = invalid) -> uint8 RGB as the real NYU files: v = (n + 1) * 255 / 2,
    invalid = (255, 255, 255)."""
    invalid = ~(normal != 0).any(axis=2)
    v = np.clip(np.rint((normal.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    v[invalid] = 255
    return v


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())


def _write_sample(root: Path, ident: str, scene: Mapping[str, np.ndarray]) -> list[str]:
    rel = [f"img/{ident}.png", f"seg/{ident}.png", f"normal_mask/{ident}.png", f"depth/{ident}.npy",
           f"keypoint/{ident}.png", f"edge/{ident}.png"]
    _write_png(root / rel[0], scene["rgb"][:, :, ::-1])
    _write_png(root / rel[1], scene["seg"])
    _write_png(root / rel[2], encode_normal(scene["normal"])[:, :, ::-1])
    with open(root / rel[3], "wb") as handle:
        np.save(handle, np.ascontiguousarray(scene["depth"], dtype=np.float32))
    _write_png(root / rel[4], np.rint(scene["keypoint"] * 255).astype(np.uint8))
    _write_png(root / rel[5], np.rint(scene["edge"] * 255).astype(np.uint8))
    return rel


def renderer(scene_kind: str):
    """The scene function of a kind: `(rng, height, width, num_classes) -> maps` (see `render_scene`)."""
    if scene_kind == "shared":
        return render_scene
    if scene_kind == "disentangled":
        from .synthetic_disentangled import render_disentangled
        return render_disentangled
    raise DataError(f"synthetic: unknown scene kind {scene_kind!r} (expected one of {', '.join(SCENE_KINDS)})")


def _meta(n_train: int, n_test: int, size: Sequence[int], seed: int, num_classes: int,
          scene_kind: str) -> dict[str, Any]:
    h, w = int(size[0]), int(size[1])
    return {"generator": GENERATOR, "version": VERSION, "n_train": int(n_train), "n_test": int(n_test),
            "size": [h, w], "seed": int(seed), "num_classes": int(num_classes), "scene_kind": scene_kind,
            "classes": class_names(num_classes) if scene_kind == "shared" else [f"hue_{c}" for c in range(num_classes)],
            "intrinsics": intrinsics(h, w), "normal_frame": NORMAL_FRAME,
            "depth": "z-depth along the optical axis, metres, float32"}


def _check_params(n_train: int, n_test: int, size: Sequence[int], num_classes: int) -> tuple[int, int]:
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise DataError(f"synthetic: need n_train, n_test >= 0 and at least one image, got {n_train}, {n_test}")
    if len(size) != 2 or int(size[0]) < 8 or int(size[1]) < 8:
        raise DataError(f"synthetic: size must be [height, width], each >= 8, got {list(size)}")
    if not MIN_CLASSES <= num_classes <= MAX_CLASSES:
        raise DataError(f"synthetic: num_classes must be in {MIN_CLASSES}..{MAX_CLASSES}, got {num_classes}")
    return int(size[0]), int(size[1])


def _write_dataset(root: Path, n_train: int, n_test: int, size: Sequence[int], seed: int, num_classes: int,
                   scene_kind: str, progress: bool, label: str) -> None:
    height, width = int(size[0]), int(size[1])
    render = renderer(scene_kind)
    for folder in ("img", "seg", "normal_mask", "depth", "keypoint", "edge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    jobs = [("train", i) for i in range(n_train)] + [("test", i) for i in range(n_test)]
    index: dict[str, list[list[str]]] = {"train": [], "test": []}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc=f"synthetic scenes -> {label}", unit="img", leave=False)
    for split, i in jobs:
        rng = np.random.default_rng([int(seed) % 2**63, SPLIT_CODES[split], i])
        scene = render(rng, height, width, num_classes)
        index[split].append(_write_sample(root, f"{split}_{i:05d}", scene))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    (root / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    # the meta file is written last: its presence marks a complete dataset
    (root / META_FILE).write_text(json.dumps(_meta(n_train, n_test, size, seed, num_classes, scene_kind),
                                             indent=1, sort_keys=True) + "\n", encoding="utf-8")


def generate_synthetic(out: str | os.PathLike, *, n_train: int, n_test: int, size: Sequence[int] = (96, 128),
                       seed: int = 0, num_classes: int = 8, overwrite: bool = False,
                       progress: bool = False, scene_kind: str = "shared") -> Path:
    """Generate the dataset into `out` (created; must not exist or be empty unless `overwrite`);
    `scene_kind` is one of `SCENE_KINDS`.

    Written into a temporary sibling folder first and renamed into place when complete. If another
    process completes the same folder meanwhile, its result is kept. Returns `out`.
    """
    _check_params(n_train, n_test, size, num_classes)
    renderer(scene_kind)                                  # an unknown kind fails before anything is written
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DataError(f"synthetic: output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"synthetic: output folder {out} is not empty (remove it or pass --force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = out.parent / f".{out.name}.partial-{token}"
    try:
        tmp.mkdir()
        _write_dataset(tmp, n_train, n_test, size, seed, num_classes, scene_kind, progress, out.name)
        old = None
        if out.is_dir() and any(out.iterdir()):          # overwrite: move the old one aside first
            old = out.parent / f".{out.name}.old-{token}"
            os.rename(out, old)
        elif out.is_dir():
            try:
                out.rmdir()
            except OSError:
                pass
        try:
            os.rename(tmp, out)
        except OSError:
            if (out / META_FILE).is_file():              # someone else finished first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(root: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def synthetic_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Generator settings of a config: its `synthetic` section (defaults 160/40 images, size
    `data.image_shape` or 96x128, seed 0, scene kind shared) and the number of seg classes (default 8)."""
    section = dict(config.get("synthetic") or {})
    data = config.get("data") or {}
    size = section.get("size") or data.get("image_shape") or DEFAULTS["size"]
    tasks, classes = list(config.get("tasks") or []), list(config.get("num_classes") or [])
    num_classes = int(classes[tasks.index("seg")]) if "seg" in tasks and len(classes) == len(tasks) else 8
    return {"n_train": int(section.get("n_train", DEFAULTS["n_train"])),
            "n_test": int(section.get("n_test", DEFAULTS["n_test"])),
            "size": [int(size[0]), int(size[1])], "seed": int(section.get("seed", DEFAULTS["seed"])),
            "num_classes": num_classes, "scene_kind": str(section.get("scene_kind", SCENE_KINDS[0]))}


def ensure_synthetic(config: Mapping[str, Any], progress: bool = True) -> Path:
    """Make sure `config["data_root"]` holds the synthetic set the config describes; generate it if the
    folder is absent or empty. Returns the root.

    A root generated with other settings (or by another generator version) is an error rather than
    silently replaced; a root holding an NYUv2-layout index without our meta file is used as it is.
    """
    root = config.get("data_root")
    if root is None:
        raise DataError("no data root for dataset 'synthetic': pass --data-root or set DISPARSE_DATA")
    root = Path(root).expanduser()
    want = synthetic_settings(config)
    renderer(want["scene_kind"])
    meta = read_meta(root)
    if meta is not None:
        have = {key: meta.get(key) for key in want}
        have["scene_kind"] = meta.get("scene_kind", SCENE_KINDS[0])    # roots written before kinds existed
        if meta.get("generator") != GENERATOR or meta.get("version") != VERSION or have != want:
            diff = ", ".join(f"{k}={have.get(k)!r} (config: {want[k]!r})" for k in want if have.get(k) != want[k])
            if meta.get("version") != VERSION:
                diff = (diff + ", " if diff else "") + f"generator version {meta.get('version')!r} (now {VERSION})"
            raise DataError(f"{root} holds a synthetic dataset made with other settings: {diff}; "
                            f"delete the folder or choose another data_root")
        return root
    if (root / INDEX_FILE).is_file():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"data root {root} exists but holds no dataset ({INDEX_FILE} missing); "
                        f"empty it or choose another data_root")
    if progress:
        print(f"generating the synthetic dataset into {root} ({want['n_train']} train + {want['n_test']} test, "
              f"{want['size'][0]}x{want['size'][1]}, seed {want['seed']}, {want['scene_kind']} scenes)",
              file=sys.stderr)
    generate_synthetic(root, n_train=want["n_train"], n_test=want["n_test"], size=want["size"], seed=want["seed"],
                       num_classes=want["num_classes"], progress=progress, scene_kind=want["scene_kind"])
    return root


# --------------------------------------------------------------------------- CLI

def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 96x128, got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"height and width must be >= 8, got {text!r}")
    return h, w


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataloaders.synthetic",
        description="Generate synthetic indoor scenes (RGB, seg, depth, normals, edges, keypoints) in the NYUv2 layout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="output dataset root (must not exist or be empty)")
    parser.add_argument("--n-train", type=_count, default=DEFAULTS["n_train"], help="number of training images")
    parser.add_argument("--n-test", type=_count, default=DEFAULTS["n_test"], help="number of test images")
    parser.add_argument("--size", type=_size, default=(96, 128), metavar="HxW", help="image size, height x width")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same files, byte for byte")
    parser.add_argument("--num-classes", type=int, default=8,
                        help=f"segmentation classes ({MIN_CLASSES}..{MAX_CLASSES}): floor, wall, ceiling + object classes")
    parser.add_argument("--scene-kind", choices=SCENE_KINDS, default=SCENE_KINDS[0],
                        help="shared: rooms, every task from the same geometry; disentangled: seg, depth and "
                             "normals independent, each shown by its own cue (colour, blur, shading)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate_synthetic(args.out, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=args.seed,
                                 num_classes=args.num_classes, overwrite=args.force, progress=not args.quiet,
                                 scene_kind=args.scene_kind)
    except (ValueError, OSError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (nothing was written to the output folder)", file=sys.stderr)
        return 130
    n = args.n_train + args.n_test
    print(f"wrote {n} images ({args.n_train} train, {args.n_test} test, {args.size[0]}x{args.size[1]}, "
          f"{args.scene_kind} scenes) to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
