r"""Per-task channel-group importance, by registry name (docs/CHANNELS.md).

A channel importance turns per-weight scores from the weight saliency machinery (`prune_utils.saliency`:
one shared forward per batch, one `autograd.grad` per task over that task's pool) into one score per
channel of every channel group, per task:

    `{task: {group name: FloatTensor[group size]}}` over each task's groups (shared ones, then its head's),
    or `{ALL: {...}}` over every group with `task_agnostic_weights` (the summed loss Σ_t λ_t L_t).

A channel's score sums over the group's weight slices that belong to the task's pool: the output slice
of each producing conv and the input slice of each consuming conv (BatchNorm and biases are not prunable
weights, docs/ARCHITECTURE.md contract 2, and do not count). For the stage-4 group, whose consumers include every
head's first convs, task t counts only its own head's slices.

| name | channel score | per-weight scores from | network |
|---|---|---|---|
| `snip` | Σ_group Σ_batches \|g_t\|·\|w\| | saliency `snip` | the Xavier-normal copy (as `disparse_static`) |
| `taylor` | \|Σ_group g_t·w\|, g_t = Σ_batches ∂L_t/∂w | signed gradient × weight | the net itself |
| `magnitude` | Σ_group \|w\| (the group L1 norm; the same for every task) | saliency `magnitude` | the net itself |

`taylor` is the first-order change of L_t when the channel is removed (all its weights set to zero), so the
signs cancel across the group before the absolute value; `snip` takes absolute values per weight and per
batch, as the weight-level SNIP does.

Why not Torch-Pruning's importance classes: they read one `.grad` per layer (no task axis), so per-task
scores would need one backward per task into `.grad` and a copy per task, while the weight saliency already
produces every task's gradients from one shared forward; they cannot express SNIP's per-batch |g| sums; and
their Taylor sums |Σ| per layer, not over the whole group. Torch-Pruning supplies the groups, this module
only reduces per-weight scores over them. Add your own with `register_channel_importance`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .channel_groups import ChannelGroups
from .saliency import ALL, GradientSaliency, copy_probe, get_saliency
from .structure import SHARED

GroupScores = dict[str, dict[str, torch.Tensor]]


def group_sums(weight_scores: Mapping[str, Mapping[str, torch.Tensor]], groups: ChannelGroups,
               absolute_of_sum: bool = False) -> GroupScores:
    """Per-weight scores `{key: {param name: tensor}}` summed into per-channel group scores `{key: {group: tensor}}`.

    A task key covers the shared groups and its own head's groups; ALL covers every group. Only the weights
    present in the key's scores count. `absolute_of_sum` takes |.| of each channel's sum (signed scores).
    """
    out: GroupScores = {}
    for key, per_weight in weight_scores.items():
        if key != ALL and key not in groups.tasks:
            raise ValueError(f"scores are keyed by {key!r}, which is neither a task of the model nor {ALL!r}")
        chosen = list(groups) if key == ALL else groups.pool(key)
        sums: dict[str, torch.Tensor] = {}
        for group in chosen:
            total = torch.zeros(group.size, dtype=torch.float32)
            found = False
            for member in group.weighted():
                scores = per_weight.get(member.weight)
                if scores is None:
                    continue
                found = True
                total += scores.detach().float().cpu().transpose(0, member.dim).reshape(group.size, -1).sum(1)
            if not found:
                raise ValueError(f"the scores of {key!r} cover no weight of channel group {group.name!r}")
            sums[group.name] = total.abs_() if absolute_of_sum else total
        out[key] = sums
    return out


class ChannelImportance:
    """Channel scores from a weight saliency (`saliency` is a registry name or a saliency object)."""

    def __init__(self, name: str, saliency: str | Callable[..., Any], absolute_of_sum: bool = False,
                 description: str = "") -> None:
        self.name = name
        self.saliency = saliency
        self.absolute_of_sum = absolute_of_sum
        self.description = description

    @property
    def needs_data(self) -> bool:
        return bool(getattr(get_saliency(self.saliency), "needs_data", True))

    def __call__(self, model: nn.Module, groups: ChannelGroups, batches: Iterable | None, loss_fn: Any,
                 tasks: Sequence[str], **options: Any) -> GroupScores:
        """`options` go to the weight saliency: num_batches, device, generator, task_agnostic_weights,
        shared_forward, mode, progress, input_key (see `prune_utils.saliency.compute_scores`)."""
        weight_scores = get_saliency(self.saliency)(model, batches, loss_fn, tasks, **options)
        return group_sums(weight_scores, groups, self.absolute_of_sum)

    def __repr__(self) -> str:
        return f"ChannelImportance({self.name!r})"


def _times_weight(acc: torch.Tensor, weight: torch.Tensor) -> None:
    acc.mul_(weight)


SIGNED_GRAD_WEIGHT = GradientSaliency("grad_weight_signed", copy_probe, _times_weight, signed=True)

CHANNEL_IMPORTANCE: dict[str, ChannelImportance] = {
    "snip": ChannelImportance("snip", "snip", description="group sum of |g_t|·|w| on the Xavier copy"),
    "taylor": ChannelImportance("taylor", SIGNED_GRAD_WEIGHT, absolute_of_sum=True,
                                description="|group sum of g_t·w| on the net (first-order Taylor of removal)"),
    "magnitude": ChannelImportance("magnitude", "magnitude", description="group L1 norm of the weights"),
}


def register_channel_importance(name: str, importance: ChannelImportance, overwrite: bool = False) -> None:
    """Make a channel importance available by name."""
    if name in CHANNEL_IMPORTANCE and not overwrite:
        raise ValueError(f"channel importance {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(importance):
        raise TypeError(f"channel importance {name!r} must be callable")
    CHANNEL_IMPORTANCE[name] = importance


def get_channel_importance(importance: str | ChannelImportance) -> ChannelImportance:
    if not isinstance(importance, str):
        return importance
    if importance not in CHANNEL_IMPORTANCE:
        raise ValueError(f"unknown channel importance {importance!r} (expected one of {', '.join(CHANNEL_IMPORTANCE)})")
    return CHANNEL_IMPORTANCE[importance]


def score_channels(model: nn.Module, groups: ChannelGroups, batches: Iterable | None, loss_fn: Any,
                   tasks: Sequence[str], importance: str | ChannelImportance = "snip", **options: Any) -> GroupScores:
    """Per-task channel scores `{task: {group: FloatTensor}}` (or `{ALL: ...}` with `task_agnostic_weights`)."""
    chosen = get_channel_importance(importance)
    if not chosen.needs_data:
        batches, loss_fn = None, None
    return chosen(model, groups, batches, loss_fn, tasks, **options)


def check_group_scores(scores: Mapping[str, Mapping[str, torch.Tensor]], groups: ChannelGroups) -> str:
    """'per_task' or 'task_agnostic' after checking that `scores` fit `groups` (one-line errors)."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("channel scores must map a task (or ALL) to {group name: tensor}")
    kind = "task_agnostic" if ALL in scores else "per_task"
    if kind == "task_agnostic" and len(scores) != 1:
        raise ValueError(f"channel scores mix {ALL!r} with per-task keys {[k for k in scores if k != ALL]}")
    for key, per_group in scores.items():
        expected = groups.names() if key == ALL else [g.name for g in groups.pool(key)]
        if sorted(per_group) != sorted(expected):
            missing = [n for n in expected if n not in per_group]
            extra = [n for n in per_group if n not in expected]
            raise ValueError(f"channel scores of {key!r} do not match the groups: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}")
        for name, value in per_group.items():
            if tuple(value.shape) != (groups[name].size,):
                raise ValueError(f"channel scores {key!r}/{name!r} have shape {tuple(value.shape)}, expected "
                                 f"({groups[name].size},)")
    if kind == "per_task":
        owners = {g.owner for g in groups} - {SHARED}
        missing_tasks = sorted(owners - set(scores))
        if missing_tasks:
            raise ValueError(f"channel scores lack task(s) {missing_tasks}: every head needs its task's scores")
    return kind
