"""Channel groups of a multitask net, their owners, and physical channel removal (docs/CHANNELS.md).

A *channel group* is a set of channels that must be removed together: a conv's output channels with its
BatchNorm and the input channels of every conv that reads them. Residual additions couple a whole stage
(every block's output, the shortcut projection, the next consumers, and for the last stage every task
head's input) into one group. Torch-Pruning's `DependencyGraph` finds the groups by tracing the net, and
removes the channels; this module adds what is multitask-specific:

* **ownership**, read from the model's `TaskStructure` (`prune_utils.structure`): a group touching a shared
  layer is shared (`SHARED`); a group whose weighted layers all belong to one task's head belongs to that task;
* **outputs are never pruned**: a group that reaches a model output (the convs that emit a task's classes or
  channels, coupled through the ASPP branch sum) is left out, so every task keeps its output width;
* a **plain description** (`ChannelGroup`: layer names and roles, no Torch-Pruning objects), so scores,
  selections and reports are plain data that outlive the traced graph.

A group's name is its first output-producing layer in `named_modules` order (`backbone.conv1` is the
stem + stage-1 residual group, `backbone.blocks.2.0.conv2` the stage-3 residual group,
`backbone.blocks.2.0.conv1` a block's inner width, `heads.seg.branches.0.conv1` a head's hidden width).
`ChannelGroups.structure` is a `TaskStructure` over the group names (shared groups, each task's own), so the
mask builder and the arbiters treat groups like parameters.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from models.modes import eval_mode

from .masks import unwrap
from .structure import SHARED, TaskStructure

OUT, IN, NORM = "out", "in", "norm"
WEIGHTED = (nn.Conv2d, nn.Linear)
NORMS = (nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class Member:
    """One layer of a group: `kind` OUT (its output channels), IN (its input channels) or NORM (BatchNorm)."""

    layer: str
    kind: str

    @property
    def weight(self) -> str:
        return f"{self.layer}.weight"

    @property
    def dim(self) -> int:
        """The weight dimension that indexes the group's channels (OUT/NORM: 0, IN: 1)."""
        return 1 if self.kind == IN else 0


@dataclass(frozen=True)
class ChannelGroup:
    """`size` coupled channels; channel i is index i of every member (no index remapping here)."""

    name: str
    owner: str
    size: int
    members: tuple[Member, ...]

    def weighted(self) -> list[Member]:
        """Members whose weights are prunable (Conv2d / Linear: docs/ARCHITECTURE.md contract 2), in member order."""
        return [m for m in self.members if m.kind in (OUT, IN)]


class ChannelGroups:
    """The prunable channel groups of one model, in forward (`named_modules`) order.

    `structure` is their task partition: a `TaskStructure` whose "parameters" are the group names (a shared
    group is used by every task, a head's group by its task), the form the mask builder and arbiters take.
    """

    def __init__(self, groups: Sequence[ChannelGroup], tasks: Sequence[str], fixed: Sequence[str] = ()) -> None:
        self.groups = list(groups)
        self.by_name = {g.name: g for g in self.groups}
        self.tasks = list(tasks)
        self.fixed = list(fixed)        # layers whose output channels reach a model output (never pruned)
        self.structure = group_structure({g.name: g.owner for g in self.groups}, self.tasks)

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, name: str) -> ChannelGroup:
        return self.by_name[name]

    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def shared(self) -> list[ChannelGroup]:
        return [self.by_name[name] for name in self.structure.shared]

    def pool(self, task: str) -> list[ChannelGroup]:
        """The groups a task ranks: the shared ones, then its own head's (`TaskStructure.pool`)."""
        return [self.by_name[name] for name in self.structure.pool(task)]

    def sizes(self) -> dict[str, int]:
        return {g.name: g.size for g in self.groups}


def group_structure(owners: Mapping[str, str], tasks: Sequence[str]) -> TaskStructure:
    """The task partition of channel groups, `{group name: owner}` in layer order (owner `SHARED` or a task):
    a shared group is used by every task, a head's group by its task alone."""
    unknown = sorted(set(owners.values()) - {SHARED, *tasks})
    if unknown:
        raise ValueError(f"channel groups owned by {unknown}, which are not among the tasks {list(tasks)}")
    everyone = frozenset(tasks)
    return TaskStructure({name: everyone if owner == SHARED else frozenset([owner]) for name, owner in owners.items()},
                         tasks, shared=[name for name, owner in owners.items() if owner == SHARED])


def default_example_input(model: nn.Module, size: int = 65) -> torch.Tensor:
    """A small image batch on the model's device and dtype, enough to trace the channel couplings."""
    param = next(model.parameters())
    return torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)


def dependency_graph(model: nn.Module, example_input: torch.Tensor | None = None) -> tp.DependencyGraph:
    """Torch-Pruning's traced graph of `model` (eval mode: tracing leaves no trace in the model)."""
    example = default_example_input(model) if example_input is None else example_input
    with eval_mode(model), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def _member_kind(graph: tp.DependencyGraph, module: nn.Module, handler) -> str | None:
    if isinstance(module, WEIGHTED):
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"grouped convolutions are not supported in channel groups ({module})")
        return OUT if graph.is_out_channel_pruning_fn(handler) else IN
    if isinstance(module, NORMS):
        return NORM
    if isinstance(module, nn.Module) and next(module.parameters(recurse=False), None) is not None:
        raise ValueError(f"channel groups do not support layers of type {type(module).__name__}")
    return None                     # parameter-free ops (ReLU, additions, outputs)


def channel_groups(model: nn.Module, example_input: torch.Tensor | None = None) -> ChannelGroups:
    """The prunable channel groups of a multitask net (see the module docstring)."""
    model = unwrap(model)
    structure = TaskStructure.from_model(model)
    graph = dependency_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    groups, fixed = [], []
    for group in graph.get_all_groups(root_module_types=WEIGHTED):
        size = len(group[0].root_idxs)
        members, reaches_output = [], False
        for item in group:
            node = item.dep.target
            if not node.outputs:
                reaches_output = True
            if list(item.root_idxs) != list(range(size)) or list(item.idxs) != list(range(size)):
                raise ValueError("channel groups with re-indexed channels (concatenation, split) are not supported")
            kind = _member_kind(graph, node.module, item.dep.handler)
            if kind is not None:
                members.append(Member(names[node.module], kind))
        members = sorted(set(members), key=lambda m: (order[m.layer], m.kind))
        outputs = [m.layer for m in members if m.kind == OUT]
        if reaches_output:
            fixed += outputs
            continue
        owners = {structure.part(m.weight) for m in members if m.kind in (OUT, IN)}
        if SHARED not in owners and len(owners) > 1:
            raise ValueError(f"group {outputs[0]!r} couples the heads of several tasks without the backbone")
        owner = SHARED if SHARED in owners else owners.pop()
        if structure.part(outputs[0] + ".weight") != owner:
            raise ValueError(f"shared group {outputs[0]!r} is produced by a head layer; cannot name it by owner")
        groups.append(ChannelGroup(outputs[0], owner, size, tuple(members)))
    groups.sort(key=lambda g: order[g.name])
    return ChannelGroups(groups, structure.tasks, sorted(fixed, key=order.get))


def remove_channels(model: nn.Module, groups: ChannelGroups, keep: Mapping[str, torch.Tensor],
                    example_input: torch.Tensor | None = None) -> nn.Module:
    """A deep copy of `model` without the channels `keep` marks False, physically removed by Torch-Pruning.

    `keep` maps group name -> BoolTensor of the group's size (True = kept); groups it does not name are kept
    whole. Every group must keep at least one channel.
    """
    unknown = [name for name in keep if name not in groups.by_name]
    if unknown:
        raise ValueError(f"keep names unknown channel group(s) {unknown[:3]}")
    for name, mask in keep.items():
        if tuple(mask.shape) != (groups[name].size,):
            raise ValueError(f"keep[{name!r}] has shape {tuple(mask.shape)}, the group has {groups[name].size} channels")
        if not bool(mask.any()):
            raise ValueError(f"keep[{name!r}] removes every channel of the group (at least one must stay)")
    pruned = copy.deepcopy(unwrap(model))
    graph = dependency_graph(pruned, example_input)
    modules = dict(pruned.named_modules())
    for name, mask in keep.items():
        drop = (~mask.to(torch.bool)).nonzero().view(-1).tolist()
        if not drop:
            continue
        root = modules[name]
        handler = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, handler, drop).prune()
    return pruned
