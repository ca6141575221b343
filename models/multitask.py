"""The multitask network: one shared DeepLab-ResNet34 encoder and one ASPP head per task.

Parameter names are `backbone.<...>` (shared) and `heads.<task>.<...>` (owned by one task). Pruning,
arbiters and analysis read ownership from this module structure (`prune_utils.structure.TaskStructure`),
never from name patterns like `task1`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from .aspp_head import ASPPHead
from .resnet_backbone import DeepLabResNet34


class MultiTaskNet(nn.Module):
    """`tasks` is an ordered mapping task name -> output channels, e.g. `{"seg": 40, "sn": 3}`.

    `forward(img)` returns a dict task -> prediction at 1/8 of the input resolution.
    """

    def __init__(self, tasks: Mapping[str, int], width_mult: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskNet needs at least one task")
        for name, channels in tasks.items():
            if not isinstance(channels, int) or channels < 1:
                raise ValueError(f"task {name!r}: output channels must be a positive int, got {channels!r}")
        self.tasks: "OrderedDict[str, int]" = OrderedDict(tasks)
        self.width_mult = width_mult
        self.backbone = DeepLabResNet34(width_mult)
        hidden = max(1, int(round(1024 * width_mult)))
        self.heads = nn.ModuleDict({
            name: ASPPHead(self.backbone.out_channels, channels, hidden, dropout)
            for name, channels in self.tasks.items()})

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(img)
        return {name: head(features) for name, head in self.heads.items()}


def build_model(config: Mapping, device: torch.device | str = "cpu") -> MultiTaskNet:
    """The model a resolved config describes (tasks, classes, width, head dropout `model.dropout`, default
    0.5 as the original, memory format), on `device`."""
    model = MultiTaskNet(dict(zip(config["tasks"], config["num_classes"])), config["model"]["width_mult"],
                         dropout=float(config["model"].get("dropout", 0.5)))
    model = model.to(device)
    if config["model"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model
