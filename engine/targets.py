"""Ground-truth plumbing shared by losses, metrics and pruning: batch keys, validity, resizing.

`valid_mask` is the one place that decides which ground-truth pixels count (docs/CONVENTIONS.md):

| task | batch key | invalid pixels |
|---|---|---|
| seg | `seg` (int64 B×1×H×W) | `== ignore_index` (255; −1 for Cityscapes) |
| sn | `normal` (float32 B×3×H×W, unit vectors) | all three channels exactly 0 |
| depth | `depth` (float32 B×1×H×W) | `<= 3e-5` (stored as 0) |
| keypoint, edge | `keypoint`, `edge` (float32 B×1×H×W in [−1, 1]) | `== 255` |

Normal spaces (`NORMALS_SPACES`): our batches and nets use **decoded** unit normals (x, y, z). The original
code read NYUv2's normal PNGs with OpenCV and never decoded them: its targets were the raw 8-bit values in
BGR order, and its network learned the *direction* of that **encoded** vector. `encode_normals` maps our
targets (and predictions) into that space, so the original's loss, metric and checkpoints stay reachable.
There is no way back for a prediction: a direction in encoded space meets the sphere of encoded unit normals
twice, and both points are real normals (docs/METRICS.md).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

NORMALS_SPACES = ("decoded", "encoded")
ENCODE_SCALE = 127.5        # 8-bit PNG value v = (n + 1) · 127.5
TARGET_KEY: dict[str, str] = {"seg": "seg", "sn": "normal", "depth": "depth", "keypoint": "keypoint", "edge": "edge"}
DEPTH_MIN_VALID = 3e-5      # depth <= this is "no measurement" (stored as 0)
INVALID_DENSE = 255         # keypoint / edge invalid value


def _check_task(task: str) -> None:
    if task not in TARGET_KEY:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TARGET_KEY)})")


def _as_4d(target: torch.Tensor) -> torch.Tensor:
    if target.ndim == 3:          # B×H×W label map
        return target.unsqueeze(1)
    if target.ndim != 4:
        raise ValueError(f"expected a B×C×H×W (or B×H×W) target, got shape {tuple(target.shape)}")
    return target


def get_target(task: str, batch: dict) -> torch.Tensor:
    """The ground truth of `task` in `batch` (4-D), with a one-line error when the key is missing."""
    _check_task(task)
    key = TARGET_KEY[task]
    if key not in batch:
        raise ValueError(f"batch has no {key!r} entry for task {task!r} (keys: {', '.join(map(str, batch))})")
    return _as_4d(batch[key])


def valid_mask(task: str, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Bool B×1×H×W: True where the ground truth of `task` is a real measurement/label."""
    _check_task(task)
    target = _as_4d(target)
    if task == "seg":
        valid = target != ignore_index
        return valid.all(dim=1, keepdim=True) if valid.shape[1] != 1 else valid
    if task == "sn":
        return (target != 0).any(dim=1, keepdim=True)
    if task == "depth":
        return target.sum(dim=1, keepdim=True) > DEPTH_MIN_VALID
    return (target != INVALID_DENSE).all(dim=1, keepdim=True)      # keypoint, edge


def resize_nearest(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Legacy `F.interpolate(mode="nearest")` of a ground-truth map to `size` (H, W).

    Source index = floor(i · in / out), exactly as PyTorch's default nearest mode (not "nearest-exact").
    Integer and bool maps (int64 seg labels included) keep their dtype and values; a 3-D B×H×W map
    comes back 3-D.
    """
    size = (int(size[0]), int(size[1]))
    squeeze = target.ndim == 3
    x = _as_4d(target)
    if tuple(x.shape[-2:]) == size:
        return target
    if x.is_floating_point():
        out = F.interpolate(x, size=size, mode="nearest")
    else:
        # Nearest interpolation is not implemented for integer dtypes; float64 holds any label exactly.
        work = torch.float32 if x.device.type == "mps" else torch.float64
        out = F.interpolate(x.to(work), size=size, mode="nearest").to(x.dtype)
    return out.squeeze(1) if squeeze else out


def encode_normals(normal: torch.Tensor, exact_8bit: bool = False) -> torch.Tensor:
    """Decoded B×3×H×W normals (x, y, z) -> the original's encoded space: (n + 1)·127.5, channels reversed
    to B, G, R (OpenCV's order of the PNG's R, G, B). Invalid (all-zero) pixels stay all-zero.

    `exact_8bit`: round to the nearest integer, which recovers the PNG values the original read exactly
    (our decode v·2/255 − 1 is off by float32 rounding only); use it for ground truth from 8-bit files.
    """
    valid = (normal != 0).any(dim=1, keepdim=True)
    encoded = (normal.flip(1) + 1.0) * ENCODE_SCALE
    if exact_8bit:
        encoded = torch.round(encoded)
    return torch.where(valid, encoded, torch.zeros_like(encoded))


def encoded_normals_target(normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the original's 8-bit B, G, R target, its validity B×1×H×W) for decoded ground truth.

    Validity is the original's rule in that space: a pixel counts iff its largest channel is below 255
    (so an axis-aligned normal with a +1 component is dropped too, not only the (255, 255, 255) fill),
    on top of our own invalid (all-zero) pixels.
    """
    encoded = encode_normals(normal, exact_8bit=True)
    valid = valid_mask("sn", normal) & (encoded.amax(dim=1, keepdim=True) < 255)
    return encoded, valid

