"""The sparsity-controller protocol: the one interface between the trainer and anything that edits weights.

The trainer knows nothing of masks, saliency or arbiters; it drives an optional controller through
these calls (docs/ARCHITECTURE.md, "Controller protocol")::

    controller.attach(model, optimizer)                  # once, model on its final device
    for each step:
        record = controller.before_step(iteration, model, optimizer, batch, device)   # logged when not None
        forward, backward, optimizer.step()
        controller.after_step(model, optimizer)
    checkpoint["sparsity_state"] = controller.state_dict()     # plain types only (weights_only loading)
    checkpoint["masks"], checkpoint["sparsity"] = controller.masks, controller.sparsity()
    controller.load_state_dict(checkpoint["sparsity_state"])  # on --resume

`prune_utils.sparse_training.StaticSparsity` (fixed masks) and `DynamicSparsity` (DiSparse / RigL
updates) implement it. A controller gets the bare model (not the DDP wrapper): one that runs its own
forward/backward must reduce across ranks itself.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol

import torch
from torch import nn


class SparsityController(Protocol):
    masks: Optional[Mapping[str, torch.Tensor]]

    def attach(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> None: ...

    def before_step(self, iteration: int, model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    batch: Mapping[str, Any], device: Any = None) -> Optional[Mapping[str, Any]]: ...

    def after_step(self, model: Optional[nn.Module] = None,
                   optimizer: Optional[torch.optim.Optimizer] = None) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def sparsity(self) -> float: ...
