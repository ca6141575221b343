"""Pruning over any model with a task structure: the task partition (`structure`), saliency, the top-k
engine (`topk`), per-task masks and arbiters (`mask_builder`, `arbiters`), masked and dynamic sparse
training controllers, LTH's magnitude step, and the analyses (IoU, similarity, reports, plots).

It imports `fileio` and nothing else of the project: no model of its own, no trainer, no data.

The public API (docs/API.md) is re-exported here: `TaskSpec` and `TaskStructure` describe a user's
multitask model, `task_scores` / `build_masks` / `apply_masks` / `sparsity_report` prune it, and
`static_sparsity` / `dynamic_sparsity` keep it sparse in the user's own training loop.
"""
from .api import (SparseTraining, apply_masks, build_masks, dynamic_sparsity, load_masks, save_masks,
                  sparsity_report, static_sparsity, task_scores)
from .arbiters import ARBITERS, Arbiter, register_arbiter
from .masks import MaskSet, sparsity as mask_sparsity
from .report import format_table as format_report
from .saliency import SALIENCY, ScoreDict, register_saliency
from .structure import TaskStructure
from .task_spec import TaskSpec

__all__ = ["ARBITERS", "Arbiter", "MaskSet", "SALIENCY", "ScoreDict", "SparseTraining", "TaskSpec", "TaskStructure",
           "apply_masks", "build_masks", "dynamic_sparsity", "format_report", "load_masks", "mask_sparsity",
           "register_arbiter", "register_saliency", "save_masks", "sparsity_report", "static_sparsity", "task_scores"]
