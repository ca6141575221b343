r"""One-shot pruning methods: from scores to one mask set at the requested sparsity (REFERENCE.md §5).

| method | network scored | saliency (default) | masks |
|---|---|---|---|
| `disparse_static` | fresh net | `pruning.saliency` (snip), per task | per-task top-k, backbone by the arbiter |
| `disparse_pt` | a trained dense net | `pruning.pt_saliency` (magnitude / grad_weight2), per task | same |
| `snip` | fresh net (or `--from`) | snip on the weighted summed loss | one global top-k |
| `random` | fresh net (or `--from`) | uniform random | one global top-k |
| `magnitude` | fresh net or a trained one (`--from`: one-shot IMP) | \|w\| | one global top-k |

The per-task methods find the keep ratio by search so that the arbiter's result has the target
sparsity (DESIGN.md contract 7); a fixed keep ratio (`--keep-ratio`, the paper's table) is the
alternative. The task-agnostic baselines keep exactly the target count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .mask_builder import global_topk, masks_for_keep_ratio, masks_for_sparsity
from .masks import MaskSet, sparsity

METHODS = ("disparse_static", "disparse_pt", "snip", "random", "magnitude")
PER_TASK_METHODS = ("disparse_static", "disparse_pt")
DATA_FREE_SALIENCY = ("magnitude", "random")


@dataclass
class PruneRequest:
    """What to prune and how. Exactly one of `target_sparsity` (a fraction) and `keep_ratio` is set."""

    method: str
    target_sparsity: float | None = None
    keep_ratio: float | None = None
    saliency: str | None = None        # None: the method's default from the config
    arbiter: str = "unanimous"
    num_batches: int = 1
    scoring_mode: str = "batch_stats"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown pruning method {self.method!r} (expected one of {', '.join(METHODS)})")
        if (self.target_sparsity is None) == (self.keep_ratio is None):
            raise ValueError("give exactly one of a target sparsity (--ratio) and a keep ratio (--keep-ratio)")


@dataclass
class PruneResult:
    masks: MaskSet
    sparsity: float
    keep_ratio: float | None
    saliency: str
    info: dict[str, Any] = field(default_factory=dict)


def default_saliency(method: str, config: Mapping) -> str:
    return {"disparse_static": config["pruning"]["saliency"], "disparse_pt": config["pruning"]["pt_saliency"],
            "snip": "snip", "random": "random", "magnitude": "magnitude"}[method]


def paper_keep_ratio(config: Mapping, method: str, ratio_percent: float) -> float:
    """The original's hand-tuned per-task keep ratio (REFERENCE.md §5.3); (100 − r)/100 off the table."""
    if method not in PER_TASK_METHODS:
        raise ValueError(f"--paper-keep-ratios applies to {' and '.join(PER_TASK_METHODS)}, not {method!r}")
    table = config["pruning"]["paper_keep_ratios"].get(method, {})
    table = {int(float(k)): float(v) for k, v in table.items()}
    if float(ratio_percent).is_integer() and int(ratio_percent) in table:
        return table[int(ratio_percent)]
    return (100.0 - float(ratio_percent)) / 100.0


def prune(model: nn.Module, config: Mapping, request: PruneRequest, batches: Iterable | None,
          loss_fn: Any, device: torch.device, generator: torch.Generator, progress: bool | None = None) -> PruneResult:
    """Score `model` as `request` says and return the mask set (the model itself is not modified)."""
    from .saliency import compute_scores

    saliency = request.saliency or default_saliency(request.method, config)
    tasks = list(config["tasks"])
    per_task = request.method in PER_TASK_METHODS
    weights = None if per_task else {t: float(w) for t, w in zip(tasks, config["loss_weights"])}
    data = None if saliency in DATA_FREE_SALIENCY else batches
    scores = compute_scores(model, data, loss_fn, tasks, method=saliency, num_batches=request.num_batches,
                            device=device, generator=generator, task_agnostic_weights=weights,
                            mode=request.scoring_mode, progress=progress)
    info: dict[str, Any] = {}
    keep_ratio = request.keep_ratio
    if per_task:
        if request.target_sparsity is not None:
            masks, keep_ratio, search = masks_for_sparsity(scores, request.target_sparsity, request.arbiter,
                                                           return_info=True)
            info = {"exact_evaluations": search["exact_evaluations"], "within_tol": search["within_tol"],
                    "k": {t: int(k) for t, k in search["k"].items()}}
        else:
            masks = masks_for_keep_ratio(scores, request.keep_ratio, request.arbiter)
    else:
        masks = global_topk(scores, target_sparsity=request.target_sparsity, keep_ratio=request.keep_ratio)
    masks = {name: mask.clone() for name, mask in masks.items()}
    return PruneResult(masks=masks, sparsity=sparsity(masks), keep_ratio=keep_ratio, saliency=saliency, info=info)
