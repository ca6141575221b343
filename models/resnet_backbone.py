"""DeepLab-ResNet34 backbone (docs/ORIGINAL.md §1.1).

Output stride 8: stage 2 downsamples, stages 3 and 4 dilate (2 and 4) instead. The residual sum and
its ReLU live in the backbone's forward, not in the block, and shortcuts sit in a separate `ds` list;
this keeps the original's module names (`backbone.blocks.{s}.{b}.conv{1,2}`, `backbone.ds.{s}.0`) so
original checkpoints map one-to-one.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 1, 1)
STAGE_DILATIONS = (1, 1, 2, 4)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN; the residual is added by the backbone.

    `mid_ch` (default `out_ch`) is the width between the two convs: channel pruning narrows it on its own.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, mid_ch: int | None = None) -> None:
        super().__init__()
        mid_ch = out_ch if mid_ch is None else mid_ch
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, stride=1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


def _needs_shortcut(in_ch: int, out_ch: int, stride: int, dilation: int) -> bool:
    """The original's rule: a projection when the shape changes or the stage is dilated (2 or 4)."""
    return stride != 1 or in_ch != out_ch or dilation in (2, 4)


class DeepLabResNet34(nn.Module):
    """Shared encoder. `width_mult` scales every stage width (1.0 = the paper's network).

    Explicit widths (a channel-pruned net, `models.architecture`) replace `width_mult`: `stem` (output of
    the first conv), `stage_widths` (the residual width of each stage) and `block_widths` (per stage, the
    inner width of each block); the shortcut rule is the same, so the module names do not change.
    """

    def __init__(self, width_mult: float = 1.0, *, stem: int | None = None, stage_widths: Sequence[int] | None = None,
                 block_widths: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        widths = [max(1, int(round(w * width_mult))) for w in STAGE_WIDTHS]
        widths = list(stage_widths) if stage_widths is not None else widths
        stem = widths[0] if stem is None else stem
        inner = [list(b) for b in block_widths] if block_widths is not None else [[w] * n for w, n in
                                                                                  zip(widths, STAGE_BLOCKS)]
        self.out_channels = widths[-1]
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

        blocks, shortcuts = [], []
        in_ch = stem
        for mids, out_ch, stride, dilation in zip(inner, widths, STAGE_STRIDES, STAGE_DILATIONS):
            stage = [BasicBlock(in_ch, out_ch, stride, dilation, mids[0])]
            stage += [BasicBlock(out_ch, out_ch, 1, dilation, mid) for mid in mids[1:]]
            blocks.append(nn.Sequential(*stage))
            if _needs_shortcut(in_ch, out_ch, stride, dilation):
                shortcuts.append(nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)))
            else:
                shortcuts.append(None)
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.ds = nn.ModuleList(shortcuts)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.01^2) for every conv, BN at identity: the original trains from scratch this way. A net built
        on the meta device (shapes only: the tools' structure and key checks) has no values to initialise, and
        torch's meta kernel for `normal_` would load torch._dynamo, seconds of a tool's start-up."""
        if self.conv1.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage, shortcut in zip(self.blocks, self.ds):
            for b, block in enumerate(stage):
                residual = shortcut(x) if (b == 0 and shortcut is not None) else x
                x = self.relu(residual + block(x))
        return x
