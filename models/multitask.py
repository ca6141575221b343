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

from .architecture import check_architecture
from .aspp_head import ASPPHead
from .resnet_backbone import DeepLabResNet34


class MultiTaskNet(nn.Module):
    """`tasks` is an ordered mapping task name -> output channels, e.g. `{"seg": 40, "sn": 3}`.

    `forward(img)` returns a dict task -> prediction at 1/8 of the input resolution.
    """

    def __init__(self, tasks: Mapping[str, int], width_mult: float = 1.0, dropout: float = 0.5,
                 architecture: Mapping | None = None) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskNet needs at least one task")
        for name, channels in tasks.items():
            if not isinstance(channels, int) or channels < 1:
                raise ValueError(f"task {name!r}: output channels must be a positive int, got {channels!r}")
        self.tasks: "OrderedDict[str, int]" = OrderedDict(tasks)
        if architecture is None:
            self.width_mult: float | None = width_mult
            self.backbone = DeepLabResNet34(width_mult)
            hidden = max(1, int(round(1024 * width_mult)))
            self.heads = nn.ModuleDict({
                name: ASPPHead(self.backbone.out_channels, channels, hidden, dropout)
                for name, channels in self.tasks.items()})
            return
        # explicit per-layer widths (a channel-pruned net, docs/CHANNELS.md); width_mult does not apply
        check_architecture(architecture, list(self.tasks))
        self.width_mult = None
        backbone = architecture["backbone"]
        self.backbone = DeepLabResNet34(stem=backbone["stem"], stage_widths=backbone["stage_widths"],
                                        block_widths=backbone["block_widths"])
        self.heads = nn.ModuleDict({
            name: ASPPHead(self.backbone.out_channels, channels, dropout=dropout,
                           branch_widths=architecture["heads"][name])
            for name, channels in self.tasks.items()})

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(img)
        return {name: head(features) for name, head in self.heads.items()}


def build_model(config: Mapping, device: torch.device | str = "cpu", architecture: Mapping | None = None) -> MultiTaskNet:
    """The model a resolved config describes (tasks, classes, width, head dropout `model.dropout`, default
    0.5 as the original, memory format), on `device`; with an `architecture` spec (a channel-pruned net's,
    `models.architecture`) its widths replace `width_mult`."""
    model = MultiTaskNet(dict(zip(config["tasks"], config["num_classes"])), config["model"]["width_mult"],
                         dropout=float(config["model"].get("dropout", 0.5)), architecture=architecture)
    model = model.to(device)
    if config["model"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model
