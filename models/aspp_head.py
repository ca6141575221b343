"""DeepLab-v2 ASPP task head (docs/ORIGINAL.md §1.2): four atrous branches whose outputs are summed."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

ASPP_RATES = (6, 12, 18, 24)


class ASPPBranch(nn.Module):
    """3x3 atrous conv -> ReLU -> Dropout -> 1x1 -> ReLU -> Dropout -> 1x1 to the task's channels.

    `hidden2` (default `hidden`) is the output width of the middle 1x1 conv (channel pruning narrows the
    two hidden widths independently).
    """

    def __init__(self, in_ch: int, hidden: int, out_ch: int, rate: int, dropout: float = 0.5,
                 hidden2: int | None = None) -> None:
        super().__init__()
        hidden2 = hidden if hidden2 is None else hidden2
        self.conv1 = nn.Conv2d(in_ch, hidden, 3, padding=rate, dilation=rate, bias=True)
        self.conv2 = nn.Conv2d(hidden, hidden2, 1, bias=True)
        self.conv3 = nn.Conv2d(hidden2, out_ch, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.relu(self.conv1(x)))
        x = self.drop2(self.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    """Sum of the four branches `c0..c3` (rates 6, 12, 18, 24). Default PyTorch conv init, as the original.

    `branch_widths` (one `(hidden, hidden2)` pair per branch) replaces `hidden` for a channel-pruned head.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int = 1024, dropout: float = 0.5,
                 branch_widths: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        widths = [(hidden, hidden)] * len(ASPP_RATES) if branch_widths is None else [tuple(w) for w in branch_widths]
        if len(widths) != len(ASPP_RATES) or any(len(w) != 2 for w in widths):
            raise ValueError(f"branch_widths: one (hidden, hidden2) pair per branch ({len(ASPP_RATES)}), "
                             f"got {branch_widths!r}")
        self.branches = nn.ModuleList(ASPPBranch(in_ch, h1, out_ch, r, dropout, h2)
                                      for r, (h1, h2) in zip(ASPP_RATES, widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out
