"""Temporarily switching a net to eval mode, restoring every submodule's own mode afterwards."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block (no BatchNorm statistic updates, no dropout draws); afterwards each
    submodule is back in the mode it had, even where they differed (a frozen BatchNorm in a training net)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
