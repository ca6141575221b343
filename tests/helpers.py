"""Small builders shared by the sparse-training tests: a tiny 2-task net and a hand-made batch."""
from __future__ import annotations

import torch

from models import MultiTaskNet

TASKS = {"seg": 5, "sn": 3}


def tiny_net(seed: int = 0) -> MultiTaskNet:
    torch.manual_seed(seed)
    return MultiTaskNet(TASKS, width_mult=0.0625)


def make_batch(seed: int, b: int = 2, size: int = 32) -> dict:
    """Random image, seg labels in 0..4, unit normals (docs/CONVENTIONS.md batch keys)."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(b, 3, size, size, generator=g)
    return {"img": torch.randn(b, 3, size, size, generator=g),
            "seg": torch.randint(0, 5, (b, 1, size, size), generator=g),
            "normal": normal / normal.norm(dim=1, keepdim=True),
            "name": [f"img{seed}_{i}" for i in range(b)]}
