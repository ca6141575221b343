"""Batches as the original's loaders return them, mapped onto our batch conventions.

The golden references (tests/test_golden_*.py) hold the original's loader outputs; feeding them to our
losses and metrics needs them in our conventions (docs/CONVENTIONS.md): decoded normals, 0 for invalid
depth, our validity rules.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from .base import clean_depth, decode_normal_png


def batch_from_original(dataset: str, batch: Mapping[str, torch.Tensor],
                        normals_where_depth_invalid: str = "keep") -> dict[str, torch.Tensor]:
    """A batch as the original's loaders return it (docs/ORIGINAL.md §2) -> our batch conventions
    (docs/CONVENTIONS.md), so the original's batches can be fed to our losses and metrics.

    Keys in: `seg`, `normal`, `depth`, `depth_mask` (Taskonomy), `keypoint`, `edge` (any subset), B×C×H×W.
    NYUv2 (and synthetic): uint8 B, G, R normals decoded with the loader's rule, depth of any float
    dtype. Cityscapes: labels keep −1. Taskonomy: 255 marks train-crop padding in every channel; depth
    counts iff ≠ 255 and `depth_mask` == 1 (ours: 0 elsewhere); normals padded with 255 become invalid,
    and where depth is invalid they are kept (the original) or masked (`normals_where_depth_invalid`).
    """
    def per_image(fn, x: torch.Tensor) -> torch.Tensor:
        out = [fn(img.permute(1, 2, 0).numpy()) for img in x.cpu()]
        return torch.from_numpy(np.stack([o if o.ndim == 3 else o[..., None] for o in out])).permute(0, 3, 1, 2)

    out: dict[str, torch.Tensor] = {}
    if "seg" in batch:
        out["seg"] = batch["seg"].to(torch.int64)
    for key in ("keypoint", "edge"):
        if key in batch:
            out[key] = batch[key].to(torch.float32)
    if dataset == "taskonomy":
        if "depth" in batch:
            depth, mask = batch["depth"].to(torch.float32), batch["depth_mask"]
            valid = (depth != 255) & (mask == 1)
            out["depth"] = torch.where(valid, depth, torch.zeros_like(depth))
        if "normal" in batch:
            normal = batch["normal"].to(torch.float32)
            invalid = (normal == 255).any(dim=1, keepdim=True)       # the original's "max channel" rule
            if normals_where_depth_invalid == "mask":
                invalid |= ~((batch["depth"] != 255) & (batch["depth_mask"] == 1))
            out["normal"] = torch.where(invalid, torch.zeros_like(normal), normal)
        return out
    if "depth" in batch:
        out["depth"] = per_image(lambda d: clean_depth(d[..., 0]), batch["depth"])
    if "normal" in batch:
        out["normal"] = per_image(decode_normal_png, batch["normal"])
    return out
