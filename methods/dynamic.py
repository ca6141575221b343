"""Dynamic sparse training (`disparse_dynamic`, `rigl`): a fresh net with random ERK masks at the target
sparsity, whose masks the controller updates during training (config section `dynamic`;
`prune_utils.sparse_training.DynamicSparsity`, docs/ORIGINAL.md §6)."""
from __future__ import annotations

import torch

from prune_utils.sparse_training import MODES, DynamicSparsity

from .base import Method, TrainingRun


class DynamicSparseTraining(Method):
    """`mode` "disparse": per-task growth, the config's `pruning.arbiter` for the backbone;
    "rigl": growth by the gradient of the weighted summed loss."""

    def __init__(self, name: str, summary: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown dynamic sparsity mode {mode!r} (expected one of {', '.join(MODES)})")
        self.name, self.summary, self.mode = name, summary, mode

    def start(self, run: TrainingRun) -> DynamicSparsity:
        dyn = run.config["dynamic"]
        common = dict(model=run.model, density=1.0 - run.ratio / 100.0, interval=dyn["interval"], end=dyn["end"],
                      drop_fraction=dyn["drop_fraction"], tasks=list(run.config["tasks"]),
                      growth_splits=dyn["growth_splits"], generator=torch.Generator().manual_seed(run.seed))
        if self.mode == "disparse":
            return DynamicSparsity(mode="disparse", task_loss=run.loss_fn.task_loss,
                                   arbiter=run.config["pruning"]["arbiter"], **common)
        return DynamicSparsity(mode="rigl", total_loss=run.loss_fn, **common)
