"""The task partition of a multitask model: which prunable weights each task uses.

One `TaskStructure` answers every ownership question the pruning code asks: which prunable weights
are shared (used by more than one task), which belong to one task alone, a task's *pool* (the weights
its mask covers), the layer order, which shared layers sit beside the main chain (projection
shortcuts: reported, not numbered, in the IoU analysis), and which prunable weights no task uses.
Saliency, mask building, dynamic sparse training, LTH, IoU, similarity and the reports all take it, so
the partition is worked out once per model instead of from parameter names in each module.

Constructors (docs/API.md, "Task ownership"):

* `TaskStructure(ownership, tasks)`: the core, from an ordered mapping param name -> the tasks that
  use it (a `frozenset`); a weight used by more than one task is shared. Every other constructor ends
  here. `shared=` names the shared weights explicitly, for a model whose shared trunk has one task
  only; `unowned=` lists prunable weights that no task uses.
* `TaskStructure.from_model(model)`: from the module structure of a model with a `backbone` module and
  a `heads` mapping task -> module (as `models.MultiTaskNet`; other attribute names through
  `backbone=` / `heads=`): the prunable weights inside the backbone are shared by every task, those
  inside `heads[t]` belong to t; shortcuts are the prunable weights inside `backbone.ds` when the
  backbone has one.
* `TaskStructure.from_modules(model, heads={task: module or prefix}, shared=...)`: explicit, for any
  model: `shared` (modules or parameter-name prefixes) is used by every task, `heads[t]` by t; a
  weight listed under several heads is shared by those tasks.
* `TaskStructure.from_gradient_flow(model, spec, batch)` / `from_losses(model, losses)`: inferred, a
  weight belongs to the tasks whose loss reaches it in the autograd graph (`prune_utils.ownership`).
* `TaskStructure.from_names(names, tasks)`: for score or mask dicts detached from a model, the
  `backbone.…` / `heads.<task>.…` layout read from the parameter paths (shortcuts `backbone.ds.…`).

Prunable weights that no task uses (a module the forward never calls, a branch outside every loss)
are never pruned silently and never kept silently: the explicit and inferred constructors warn (or
raise with `unowned="error"`) and list them in `TaskStructure.unowned`; mask building keeps them
dense and counts them in the model's sparsity, reports label them `unowned`.

Partial sharing: a weight may be used by some tasks but not all (a trunk shared by two of three
tasks). The shared weights fall into *sharing groups*, one per set of owners, ordered by their first
layer; a task's pool is every group it belongs to (in that order, each in layer order) followed by
its own weights. Mask building arbitrates each group among its owners only (`mask_builder`).

Layer order is the order of the ownership mapping; for a model, `named_modules()` order, which for
`MultiTaskNet` is the backbone's forward order (stem, blocks stage by stage, then the shortcuts),
then the heads in task order.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

import torch
from torch import nn

from .masks import prunable_parameters, unwrap
from .ownership import LossProbe, probe_task_losses, reached_by

UnownedPolicy = Literal["warn", "error"]

SHARED = "backbone"      # the part label of shared weights (reports, dynamic-update records)
UNOWNED = "unowned"      # the part label of prunable weights no task uses
BACKBONE, HEADS, SHORTCUTS = "backbone", "heads", "ds"   # the module layout `from_model` / `from_names` read

ModuleRef = Union[nn.Module, str]            # a submodule of the model, or a parameter-name prefix


class TaskStructure:
    """Ownership of the prunable weights of a multitask model (see the module docstring)."""

    def __init__(self, ownership: Mapping[str, Iterable[str]], tasks: Sequence[str],
                 side_layers: Iterable[str] = (), shared: Iterable[str] | None = None,
                 unowned: Iterable[str] = ()) -> None:
        self.tasks: tuple[str, ...] = tuple(tasks)
        if not self.tasks:
            raise ValueError("a task structure needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"a task is listed twice: {list(self.tasks)}")
        self.owners: dict[str, frozenset[str]] = {name: frozenset(owners) for name, owners in ownership.items()}
        orphans = [n for n, owners in self.owners.items() if not owners]
        if orphans:
            raise ValueError(f"no task uses {_show(orphans)}: list such weights as `unowned=`")
        for name, owners in self.owners.items():
            unknown = sorted(owners - set(self.tasks))
            if unknown:
                raise ValueError(f"{name!r} is owned by {unknown}, which are not among the tasks {list(self.tasks)}")
        self.unowned: tuple[str, ...] = tuple(dict.fromkeys(unowned))
        both = [n for n in self.unowned if n in self.owners]
        if both:
            raise ValueError(f"{_show(both)} are listed as unowned and as owned")
        if shared is None:
            self._shared = frozenset(n for n, owners in self.owners.items() if len(owners) > 1)
        else:
            self._shared = frozenset(shared)
            unknown = sorted(self._shared - set(self.owners))
            if unknown:
                raise ValueError(f"shared weights {unknown[:3]} are not in the ownership mapping")
        self.side_layers = frozenset(side_layers)
        strays = sorted(self.side_layers - set(self.shared))
        if strays:
            raise ValueError(f"side layers must be shared weights, {strays[:3]} are not")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_model(cls, model: nn.Module, backbone: str = BACKBONE, heads: str = HEADS) -> "TaskStructure":
        """The backbone module `model.<backbone>` is shared by every task, `model.<heads>[t]` belongs to t."""
        net = unwrap(model)
        trunk, head_map = getattr(net, backbone, None), getattr(net, heads, None)
        if not isinstance(trunk, nn.Module) or not isinstance(head_map, (nn.ModuleDict, Mapping)):
            raise ValueError(f"{type(net).__name__} has no `{backbone}` module and `{heads}` mapping task -> module; "
                             f"use TaskStructure.from_modules (explicit) or from_gradient_flow (inferred)")
        tasks = list(head_map)
        owner_of_param = {id(p): frozenset(tasks) for p in trunk.parameters()}
        for task, head in head_map.items():
            owner_of_param.update({id(p): frozenset([task]) for p in head.parameters()})
        in_backbone = {id(p) for p in trunk.parameters()}
        weights = prunable_parameters(net)
        outside = [n for n, w in weights.items() if id(w) not in owner_of_param]
        if outside:
            raise ValueError(f"prunable weights outside `{backbone}` and `{heads}`: {outside[:3]}; "
                             f"use TaskStructure.from_modules or from_gradient_flow")
        shortcuts = getattr(trunk, SHORTCUTS, None)
        in_shortcuts = {id(p) for p in shortcuts.parameters()} if isinstance(shortcuts, nn.Module) else set()
        return cls({n: owner_of_param[id(w)] for n, w in weights.items()}, tasks,
                   side_layers=[n for n, w in weights.items() if id(w) in in_shortcuts],
                   shared=[n for n, w in weights.items() if id(w) in in_backbone])

    @classmethod
    def from_modules(cls, model: nn.Module, heads: Mapping[str, ModuleRef | Sequence[ModuleRef]],
                     shared: ModuleRef | Sequence[ModuleRef] = (), *,
                     unowned: UnownedPolicy = "warn") -> "TaskStructure":
        """Explicit ownership: every prunable weight inside `shared` is used by all tasks, those inside
        `heads[task]` by that task (a weight under several heads is shared by them).

        Each entry is a submodule of `model` or a parameter-name prefix (`"encoder"` covers
        `encoder.…`); one entry or a list of them. Tasks are `heads`' keys, in order. Prunable weights
        covered by no entry are unowned (see the module docstring).
        """
        net = unwrap(model)
        weights = prunable_parameters(net)
        tasks = list(heads)
        if not tasks:
            raise ValueError("from_modules needs at least one task in `heads`")
        owners: dict[str, set[str]] = {n: set() for n in weights}
        explicit = set(_select(net, weights, shared, "shared"))
        for name in explicit:
            owners[name].update(tasks)
        for task, refs in heads.items():
            for name in _select(net, weights, refs, f"heads[{task!r}]"):
                owners[name].add(task)
        return cls._with_unowned(owners, tasks, unowned,
                                 shared=[n for n in weights if n in explicit or len(owners[n]) > 1])

    @classmethod
    def from_losses(cls, model: nn.Module, losses: Mapping[str, torch.Tensor], *,
                    unowned: UnownedPolicy = "warn") -> "TaskStructure":
        """Inferred ownership: a prunable weight belongs to the tasks whose loss tensor (computed on a probe
        batch, graph not yet freed) reaches it in the autograd graph; tasks are `losses`' keys, in order."""
        weights = prunable_parameters(unwrap(model))
        if not losses:
            raise ValueError("from_losses needs the loss of at least one task")
        owners: dict[str, set[str]] = {n: set() for n in weights}
        for task, loss in losses.items():
            for name in reached_by(loss, weights, task):
                owners[name].add(task)
        return cls._with_unowned(owners, list(losses), unowned)

    @classmethod
    def from_gradient_flow(cls, model: nn.Module, spec: LossProbe, batch: Any, *,
                           unowned: UnownedPolicy = "warn") -> "TaskStructure":
        """`from_losses` on one probe batch: `spec.task_losses(model, batch)` (a `prune_utils.TaskSpec`)
        gives each task's loss; the model's weights, buffers (BN statistics), `requires_grad` flags and the
        global RNG are left as they were."""
        with probe_task_losses(model, spec, batch) as losses:
            return cls.from_losses(model, losses, unowned=unowned)

    @classmethod
    def _with_unowned(cls, owners: Mapping[str, set[str]], tasks: Sequence[str], policy: UnownedPolicy,
                      shared: Iterable[str] | None = None) -> "TaskStructure":
        if policy not in ("warn", "error"):
            raise ValueError(f"unowned must be 'warn' or 'error', got {policy!r}")
        orphans = [n for n, o in owners.items() if not o]
        if orphans:
            message = (f"{len(orphans)} prunable weight(s) are used by no task: {_show(orphans)}; they stay dense "
                       f"(never pruned) and are listed in TaskStructure.unowned")
            if policy == "error":
                raise ValueError(message)
            warnings.warn(message, UserWarning, stacklevel=3)
        return cls({n: o for n, o in owners.items() if o}, tasks, shared=shared, unowned=orphans)

    @classmethod
    def from_names(cls, names: Iterable[str], tasks: Sequence[str] = ()) -> "TaskStructure":
        """`backbone.…` shared by all tasks, `heads.<task>.…` owned by that task; `tasks` first, then any
        other task whose head appears, in order of appearance."""
        names = list(dict.fromkeys(names))
        order = list(tasks)
        heads: dict[str, str] = {}
        for name in names:
            parts = name.split(".")
            if parts[0] == HEADS and len(parts) > 2:
                heads[name] = parts[1]
                if parts[1] not in order:
                    order.append(parts[1])
            elif parts[0] != BACKBONE:
                raise ValueError(f"parameter {name!r} belongs neither to the {BACKBONE} nor to a task head")
        if not order:
            raise ValueError("no task: give the task names or include a head parameter")
        everyone = frozenset(order)
        ownership = {n: frozenset([heads[n]]) if n in heads else everyone for n in names}
        side = [n for n in names if n.startswith(f"{BACKBONE}.{SHORTCUTS}.")]
        return cls(ownership, order, side, shared=[n for n in names if n not in heads])

    # ------------------------------------------------------------------ questions
    @property
    def params(self) -> tuple[str, ...]:
        """Every prunable weight some task uses, in layer order (not the unowned ones)."""
        return tuple(self.owners)

    @property
    def shared(self) -> tuple[str, ...]:
        """The shared weights (the backbone), in layer order."""
        return tuple(n for n in self.owners if n in self._shared)

    @property
    def chain(self) -> tuple[str, ...]:
        """The shared layers of the main chain (shared minus side layers), in layer order."""
        return tuple(n for n in self.shared if n not in self.side_layers)

    def groups(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """The sharing groups: (owning tasks in task order, their shared weights in layer order), one per set
        of owners, ordered by first layer. Hard parameter sharing has one group holding every task."""
        members: dict[frozenset[str], list[str]] = {}
        for name in self.shared:
            members.setdefault(self.owners[name], []).append(name)
        return [(tuple(t for t in self.tasks if t in owners), tuple(names)) for owners, names in members.items()]

    def own(self, task: str) -> tuple[str, ...]:
        """Weights only `task` uses (its head), in layer order."""
        self._check_task(task)
        return tuple(n for n, owners in self.owners.items() if owners == {task} and n not in self._shared)

    def pool(self, task: str) -> tuple[str, ...]:
        """The weights a task's mask covers and its scores' order: the sharing groups it belongs to (each in
        layer order), then its own weights."""
        self._check_task(task)
        shared = tuple(n for owners, names in self.groups() if task in owners for n in names)
        return shared + self.own(task)

    def part(self, name: str) -> str:
        """`SHARED` for a shared weight, `UNOWNED` for one no task uses, else the task owning it."""
        owners = self.owners.get(name)
        if owners is None:
            if name in self.unowned:
                return UNOWNED
            raise ValueError(f"{name!r} is not a prunable weight of this model")
        return SHARED if name in self._shared else next(iter(owners))

    def fully_shared(self) -> bool:
        """True when every shared weight is used by all tasks (hard parameter sharing, as MultiTaskNet)."""
        everyone = frozenset(self.tasks)
        return all(self.owners[n] == everyone for n in self.shared)

    def check_model(self, model: nn.Module) -> None:
        """Raise a one-line ValueError unless the structure describes exactly `model`'s prunable weights."""
        names = list(prunable_parameters(unwrap(model)))
        described = set(self.owners) | set(self.unowned)
        missing = [n for n in names if n not in described]
        extra = [n for n in described if n not in set(names)]
        if missing or extra:
            raise ValueError(f"the task structure does not match {type(unwrap(model)).__name__}: "
                             f"{len(missing)} prunable weight(s) not in it ({_show(missing)}), "
                             f"{len(extra)} not in the model ({_show(extra)})")

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"the model has no head for task {task!r} (heads: {', '.join(self.tasks)})")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TaskStructure) and self.tasks == other.tasks and self._shared == other._shared
                and list(self.owners.items()) == list(other.owners.items()) and self.side_layers == other.side_layers
                and self.unowned == other.unowned)

    def __repr__(self) -> str:
        return (f"TaskStructure(tasks={list(self.tasks)}, shared={len(self.shared)} layers, "
                + ", ".join(f"{t}={len(self.own(t))}" for t in self.tasks)
                + (f", unowned={len(self.unowned)}" if self.unowned else "") + ")")


def _show(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def _select(net: nn.Module, weights: Mapping[str, nn.Parameter], refs: ModuleRef | Sequence[ModuleRef],
            label: str) -> list[str]:
    """The prunable weight names inside the given modules / name prefixes (each must cover at least one)."""
    items: list[Any] = list(refs) if isinstance(refs, (list, tuple)) else [refs]   # one entry or a list
    chosen: list[str] = []
    for ref in items:
        if isinstance(ref, str):
            prefix = ref.rstrip(".")
            if not prefix:
                raise ValueError(f"{label}: an empty prefix would cover every weight")
            found = [n for n in weights if n == prefix or n.startswith(prefix + ".")]
            what = f"prefix {ref!r}"
        elif isinstance(ref, nn.Module):
            inside = {id(p) for p in ref.parameters()}
            found = [n for n, w in weights.items() if id(w) in inside]
            what = f"module {type(ref).__name__}"
        else:
            raise TypeError(f"{label}: expected a submodule or a parameter-name prefix, got {type(ref).__name__}")
        if not found:
            raise ValueError(f"{label}: {what} covers no prunable weight of {type(net).__name__} "
                             f"(prunable: {_show(list(weights))})")
        chosen.extend(found)
    return list(dict.fromkeys(chosen))
