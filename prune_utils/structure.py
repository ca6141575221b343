"""The task partition of a multitask model: which prunable weights each task uses.

One `TaskStructure` answers every ownership question the pruning code asks: which prunable weights
are shared (used by more than one task), which belong to one task alone, a task's *pool* (the shared
weights followed by its own, the set its mask covers), the layer order, and which shared layers sit
beside the main chain (projection shortcuts: reported, not numbered, in the IoU analysis). Saliency,
mask building, dynamic sparse training, LTH, IoU, similarity and the reports all take it, so the
partition is worked out once per model instead of from parameter names in each module.

Constructors:

* `TaskStructure(ownership, tasks)`: the core, from an ordered mapping param name -> the tasks that
  use it (a `frozenset`); a weight used by more than one task is shared. Every other constructor ends
  here (more can be added: an explicit shared/heads mapping, ownership by gradient flow). `shared=`
  names the shared weights explicitly, for a model whose shared trunk has one task only.
* `TaskStructure.from_model(model)`: from the module structure of a model with a `backbone` module and
  a `heads` mapping task -> module (as `models.MultiTaskNet`): the prunable weights inside
  `model.backbone` are shared by every task, those inside `model.heads[t]` belong to t; shortcuts are
  the prunable weights inside `model.backbone.ds` when the backbone has one.
* `TaskStructure.from_names(names, tasks)`: for score or mask dicts detached from a model, the same
  layout read from the parameter paths (`backbone.…`, `heads.<task>.…`, shortcuts `backbone.ds.…`).

Layer order is the order of the ownership mapping; for a model, `named_modules()` order, which for
`MultiTaskNet` is the backbone's forward order (stem, blocks stage by stage, then the shortcuts),
then the heads in task order.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from torch import nn

from .masks import prunable_parameters, unwrap

SHARED = "backbone"      # the part label of shared weights (reports, dynamic-update records)
BACKBONE, HEADS, SHORTCUTS = "backbone", "heads", "ds"   # the module layout `from_model` / `from_names` read


class TaskStructure:
    """Ownership of the prunable weights of a multitask model (see the module docstring)."""

    def __init__(self, ownership: Mapping[str, Iterable[str]], tasks: Sequence[str],
                 side_layers: Iterable[str] = (), shared: Iterable[str] | None = None) -> None:
        self.tasks: tuple[str, ...] = tuple(tasks)
        if not self.tasks:
            raise ValueError("a task structure needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"a task is listed twice: {list(self.tasks)}")
        self.owners: dict[str, frozenset[str]] = {name: frozenset(owners) for name, owners in ownership.items()}
        orphans = [n for n, owners in self.owners.items() if not owners]
        if orphans:
            raise ValueError(f"no task uses {orphans[:3]}{' ...' if len(orphans) > 3 else ''}")
        for name, owners in self.owners.items():
            unknown = sorted(owners - set(self.tasks))
            if unknown:
                raise ValueError(f"{name!r} is owned by {unknown}, which are not among the tasks {list(self.tasks)}")
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
    def from_model(cls, model: nn.Module) -> "TaskStructure":
        net = unwrap(model)
        backbone, heads = getattr(net, BACKBONE, None), getattr(net, HEADS, None)
        if not isinstance(backbone, nn.Module) or not isinstance(heads, (nn.ModuleDict, Mapping)):
            raise ValueError(f"{type(net).__name__} has no `{BACKBONE}` module and `{HEADS}` mapping task -> module; "
                             f"build its TaskStructure from an explicit ownership mapping")
        tasks = list(heads)
        owner_of_param = {id(p): frozenset(tasks) for p in backbone.parameters()}
        for task, head in heads.items():
            owner_of_param.update({id(p): frozenset([task]) for p in head.parameters()})
        in_backbone = {id(p) for p in backbone.parameters()}
        weights = prunable_parameters(net)
        outside = [n for n, w in weights.items() if id(w) not in owner_of_param]
        if outside:
            raise ValueError(f"prunable weights outside `{BACKBONE}` and `{HEADS}`: {outside[:3]}")
        shortcuts = getattr(backbone, SHORTCUTS, None)
        in_shortcuts = {id(p) for p in shortcuts.parameters()} if isinstance(shortcuts, nn.Module) else set()
        return cls({n: owner_of_param[id(w)] for n, w in weights.items()}, tasks,
                   side_layers=[n for n, w in weights.items() if id(w) in in_shortcuts],
                   shared=[n for n, w in weights.items() if id(w) in in_backbone])

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
        """Every prunable weight, in layer order."""
        return tuple(self.owners)

    @property
    def shared(self) -> tuple[str, ...]:
        """The shared weights (the backbone), in layer order."""
        return tuple(n for n in self.owners if n in self._shared)

    @property
    def chain(self) -> tuple[str, ...]:
        """The shared layers of the main chain (shared minus side layers), in layer order."""
        return tuple(n for n in self.shared if n not in self.side_layers)

    def own(self, task: str) -> tuple[str, ...]:
        """Weights only `task` uses (its head), in layer order."""
        self._check_task(task)
        return tuple(n for n, owners in self.owners.items() if owners == {task} and n not in self._shared)

    def pool(self, task: str) -> tuple[str, ...]:
        """The weights a task's mask covers: the shared ones, then its own (the ranking order of its scores)."""
        self._check_task(task)
        return tuple(n for n in self.shared if task in self.owners[n]) + self.own(task)

    def part(self, name: str) -> str:
        """`SHARED` for a shared weight, else the task owning it."""
        try:
            owners = self.owners[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a prunable weight of this model") from None
        return SHARED if name in self._shared else next(iter(owners))

    def fully_shared(self) -> bool:
        """True when every shared weight is used by all tasks (hard parameter sharing, as MultiTaskNet)."""
        everyone = frozenset(self.tasks)
        return all(self.owners[n] == everyone for n in self.shared)

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"the model has no head for task {task!r} (heads: {', '.join(self.tasks)})")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TaskStructure) and self.tasks == other.tasks and self._shared == other._shared
                and list(self.owners.items()) == list(other.owners.items()) and self.side_layers == other.side_layers)

    def __repr__(self) -> str:
        return (f"TaskStructure(tasks={list(self.tasks)}, shared={len(self.shared)} layers, "
                + ", ".join(f"{t}={len(self.own(t))}" for t in self.tasks) + ")")
