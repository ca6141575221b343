"""The method registry: every `--method` name and the object that says what it means.

This is the one table to edit to add a method: instantiate a family (`OneShotPruning`, `ChannelPruning`,
`DynamicSparseTraining`, `IterativeMagnitudePruning`, `DenseTraining`, or a new `Method` subclass in
its own module) and list it here. The tools take their `--method` choices and every method-specific
decision from these objects (docs/ARCHITECTURE.md, "Methods").
"""
from __future__ import annotations

from typing import Callable, Mapping

from .base import Method
from .channel import ChannelPruning
from .dense import DenseTraining
from .dynamic import DynamicSparseTraining
from .lth import IterativeMagnitudePruning
from .oneshot import OneShotPruning

BASELINE = DenseTraining("baseline", "dense DeepLab-ResNet34 + one ASPP head per task")

METHODS: dict[str, Method] = {m.name: m for m in (
    BASELINE,
    OneShotPruning("disparse_static", "DiSparse at init: per-task SNIP on a Xavier copy, per-task top-k, backbone "
                   "by the arbiter", saliency="pruning.saliency", per_task=True),
    OneShotPruning("disparse_pt", "DiSparse on a trained net (pruning.pt_saliency), retrained at retrain.lr",
                   saliency="pruning.pt_saliency", per_task=True, pretrained=BASELINE, retrain=True),
    DynamicSparseTraining("disparse_dynamic", "DiSparse dynamic sparse training: per-task growth, arbiter for the "
                          "backbone", mode="disparse"),
    OneShotPruning("snip", "task-agnostic SNIP: one global top-k on the weighted summed loss", saliency="snip",
                   per_task=False),
    OneShotPruning("random", "task-agnostic random pruning: one global top-k of uniform scores", saliency="random",
                   per_task=False),
    OneShotPruning("magnitude", "task-agnostic magnitude pruning (with --from: one-shot IMP)", saliency="magnitude",
                   per_task=False),
    DynamicSparseTraining("rigl", "RigL: growth by the gradient of the weighted summed loss", mode="rigl"),
    IterativeMagnitudePruning("lth", "lottery ticket / iterative magnitude pruning with rewinding (config lth)"),
    ChannelPruning("disparse_channel", "structured DiSparse: per-task channel scores and top-k, backbone channels "
                   "by the arbiter; a smaller dense net (--macs-ratio / --params-ratio)"),
    ChannelPruning("channel_snip", "task-agnostic channel pruning: SNIP group scores of the weighted summed loss, "
                   "one global ranking"),
    ChannelPruning("channel_taylor", "task-agnostic channel pruning: first-order Taylor group scores of the "
                   "weighted summed loss, one global ranking"),
    ChannelPruning("channel_magnitude", "task-agnostic channel pruning: group L1 norms, one global ranking"),
    ChannelPruning("uniform", "every channel width scaled by the same factor (largest L1 norms kept)"),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (expected one of {', '.join(METHODS)})")
    return METHODS[name]


def method_names(where: Callable[[Method], bool] = lambda m: True) -> tuple[str, ...]:
    return tuple(name for name, method in METHODS.items() if where(method))


def pruning_methods() -> tuple[str, ...]:
    """The methods create_pruned_net.py makes."""
    return method_names(lambda m: m.makes_pruned_file)


def paper_keep_ratio(config: Mapping, name: str, ratio_percent: float) -> float:
    """The original's hand-tuned per-task keep ratio of a per-task method (`--paper-keep-ratios`)."""
    method = get_method(name)
    if not method.per_task:
        per_task = method_names(lambda m: m.per_task and m.makes_pruned_file and not m.structured)
        raise ValueError(f"--paper-keep-ratios applies to {' and '.join(per_task)}, not {name}")
    return method.paper_keep_ratio(config, ratio_percent)


def methods_table() -> str:
    """`name  summary` lines for the tools' --help."""
    width = max(len(name) for name in METHODS)
    return "\n".join(f"  {name:<{width}}  {method.summary}" for name, method in METHODS.items())
