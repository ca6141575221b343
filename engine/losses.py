"""Per-task training losses (docs/ORIGINAL.md §3) and their weighted multitask sum.

The ground truth is nearest-resized (legacy `F.interpolate` nearest) down to the prediction's size;
predictions are never upsampled for the loss. Validity comes from `engine.targets.valid_mask`.

| task | loss |
|---|---|
| seg | cross-entropy over valid pixels (`!= ignore_index`), optional class weights: Σ w_y·nll / Σ w_y, as `F.cross_entropy` |
| sn | 1 − mean over valid pixels of cos(normalize(pred), normalize(gt)); with `normals_space="encoded"` (the original's NYUv2 loss) gt is the encoded B, G, R 0..255 vector (valid iff its largest channel < 255, the original's rule) and pred is read in that space |
| depth, keypoint, edge | mean |pred − gt| over valid pixels |

A batch with no valid pixel for a task gives 0 (a tensor still connected to the prediction, so
`backward()` works and gives zero gradients), never NaN. No host-device synchronisation happens.
Losses are computed in float32 whatever the prediction's dtype (bf16/AMP safe).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from fileio.normals import normals_space_of

from .targets import NORMALS_SPACES, TARGET_KEY, encoded_normals_target, get_target, resize_nearest, valid_mask

DEFAULT_IGNORE_INDEX = {"cityscapes": -1}


def _as_weights(class_weights: Any) -> torch.Tensor | None:
    if class_weights is None:
        return None
    return torch.as_tensor(class_weights, dtype=torch.float32).flatten()


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `valid` pixels; 0 (graph-connected) when there is none."""
    total = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    count = valid.sum().clamp_min(1)
    return total / count


class TaskLoss:
    """Unweighted single-task loss: `loss(task, pred, batch) -> scalar tensor`.

    This is the term pruning (saliency, gradient growth) uses for one task, the λ weight left out
    (docs/ORIGINAL.md §3, the DiSparse single-task variant). An unknown task is a ValueError.
    `normals_space`: "decoded" (ours: the sn head predicts x, y, z) or "encoded" (the original's NYUv2
    loss: the head's output is a direction in the PNG's encoded B, G, R space, compared with the raw
    8-bit target vector; its gradients, hence its saliency masks, differ from the decoded loss).
    """

    def __init__(self, ignore_index: int = 255, class_weights: Any = None, normals_space: str = "decoded") -> None:
        if normals_space not in NORMALS_SPACES:
            raise ValueError(f"unknown normals space {normals_space!r} (expected one of {', '.join(NORMALS_SPACES)})")
        self.normals_space = normals_space
        self.ignore_index = int(ignore_index)
        self.class_weights = _as_weights(class_weights)
        self._weights_on: dict[tuple, torch.Tensor] = {}

    def _weights(self, num_classes: int, device: torch.device) -> torch.Tensor | None:
        if self.class_weights is None:
            return None
        key = (str(device), num_classes)
        if key not in self._weights_on:
            if self.class_weights.numel() < num_classes:
                raise ValueError(f"class_weights has {self.class_weights.numel()} entries, "
                                 f"fewer than the {num_classes} segmentation classes")
            self._weights_on[key] = self.class_weights[:num_classes].to(device)
        return self._weights_on[key]

    def __call__(self, task: str, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        target = get_target(task, batch).to(pred.device, non_blocking=True)
        target = resize_nearest(target, pred.shape[-2:])
        valid = valid_mask(task, target, self.ignore_index)
        pred = pred.float()
        if task == "seg":
            return self._seg(pred, target, valid)
        if task == "sn":
            target = target.float()
            if self.normals_space == "encoded":
                target, valid = encoded_normals_target(target)
            cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1, keepdim=True)
            return _masked_mean(1.0 - cos, valid)
        if pred.shape[1] != target.shape[1]:
            raise ValueError(f"task {task!r}: prediction has {pred.shape[1]} channels, target {target.shape[1]}")
        return _masked_mean((pred - target.float()).abs(), valid.expand_as(pred))

    def _seg(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        labels = target[:, 0].long()
        valid = valid[:, 0]
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        weight = self._weights(logits.shape[1], logits.device)
        nll = F.cross_entropy(logits, safe, weight=weight, reduction="none")   # = w[y]·nll when weighted
        zero = torch.zeros((), dtype=nll.dtype, device=nll.device)
        total = torch.where(valid, nll, zero).sum()
        if weight is None:
            denom = valid.sum().to(nll.dtype)
        else:
            denom = torch.where(valid, weight[safe], zero).sum()
        return total / torch.where(denom > 0, denom, torch.ones_like(denom))


class MultiTaskLoss:
    """Σ_t λ_t·L_t over `tasks` (in the given order).

    `loss(preds, batch) -> (total, {task: detached L_t})` (the per-task terms are unweighted, detached
    0-dim tensors: call `.item()` only when logging). `loss.single(task, preds, batch)` is the
    unweighted single-task term.
    """

    def __init__(self, tasks: Sequence[str], weights: Sequence[float], ignore_index: int = 255,
                 class_weights: Any = None, normals_space: str = "decoded") -> None:
        tasks = list(tasks)
        if len(tasks) != len(weights):
            raise ValueError(f"MultiTaskLoss: {len(tasks)} tasks but {len(weights)} weights")
        for task in tasks:
            if task not in TARGET_KEY:
                raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TARGET_KEY)})")
        self.tasks = tasks
        self.weights = {t: float(w) for t, w in zip(tasks, weights)}
        self.task_loss = TaskLoss(ignore_index, class_weights, normals_space)

    @property
    def ignore_index(self) -> int:
        return self.task_loss.ignore_index

    def single(self, task: str, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if task not in preds:
            raise ValueError(f"no prediction for task {task!r} (got {', '.join(preds)})")
        return self.task_loss(task, preds[task], batch)

    def __call__(self, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        terms: dict[str, torch.Tensor] = {}
        for task in self.tasks:
            term = self.single(task, preds, batch)
            terms[task] = term.detach()
            weighted = self.weights[task] * term
            total = weighted if total is None else total + weighted
        return total, terms


def build_loss(config: Mapping[str, Any], dataset: Any = None) -> MultiTaskLoss:
    """The multitask loss of a resolved config: tasks, `loss_weights` and `loss.normals_space` from the
    config, `ignore_index` / `class_weights` from the dataset object's attributes (when `dataset` is None:
    −1 for Cityscapes, 255 otherwise, no class weights)."""
    default_ignore = DEFAULT_IGNORE_INDEX.get(config.get("dataset"), 255)
    ignore_index = getattr(dataset, "ignore_index", default_ignore) if dataset is not None else default_ignore
    class_weights = getattr(dataset, "class_weights", None) if dataset is not None else None
    return MultiTaskLoss(config["tasks"], config["loss_weights"], ignore_index, class_weights,
                         normals_space=normals_space_of(config))

