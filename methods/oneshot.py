r"""One-shot pruning: scores -> one mask set at the requested sparsity, then training with the masks fixed.

| method | network scored | saliency (default) | masks |
|---|---|---|---|
| `disparse_static` | fresh net | `pruning.saliency` (snip), per task | per-task top-k, backbone by the arbiter |
| `disparse_pt` | a trained dense net | `pruning.pt_saliency` (magnitude / grad_weight2), per task | same |
| `snip` | fresh net (or `--from`) | snip on the weighted summed loss | one global top-k |
| `random` | fresh net (or `--from`) | uniform random | one global top-k |
| `magnitude` | fresh net or a trained one (`--from`: one-shot IMP) | \|w\| | one global top-k |

The per-task methods find the keep ratio by search so that the arbiter's result has the target
sparsity (docs/ARCHITECTURE.md contract 7); a fixed keep ratio (`--keep-ratio`, the paper's table) is
the alternative. The task-agnostic baselines keep exactly the target count. create_pruned_net.py
writes `{dataset}_{method}_{ratio}.pth`; launch_training.py loads it and trains with the masks fixed
(`StaticSparsity`); `disparse_pt` trains with the original's retrain settings (docs/ORIGINAL.md §7.2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from engine.config import loss_weights
from engine.trainer import TrainOptions
from fileio import CheckpointError, load_weights
from prune_utils.mask_builder import global_topk, masks_for_keep_ratio, masks_for_sparsity
from prune_utils.masks import sparsity
from prune_utils.saliency import compute_scores, get_saliency
from prune_utils.sparse_training import StaticSparsity
from prune_utils.structure import TaskStructure

from .base import Method, PruneRequest, PruneResult, RunFiles, TrainingRun, ratio_label, require_file


class OneShotPruning(Method):
    """A method whose masks create_pruned_net.py makes once, before training.

    `saliency`: a saliency name, or a config key `pruning.<key>` holding one. `per_task`: per-task
    masks and an arbiter (DiSparse) or one global top-k over the weighted summed loss (the baselines).
    `pretrained`: the method whose `final_` checkpoint is pruned by default (None: a fresh net).
    `retrain`: train with the config's `retrain` section (iterations, constant LR) instead of `train`.
    """

    makes_pruned_file = True
    target_flag = "--ratio"                 # the create_pruned_net.py flag that names the pruned file

    def __init__(self, name: str, summary: str, *, saliency: str, per_task: bool,
                 pretrained: Optional[Method] = None, retrain: bool = False) -> None:
        self.name, self.summary = name, summary
        self.saliency, self.per_task, self.pretrained, self.retrain = saliency, per_task, pretrained, retrain
        if retrain:
            self.iterations_key = ("retrain", "iters")

    # ---------------------------------------------------------------- create_pruned_net.py
    def default_saliency(self, config: Mapping) -> str:
        if self.saliency.startswith("pruning."):
            return str(config["pruning"][self.saliency.split(".", 1)[1]])
        return self.saliency

    def dense_source(self, dest: str | Path, dataset: str, from_path: Optional[str]) -> Optional[Path]:
        if from_path or self.pretrained is None:
            return super().dense_source(dest, dataset, from_path)
        return require_file(self.pretrained.files(dest, dataset, None).checkpoint("final"), "dense checkpoint",
                            f" (train one with launch_training.py --dataset {dataset} --method {self.pretrained.name} "
                            f"--dest {dest}, or pass --from PATH)")

    def reads_data(self, config: Mapping, request: PruneRequest) -> bool:
        """Gradient saliencies read batches; magnitude and random scores do not."""
        return getattr(get_saliency(request.saliency or self.default_saliency(config)), "needs_data", True)

    def paper_keep_ratio(self, config: Mapping, ratio_percent: float) -> float:
        """The original's hand-tuned per-task keep ratio (docs/ORIGINAL.md §5.3); (100 − r)/100 off the table."""
        if not self.per_task:
            return super().paper_keep_ratio(config, ratio_percent)
        table = config["pruning"]["paper_keep_ratios"].get(self.name, {})
        table = {int(float(k)): float(v) for k, v in table.items()}
        if float(ratio_percent).is_integer() and int(ratio_percent) in table:
            return table[int(ratio_percent)]
        return (100.0 - float(ratio_percent)) / 100.0

    def prune(self, model: nn.Module, config: Mapping, request: PruneRequest, batches: Any, loss_fn: Any,
              device: torch.device, generator: torch.Generator, progress: Optional[bool] = None,
              structure: Optional[TaskStructure] = None) -> PruneResult:
        """Score `model` as `request` says and return the mask set (the model itself is not modified)."""
        saliency = request.saliency or self.default_saliency(config)
        weights = None if self.per_task else loss_weights(config)
        data = batches if self.reads_data(config, request) else None
        scores = compute_scores(model, data, loss_fn, list(config["tasks"]), method=saliency,
                                num_batches=request.num_batches, device=device, generator=generator,
                                task_agnostic_weights=weights, mode=request.scoring_mode, progress=progress,
                                structure=structure)
        info: dict[str, Any] = {}
        keep_ratio = request.keep_ratio
        if not self.per_task:
            masks = global_topk(scores, target_sparsity=request.target_sparsity, keep_ratio=request.keep_ratio)
        elif request.target_sparsity is not None:
            masks, keep_ratio, search = masks_for_sparsity(scores, request.target_sparsity, request.arbiter,
                                                           return_info=True, structure=structure)
            info = {"exact_evaluations": search["exact_evaluations"], "within_tol": search["within_tol"],
                    "k": {t: int(k) for t, k in search["k"].items()}}
        else:
            masks = masks_for_keep_ratio(scores, request.keep_ratio, request.arbiter, structure=structure)
        masks = {name: mask.clone() for name, mask in masks.items()}
        return PruneResult(masks=masks, sparsity=sparsity(masks), keep_ratio=keep_ratio, saliency=saliency, info=info,
                           reads_data=data is not None)

    # ---------------------------------------------------------------- launch_training.py
    def train_options(self, config: Mapping, **common: Any) -> TrainOptions:
        if not self.retrain:
            return super().train_options(config, **common)
        # the original's StepLR pointed at a discarded optimizer, so its retrain LR was constant too
        r = config["retrain"]
        return TrainOptions.from_config(config, max_iters=int(r["iters"]), lr=float(r["lr"]), constant_lr=True,
                                        **common)

    def start_file(self, files: RunFiles, from_path: Optional[str]) -> Path:
        if from_path:
            return require_file(Path(from_path), "pruned checkpoint")
        return require_file(files.pruned, "pruned checkpoint", f" (make it with create_pruned_net.py --dataset "
                            f"{files.dataset} --method {self.name} {self.target_flag} {ratio_label(files.ratio)} --dest "
                            f"{files.dest}, or pass --from PATH)")

    def start(self, run: TrainingRun) -> StaticSparsity:
        loaded = load_weights(run.start_file, run.model, run.config)
        if not loaded.masks:
            raise CheckpointError(f"{run.start_file} holds no masks (a dense checkpoint?): make a pruned net with "
                                  f"create_pruned_net.py --method {self.name} --ratio {ratio_label(run.ratio)}")
        return StaticSparsity(loaded.masks)
