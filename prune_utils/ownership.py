"""Task ownership by gradient flow: which prunable weights each task's loss reaches.

A weight belongs to a task when the task's loss is connected to it in the autograd graph, i.e. when
the backward pass of that loss would visit the weight's gradient accumulator. This is structural
reachability, read by walking `loss.grad_fn` and its `next_functions`; no gradient is computed. So a
weight whose gradient happens to be exactly zero on the probe batch (a ReLU that is off everywhere, a
branch multiplied by zero) still belongs to the task, while a weight the loss cannot reach (a module
the forward skips, one used under `torch.no_grad()` or through `.detach()`) does not. Weights no task
reaches are reported by `TaskStructure` (`unowned`), never silently pruned or kept.

Limits: a forward that hides its graph (reentrant `torch.utils.checkpoint`, custom autograd Functions
that take weights as non-tensor arguments) hides the weights inside it too; pass the ownership
explicitly (`TaskStructure.from_modules`) for such models.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Protocol

import torch
from torch import nn

from .batches import restored_buffers, to_device
from .masks import prunable_parameters, unwrap


class LossProbe(Protocol):
    """What ownership inference needs from a task specification (`prune_utils.TaskSpec` is one)."""

    tasks: tuple[str, ...]

    def task_losses(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]: ...


def reached_by(loss: torch.Tensor, weights: Mapping[str, torch.Tensor], task: str = "the task") -> list[str]:
    """Names of `weights` that `loss` reaches in the autograd graph, in `weights`' order."""
    if not torch.is_tensor(loss):
        raise TypeError(f"the loss of task {task!r} must be a tensor, got {type(loss).__name__}")
    by_id = {id(w): name for name, w in weights.items()}
    if loss.grad_fn is None:
        if loss.requires_grad and id(loss) in by_id:        # the loss is a weight itself
            return [by_id[id(loss)]]
        raise ValueError(f"the loss of task {task!r} has no autograd graph (computed under torch.no_grad(), "
                         f"detached, or from frozen weights only): it reaches no weight")
    found: set[str] = set()
    seen: dict[int, Any] = {}                                # keeps the visited nodes alive: ids stay unique
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)          # AccumulateGrad: the leaf it accumulates into
        if variable is not None and id(variable) in by_id:
            found.add(by_id[id(variable)])
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return [name for name in weights if name in found]


@contextmanager
def probe_task_losses(model: nn.Module, spec: LossProbe, batch: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Each task's loss on `batch` (moved to the model's device), with the graph kept for `reached_by`.

    Every prunable weight requires grad during the probe (so frozen weights are seen too); afterwards the
    `requires_grad` flags, the buffers (BatchNorm statistics) and the global RNG (dropout draws) are
    as they were."""
    net = unwrap(model)
    weights = prunable_parameters(net)
    if not weights:
        raise ValueError(f"{type(net).__name__} has no prunable weight (nn.Conv2d / nn.Linear)")
    flags = {name: w.requires_grad for name, w in weights.items()}
    devices = sorted({w.device.index or 0 for w in weights.values() if w.device.type == "cuda"})
    batch = to_device(batch, next(iter(weights.values())).device)
    try:
        for weight in weights.values():
            weight.requires_grad_(True)
        with restored_buffers(net), torch.random.fork_rng(devices=devices), torch.enable_grad():
            yield spec.task_losses(model, batch)
    finally:
        for name, weight in weights.items():
            weight.requires_grad_(flags[name])
