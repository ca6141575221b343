"""Scoring a net per task for the analysis tools: data, loss and model built from a config.

The IoU analysis and the task-similarity study both score a network per task over a few training
batches; this is the one place that turns a config into those batches, the loss and (for a fresh
net) the model, then calls `prune_utils.saliency.compute_scores`.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from dataloaders import ScoringBatches, build_scoring_batches
from engine import losses
from engine.runtime import seed_everything
from models import build_model
from prune_utils.saliency import compute_scores, get_saliency
from prune_utils.structure import TaskStructure

Scores = dict[str, dict[str, torch.Tensor]]


def scoring_batches(config: Mapping, method: str, *, seed: int, num_batches: int, batch_size: int | None = None,
                    split: str = "train") -> ScoringBatches | None:
    """The batches `method` scores with: `num_batches` of `split`, drawn with a shuffle seeded by `seed` (a
    short split is restarted with a new shuffle, so `num_batches` is honoured on the 3-frame NYUv2 samples),
    their loader workers started now (`dataloaders.build_scoring_batches`); None for a data-free method."""
    if num_batches < 1:
        raise ValueError(f"--num_batches must be at least 1, got {num_batches}")
    if not getattr(get_saliency(method), "needs_data", True):
        return None
    return build_scoring_batches(config, split, num_batches=num_batches, batch_size=batch_size, seed=seed)


def score_net(config: Mapping, model: torch.nn.Module, *, seed: int, num_batches: int, method: str,
              batch_size: int | None = None, device: Any = "cpu", progress: bool = True, split: str = "train",
              mode: str = "batch_stats", structure: TaskStructure | None = None,
              batches: ScoringBatches | None = None) -> Scores:
    """Per-task saliency (task -> {param: score}, backbone + own head) of `model`.

    Gradient methods use `batches` (default: `scoring_batches(config, method, seed=seed, ...)`, made here);
    `seed` also seeds the saliency's own randomness (SNIP's Xavier re-draw, dropout in mode "train").
    Data-free methods (magnitude, random) read no data. `mode`: see `prune_utils.saliency`.
    """
    if batches is None:
        batches = scoring_batches(config, method, seed=seed, num_batches=num_batches, batch_size=batch_size,
                                  split=split)
    tasks = list(config["tasks"])
    if batches is None:
        return compute_scores(model, None, None, tasks, method=method, device=device, generator=seed,
                              structure=structure)
    loss = losses.build_loss(config, batches.dataset)
    return compute_scores(model, batches, loss, tasks, method=method, num_batches=num_batches, device=device,
                          generator=seed, mode=mode, progress=progress, structure=structure)


def score_fresh_net(config: Mapping, *, seed: int, num_batches: int, method: str, batch_size: int | None = None,
                    device: Any = "cpu", progress: bool = True, mode: str = "batch_stats") -> Scores:
    """docs/ORIGINAL.md §8 / §9 scoring: seed everything, build a freshly initialised net, score it per task.

    The batches (and their loader workers) are made before the net, while the process is still small."""
    seed_everything(seed)
    batches = scoring_batches(config, method, seed=seed, num_batches=num_batches, batch_size=batch_size)
    model = build_model(config, device)
    return score_net(config, model, seed=seed, num_batches=num_batches, method=method, batch_size=batch_size,
                     device=device, progress=progress, mode=mode, batches=batches)
