"""The synthetic indoor scenes (`dataloaders.synthetic`) rendered in memory as tensors, for the examples.

Each scene has an RGB image and agreeing label maps: `seg` (class ids, 255 = ignore), `depth` (metres),
`normal` (unit vectors, zero where undefined). Rendering 64 scenes of 48 x 64 takes about a second.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from dataloaders.synthetic import render_scene

NUM_CLASSES = 8


def render_scenes(count: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> dict[str, torch.Tensor]:
    """`count` scenes as tensors: img N x 3 x H x W in [-1, 1], seg N x H x W (long), depth N x 1 x H x W,
    normal N x 3 x H x W. Scene i is drawn from `numpy.random.default_rng([seed, i])`."""
    scenes = [render_scene(np.random.default_rng([seed, i]), size[0], size[1], NUM_CLASSES) for i in range(count)]
    stack = lambda key: torch.from_numpy(np.stack([s[key] for s in scenes]))   # noqa: E731
    return {"img": stack("rgb").permute(0, 3, 1, 2).float() / 127.5 - 1.0,
            "seg": stack("seg").long(),
            "depth": stack("depth").unsqueeze(1),
            "normal": stack("normal").permute(0, 3, 1, 2).contiguous()}


def batches(data: dict[str, torch.Tensor], batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """An endless stream of shuffled dict batches (one epoch after another)."""
    count = len(data["img"])
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield {key: value[index] for key, value in data.items()}


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in metres."""
    return (pred - target).abs().mean()


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine between predicted and true normals, over the pixels where the normal is defined."""
    valid = target.abs().sum(dim=1) > 0
    cosine = torch.nn.functional.cosine_similarity(pred, target, dim=1)
    return (1.0 - cosine[valid]).mean()


def pixel_accuracy(logits: torch.Tensor, seg: torch.Tensor) -> float:
    valid = seg != 255
    return float((logits.argmax(dim=1)[valid] == seg[valid]).float().mean())
