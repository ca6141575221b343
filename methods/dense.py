"""Dense training (`baseline`): the config's net, no sparsity controller, named `{dataset}_baseline`."""
from __future__ import annotations

from .base import Method


class DenseTraining(Method):
    """The multitask baseline: the `Method` defaults (a fresh net, `train.*` settings), no ratio in its name."""

    uses_ratio = False

    def __init__(self, name: str, summary: str) -> None:
        self.name, self.summary = name, summary
