"""The public Python API: DiSparse on any multitask model, in the user's own training loop (docs/API.md).

    spec = TaskSpec(["seg", "depth"], {"seg": nn.CrossEntropyLoss(), "depth": nn.L1Loss()})
    structure = TaskStructure.from_gradient_flow(model, spec, batch)    # or from_modules / from_model
    scores = task_scores(model, spec, loader, "snip", num_batches=8, structure=structure)
    masks = build_masks(model, scores, 0.9, arbiter="unanimous", structure=structure)
    apply_masks(model, masks)
    sparse = static_sparsity(model, optimizer, masks)       # or dynamic_sparsity(...)
    ... sparse.before_step(step, batch); loss.backward(); optimizer.step(); sparse.after_step() ...

Everything here is a thin layer over the machinery the tools use (saliency and arbiter registries, the
exact-sparsity search, the sparse-training controllers, the report, the I/O layer): the API adds the
checks a user's own model needs (structure against model, tasks against losses, sparsity in (0, 1)),
the `TaskSpec` adapter for outputs and batches, and weights that no task uses (kept dense, counted).
It depends on no model, data set or trainer of the project.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import torch
from torch import nn

from fileio import read_mask_file, write_mask_file

from . import masks as mask_sets
from .arbiters import ArbiterLike
from .erk import erk_densities, random_masks, shapes_of
from .mask_builder import masks_for_sparsity
from .masks import MaskSet
from .report import build_report
from .saliency import ScoreDict, compute_scores, get_saliency, make_generator
from .sparse_training import DynamicSparsity, StaticSparsity
from .structure import TaskStructure
from .task_spec import TaskSpec

Optimizer = torch.optim.Optimizer
DEFAULT_TOL = 5e-4          # the exact-sparsity window: 0.05 percentage points of all prunable weights

__all__ = ["SparseTraining", "apply_masks", "build_masks", "dynamic_sparsity", "load_masks", "save_masks",
           "sparsity_report", "static_sparsity", "task_scores"]


# ----------------------------------------------------------------------------------------------------------
# checks


def _check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{what} must be a number in (0, 1), got {type(sparsity).__name__}")
    if not 0.0 < float(sparsity) < 1.0:
        raise ValueError(f"{what} must lie in (0, 1) as a fraction of the prunable weights (0.9 for 90 %), "
                         f"got {sparsity}")
    return float(sparsity)


def _structure(model: nn.Module, structure: TaskStructure | None) -> TaskStructure:
    structure = structure if structure is not None else TaskStructure.from_model(model)
    structure.check_model(model)
    return structure


def _check_tasks(spec: TaskSpec, structure: TaskStructure) -> None:
    if set(spec.tasks) != set(structure.tasks):
        raise ValueError(f"the task structure is for tasks {list(structure.tasks)}, the TaskSpec for "
                         f"{list(spec.tasks)}: build both for the same tasks")


def _sizes(model: nn.Module, structure: TaskStructure) -> tuple[int, int]:
    """(all prunable weights, unowned ones)."""
    weights = mask_sets.prunable_parameters(model)
    return (sum(w.numel() for w in weights.values()), sum(weights[n].numel() for n in structure.unowned))


def _owned_keep(sparsity: float, model: nn.Module, structure: TaskStructure) -> tuple[float, int, int]:
    """(weights the owned layers keep, number of prunable weights, of owned ones) for an overall `sparsity`
    over every prunable weight, unowned ones counting as kept."""
    total, unowned = _sizes(model, structure)
    owned = total - unowned
    keep = (1.0 - sparsity) * total - unowned
    if keep < 1 or keep > owned:
        raise ValueError(f"sparsity {sparsity} cannot be reached: {unowned} of the {total} prunable weights are "
                         f"used by no task and stay dense (TaskStructure.unowned)")
    return keep, total, owned


# ----------------------------------------------------------------------------------------------------------
# scores, masks, report


def task_scores(model: nn.Module, spec: TaskSpec, batches: Iterable[Any] | None, saliency: str = "snip", *,
                num_batches: int | None = None, structure: TaskStructure | None = None,
                generator: torch.Generator | int | None = None, mode: str = "batch_stats",
                device: torch.device | str | None = None, progress: bool = False) -> ScoreDict:
    """Per-task saliency `{task: {param name: FloatTensor (CPU)}}` over each task's pool.

    `saliency`: any registered name (`snip`, `grad_weight2`, `magnitude`, `random`, or one added with
    `register_saliency`). `batches`: the user's batches (any iterable; the first `num_batches`, all when
    None); data-free saliencies take None. The model is scored on a copy: its weights, statistics and
    gradients are untouched. `mode` and the seeding (`generator`) are those of `prune_utils.saliency`.
    """
    structure = _structure(model, structure)
    _check_tasks(spec, structure)
    if batches is None and getattr(get_saliency(saliency), "needs_data", True):
        raise ValueError(f"saliency {saliency!r} needs data: pass the batches")
    return compute_scores(model, batches, spec.task_loss, list(structure.tasks), method=saliency,
                          num_batches=num_batches, device=device, generator=generator, mode=mode, progress=progress,
                          structure=structure, forward=spec.predict)


def build_masks(model: nn.Module, scores: Mapping[str, Mapping[str, torch.Tensor]], sparsity: float, *,
                arbiter: ArbiterLike = "unanimous", structure: TaskStructure | None = None,
                tol: float = DEFAULT_TOL) -> MaskSet:
    """The model's mask set (one BoolTensor per prunable weight, True = kept) at `sparsity`.

    Each task keeps the top ρ of its pool, the arbiter (a registry name, an int quorum, an `Arbiter` or a
    function) decides the shared weights among the tasks that use them, and ρ is searched so that the
    pruned fraction of *all* prunable weights is `sparsity` within `tol` (a fraction of all prunable
    weights: 5e-4 = 0.05 points, finer when the arbiter's steps allow). Weights no task uses stay dense
    and count as kept.
    """
    target = _check_sparsity(sparsity)
    structure = _structure(model, structure)
    missing = [t for t in structure.tasks if t not in scores]
    unknown = [t for t in scores if t not in structure.tasks]
    if missing or unknown:
        raise ValueError(f"the scores are for tasks {list(scores)}, the structure has {list(structure.tasks)}")
    keep, total, owned = _owned_keep(target, model, structure)
    masks, _ = masks_for_sparsity(scores, 1.0 - keep / owned, arbiter, tol=tol * total / owned, structure=structure)
    out: MaskSet = {}
    for name, weight in mask_sets.prunable_parameters(model).items():
        if name in masks:
            out[name] = masks[name].clone()
        elif name in structure.unowned:
            out[name] = torch.ones(weight.shape, dtype=torch.bool)
        else:
            raise ValueError(f"the scores cover no entry for {name!r}: score every task's pool (task_scores)")
    return out


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of `model` in place, after checking that `masks` covers exactly its prunable
    weights with the right shapes (one-line ValueError otherwise)."""
    mask_sets.check_masks(model, masks)
    mask_sets.apply_masks(model, masks)


def sparsity_report(model: nn.Module, masks: Mapping[str, torch.Tensor], structure: TaskStructure | None = None,
                    input_size: Sequence[int] | None = None) -> dict[str, Any]:
    """`{"layers": [...], "summary": {...}, "params": {...}}`: one row per prunable weight (name, owner =
    `backbone` for shared weights / the task / `unowned`, shape, total, kept, sparsity), totals per part and
    overall, parameter counts; with `input_size` (e.g. (1, 3, 64, 64)) also multiply-accumulate counts.
    `format_report(report)` prints it."""
    structure = _structure(model, structure)
    return build_report(model, masks, input_size, structure)


# ----------------------------------------------------------------------------------------------------------
# training


class SparseTraining:
    """A sparsity controller bound to the user's model and optimizer.

    Call `before_step(step, batch)` before the forward of each step and `after_step()` after
    `optimizer.step()`. Pruned weights get zero gradients (tensor hooks), their optimizer state is cleared
    when attached and whenever a mask changes, so they stay exactly zero under SGD (momentum, weight
    decay), Adam and AdamW; `after_step` re-zeroes them every `reapply_every` steps as a safety net.
    A dynamic controller updates the masks on its schedule inside `before_step` and returns what it did.
    `state_dict()` holds plain types, for the user's checkpoints; to resume, pass it as `state=` to the
    factory (`static_sparsity` / `dynamic_sparsity`) with the restored model and optimizer.
    """

    def __init__(self, controller: StaticSparsity, model: nn.Module, optimizer: Optimizer | None,
                 device: torch.device | str | None = None, state: Mapping[str, Any] | None = None) -> None:
        self.controller = controller
        if state is not None:               # before attaching: the weights are zeroed under the saved masks
            controller.load_state_dict(state)
        self.model = model
        self.optimizer = optimizer
        first = next(iter(mask_sets.prunable_parameters(model).values()), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None else None)
        controller.attach(model, optimizer)

    def before_step(self, step: int, batch: Any = None) -> dict[str, Any] | None:
        """Mask updates due at `step` (dynamic sparsity, on `batch`); the update record, or None."""
        if batch is None and isinstance(self.controller, DynamicSparsity) and not self.controller.frozen:
            raise ValueError("dynamic sparsity needs the training batch: call before_step(step, batch)")
        return self.controller.before_step(step, self.model, self.optimizer, batch, self.device)

    def after_step(self) -> None:
        self.controller.after_step(self.model, self.optimizer)

    @property
    def masks(self) -> MaskSet:
        """The current mask set (live: dynamic updates change it in place)."""
        return self.controller.masks

    def sparsity(self) -> float:
        return self.controller.sparsity()

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state)

    def detach(self) -> None:
        """Remove the gradient hooks (training continues dense from here)."""
        self.controller.detach()


def static_sparsity(model: nn.Module, optimizer: Optimizer | None, masks: Mapping[str, torch.Tensor], *,
                    reapply_every: int = 100, state: Mapping[str, Any] | None = None) -> SparseTraining:
    """Train with fixed masks: pruned weights are zeroed now and stay zero (see `SparseTraining`).
    `state`: a saved `state_dict()` to resume from."""
    return SparseTraining(StaticSparsity(masks, reapply_every=reapply_every), model, optimizer, state=state)


def dynamic_sparsity(model: nn.Module, optimizer: Optimizer | None, spec: TaskSpec, *, end: int,
                     sparsity: float | None = None, masks: Mapping[str, torch.Tensor] | None = None,
                     structure: TaskStructure | None = None, mode: Literal["disparse", "rigl"] = "disparse",
                     arbiter: ArbiterLike = "unanimous", interval: int = 50, drop_fraction: float = 0.5,
                     growth_splits: int = 1, generator: torch.Generator | int | None = None,
                     state: Mapping[str, Any] | None = None) -> SparseTraining:
    """Dynamic sparse training in the user's loop (`prune_utils.sparse_training.DynamicSparsity`).

    Start from `masks`, or from random ERK masks at `sparsity` (over every prunable weight; unowned ones
    stay dense) drawn with `generator`. Every `interval` steps before `end` (step 0 included), each layer
    drops its round(α·active) smallest-magnitude weights, α = drop_fraction/2·(1 + cos(π·step/end)), and
    regrows as many by gradient on the step's batch: `disparse` by each task's loss over its pool, shared
    layers by `arbiter` over the tasks that use them; `rigl` by the weighted total loss. Each layer's kept
    count is unchanged by an update; at `end` the masks freeze. `state`: a saved `state_dict()` to resume
    from (masks, targets, schedule and position; the saved schedule wins).
    """
    structure = _structure(model, structure)
    _check_tasks(spec, structure)
    if (masks is None) == (sparsity is None):
        raise ValueError("dynamic_sparsity needs exactly one of `masks` and `sparsity`")
    targets = None
    if masks is None:
        assert sparsity is not None
        keep, _, owned = _owned_keep(_check_sparsity(sparsity), model, structure)
        shapes = shapes_of(model)
        densities = dict.fromkeys(shapes, 1.0)
        densities.update(erk_densities({n: shapes[n] for n in structure.params}, keep / owned))
        masks = random_masks(shapes, densities, make_generator(generator))
        targets = densities
    losses: dict[str, Any] = {"task_loss": spec.loss} if mode == "disparse" else {"total_loss": spec.total_loss}
    controller = DynamicSparsity(masks, target_densities=targets, interval=interval, end=end,
                                 drop_fraction=drop_fraction, mode=mode, tasks=list(structure.tasks),
                                 arbiter=arbiter, growth_splits=growth_splits, structure=structure,
                                 forward=spec.predict, **losses)
    return SparseTraining(controller, model, optimizer, state=state)


# ----------------------------------------------------------------------------------------------------------
# files


def save_masks(path: str | Path, masks: Mapping[str, torch.Tensor], structure: TaskStructure | None = None) -> Path:
    """Write a mask-set file (`fileio.mask_file`: a plain dict, loads with `weights_only=True`), with the
    task ownership the masks were made for when `structure` is given."""
    if structure is None:
        return write_mask_file(path, masks)
    return write_mask_file(path, masks, tasks=structure.tasks, owners=structure.owners, unowned=structure.unowned)


def load_masks(path: str | Path, model: nn.Module | None = None,
               structure: TaskStructure | None = None) -> MaskSet:
    """Read a mask-set file; with `model`, check that it covers exactly the model's prunable weights, with
    `structure`, that it was made for the same task ownership (one-line ValueError otherwise)."""
    stored = read_mask_file(path)
    if model is not None:
        try:
            mask_sets.check_masks(model, stored.masks)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    if structure is not None and stored.owners is not None:
        same = (list(stored.tasks or []) == list(structure.tasks) and list(stored.unowned) == list(structure.unowned)
                and {n: set(o) for n, o in stored.owners.items()} == {n: set(o) for n, o in structure.owners.items()})
        if not same:
            raise ValueError(f"{path} was made for another task structure (tasks {stored.tasks}); this one has "
                             f"tasks {list(structure.tasks)}: build the masks for this structure")
    return stored.masks
