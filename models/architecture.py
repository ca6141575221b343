"""Architecture specs: the per-layer channel widths of a `MultiTaskNet`, as plain types.

A channel-pruned net is an ordinary dense net with other widths. Its checkpoint stores this spec next to
the state dict, so it is rebuilt with `MultiTaskNet(tasks, architecture=spec)` and loads with
`torch.load(..., weights_only=True)`: no pickled modules (docs/CHANNELS.md).

    {"version": 1,
     "backbone": {"stem": 64,                                  # output of backbone.conv1
                  "stage_widths": [64, 128, 256, 512],         # residual width of each stage
                  "block_widths": [[64, 64, 64], [128] * 4,    # per block: width between conv1 and conv2
                                   [256] * 6, [512] * 3]},
     "heads": {"seg": [[1024, 1024]] * 4,                       # per ASPP branch: conv1 and conv2 output widths
               "sn": [[1024, 1024]] * 4}}

The task output widths are not part of the spec: they are the model's `tasks` (checkpoint `num_classes`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from .aspp_head import ASPP_RATES
from .resnet_backbone import STAGE_BLOCKS, STAGE_WIDTHS

ARCHITECTURE_VERSION = 1
Architecture = dict[str, Any]


def default_architecture(tasks: Sequence[str], width_mult: float = 1.0) -> Architecture:
    """The spec of `MultiTaskNet(tasks, width_mult)`: building from it gives the same net, bit for bit."""
    widths = [max(1, int(round(w * width_mult))) for w in STAGE_WIDTHS]
    hidden = max(1, int(round(1024 * width_mult)))
    return {"version": ARCHITECTURE_VERSION,
            "backbone": {"stem": widths[0], "stage_widths": widths,
                         "block_widths": [[w] * n for w, n in zip(widths, STAGE_BLOCKS)]},
            "heads": {task: [[hidden, hidden] for _ in ASPP_RATES] for task in tasks}}


def architecture_of(model: nn.Module) -> Architecture:
    """The spec read from a built (possibly channel-pruned) net's layers."""
    model = getattr(model, "module", model)
    backbone = model.backbone
    return {"version": ARCHITECTURE_VERSION,
            "backbone": {"stem": int(backbone.conv1.out_channels),
                         "stage_widths": [int(stage[0].conv2.out_channels) for stage in backbone.blocks],
                         "block_widths": [[int(block.conv1.out_channels) for block in stage]
                                          for stage in backbone.blocks]},
            "heads": {task: [[int(b.conv1.out_channels), int(b.conv2.out_channels)] for b in head.branches]
                      for task, head in model.heads.items()}}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _int_list(value: Any, length: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == length and all(_positive_int(v) for v in value)


def check_architecture(architecture: Any, tasks: Sequence[str]) -> None:
    """Raise ValueError (one line) unless `architecture` is a valid spec with one head per task in `tasks`."""
    if not isinstance(architecture, Mapping):
        raise ValueError(f"architecture spec must be a dict, got {type(architecture).__name__}")
    if architecture.get("version") != ARCHITECTURE_VERSION:
        raise ValueError(f"architecture spec version {architecture.get('version')!r} is not supported "
                         f"(expected {ARCHITECTURE_VERSION})")
    backbone = architecture.get("backbone")
    if not isinstance(backbone, Mapping):
        raise ValueError("architecture spec lacks a 'backbone' dict")
    if not _positive_int(backbone.get("stem")):
        raise ValueError(f"architecture backbone.stem must be a positive int, got {backbone.get('stem')!r}")
    if not _int_list(backbone.get("stage_widths"), len(STAGE_WIDTHS)):
        raise ValueError(f"architecture backbone.stage_widths must be {len(STAGE_WIDTHS)} positive ints, "
                         f"got {backbone.get('stage_widths')!r}")
    blocks = backbone.get("block_widths")
    if (not isinstance(blocks, (list, tuple)) or len(blocks) != len(STAGE_BLOCKS)
            or not all(_int_list(b, n) for b, n in zip(blocks, STAGE_BLOCKS))):
        raise ValueError(f"architecture backbone.block_widths must be lists of {list(STAGE_BLOCKS)} positive ints, "
                         f"got {blocks!r}")
    heads = architecture.get("heads")
    if not isinstance(heads, Mapping) or list(heads) != list(tasks):
        found = list(heads) if isinstance(heads, Mapping) else heads
        raise ValueError(f"architecture heads {found!r} do not match the tasks {list(tasks)}")
    for task, branches in heads.items():
        if (not isinstance(branches, (list, tuple)) or len(branches) != len(ASPP_RATES)
                or not all(_int_list(b, 2) for b in branches)):
            raise ValueError(f"architecture heads.{task} must be {len(ASPP_RATES)} [hidden, hidden2] pairs of "
                             f"positive ints, got {branches!r}")
