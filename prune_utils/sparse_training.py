"""Masked training controllers: the one interface between the trainer and sparsity.

The trainer drives a controller through a fixed protocol::

    ctl.attach(model, optimizer)                 # once, after the model is on its device
    for iteration, batch in ...:
        ctl.before_step(iteration, model, optimizer, batch, device)   # may update masks -> log record
        forward / backward                       # pruned weights get exactly zero gradient (grad hooks)
        optimizer.step()
        ctl.after_step(model, optimizer)         # every `reapply_every` steps: re-zero pruned weights
    checkpoint["sparsity_state"] = ctl.state_dict()   # plain tensors / numbers / strings

`StaticSparsity` keeps a fixed mask set (pruned nets, LTH rounds). `DynamicSparsity` implements
dynamic sparse training for `disparse_dynamic` (docs/ORIGINAL.md §6) and `rigl`.

Why pruned weights stay exactly zero under Adam with coupled L2 weight decay: the grad hook turns the
loss gradient at a pruned position into 0, the weight there is 0, so the L2 term wd * w adds 0, the
moments (cleared at `attach`) stay 0 and the update 0 / (sqrt(0) + eps) is 0. Decoupled decay (AdamW)
only scales the weight (0 stays 0); SGD with momentum likewise. So the invariant holds without touching
the weights after each step, and `after_step` re-zeroes them only every `reapply_every` steps (default
100) as a safety net against anything else writing there (a multiply over every prunable weight each step
has a measurable cost, docs/BENCHMARKS.md (c); amortised it costs nothing).
Re-zeroing weights that are already zero changes no value, so it does not disturb bit-identical resumes.

Hooks are tensor hooks on the weights, so they run before gradient accumulation: under DDP the
gradients all-reduced are already masked. The growth gradients of `DynamicSparsity` are computed with
`torch.autograd.grad` while the hooks are switched off, so they are dense.

Dynamic sparse training, and where it deliberately differs from the original code (§6, §11):

* Schedule: updates at iterations i with i % interval == 0 and i < end (i = 0 included), before the
  optimiser step, on the training batch. Drop fraction alpha(i) = alpha0 / 2 * (1 + cos(pi * i / end)).
* One update, per layer: drop the n = round(alpha * active) smallest-magnitude active weights (ties:
  lower flat index first), then regrow exactly n positions among the positions inactive after the drop
  (a weight dropped by this update may be regrown; it restarts from zero). **Every layer's active count
  is unchanged by an update.** The original lets backbone layers grow denser than their target between
  updates (union of per-task growth); we keep exact counts, so the sparsity is the target throughout.
* Growth scores are |dL/dW| of the *current sparse* net (after the drop; masked weights are zero),
  accumulated as a sum of absolute gradients over `growth_splits` slices of the batch and, under
  torch.distributed, summed over ranks before any decision. The original takes them on a densified
  copy with stale weights. BatchNorm running statistics are restored after the growth forward (the
  original used a throw-away copy, so its real net's statistics were untouched too); dropout draws
  from the global RNG (captured by the trainer's RNG state).
* `disparse`: each task's unweighted loss, one shared forward per slice, one `autograd.grad` per task
  over its pool (backbone + own head). Head layers grow their own task's top-n. Backbone layers let the
  arbiter decide with exact counts (`Arbiter.select_growth`, the same arbiter objects as static pruning):
  each task ranks the candidates (0 = best); the arbiter's quorum q (`unanimous` = union: q = 1;
  `majority`: q = ceil(T/2); `intersection`: q = T) orders the candidates by their q-th best rank over
  tasks, i.e. the order in which they enter arbiter(top-k_1, ..., top-k_T) as k grows; ties by the sum
  of ranks, then by flat index. Taking the first n gives exactly the original union of per-task top-k
  sets whenever that union has n elements, and fills to exactly n otherwise.
* `rigl`: gradient of the weighted multitask loss over all layers, top-n inactive per layer.
* Grown weights start at exactly zero and their optimizer state (every tensor of the parameter's
  shape: Adam exp_avg, exp_avg_sq, max_exp_avg_sq, SGD momentum) is zeroed at the dropped and grown
  positions. The original keeps stale weights and stale moments. The per-parameter `step` is left alone.
* Counts use Python's `round` (half to even): n_drop = round(alpha * active), targets round(d * N).
* Layers whose target is fully dense are never touched (dropping then regrowing there could only
  reset weights to zero; the original's prune-then-regrow of dense layers is a no-op on values).
* At iteration >= end: a final update makes every layer's count exactly its target (drop smallest
  magnitudes where above, grow by gradient where below; nothing changes when the counts are already
  exact, which is always the case when the run started from ERK masks), then the masks freeze and
  training continues with fixed masks. The original crashes there (NameError `copy_v2`).
* Masks, weights and optimizer state are edited in place: no model or optimizer is rebuilt (the
  original builds two networks and a new optimizer at every update).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .arbiters import get_arbiter, select_growth
from .batches import restored_buffers, split_batch, to_device
from .erk import erk_random_masks
from .masks import MaskSet, check_masks, prunable_parameters, sparsity as mask_sparsity, unwrap
from .structure import SHARED, UNOWNED, TaskStructure
from .topk import keep_count_round

STATE_VERSION = 1
MODES = ("disparse", "rigl")
__all__ = ["MODES", "STATE_VERSION", "DynamicSparsity", "StaticSparsity", "split_batch"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class StaticSparsity:
    """Fixed masks: pruned weights get zero gradient, zero optimizer state and stay exactly zero."""

    kind = "static"

    def __init__(self, masks: Mapping[str, torch.Tensor], reapply_every: int = 100) -> None:
        if not masks:
            raise ValueError("a sparsity controller needs a non-empty mask set")
        if reapply_every < 1:
            raise ValueError(f"reapply_every must be a positive number of steps, got {reapply_every}")
        self.reapply_every = reapply_every
        self._steps = 0
        self.masks: MaskSet = {n: m.detach().to(torch.bool).contiguous().clone() for n, m in masks.items()}
        self._params: dict[str, nn.Parameter] = {}
        self._fmasks: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []
        self._mask_grads = True
        self._optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ protocol
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero pruned weights, mask their gradients, clear their optimizer state.

        Call after the model is on its final device and memory format (DDP wrapper or bare model).
        Calling it again re-attaches (old hooks are removed first).
        """
        self.detach()
        net = unwrap(model)
        check_masks(net, self.masks)
        self._params = prunable_parameters(net)
        for name, weight in self._params.items():
            self.masks[name] = self.masks[name].to(weight.device).contiguous()
            # float mask in the weight's dtype and memory format: after_step is one multiply per layer
            self._fmasks[name] = torch.empty_like(weight).copy_(self.masks[name])
        self._optimizer = optimizer
        self._enforce()
        for name, weight in self._params.items():
            self._hooks.append(weight.register_hook(self._grad_hook(self._fmasks[name])))

    def detach(self) -> None:
        """Remove the gradient hooks (the masks stay)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def before_step(self, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    batch: Any, device: torch.device | str | None = None) -> dict | None:
        return None

    @torch.no_grad()
    def after_step(self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Every `reapply_every` calls, multiply the weights by their masks (a no-op while the invariant holds)."""
        self._steps += 1
        if self._params and self._steps % self.reapply_every == 0:
            self.reapply()

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero every pruned weight now."""
        if self._params:
            torch._foreach_mul_(list(self._params.values()), list(self._fmasks.values()))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "version": STATE_VERSION,
                "masks": {n: m.detach().to("cpu", torch.bool).clone() for n, m in self.masks.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_kind(state)
        self._load_masks(state["masks"])

    def sparsity(self) -> float:
        return mask_sparsity(self.masks)

    @property
    def attached(self) -> bool:
        return bool(self._params)

    # ------------------------------------------------------------------ helpers
    def _grad_hook(self, fmask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            return grad * fmask if self._mask_grads else None
        return hook

    def _check_kind(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"sparsity state is of kind {state.get('kind')!r}, this controller is {self.kind!r}")
        if int(state.get("version", 0)) > STATE_VERSION:
            raise ValueError(f"sparsity state version {state['version']} is newer than this code ({STATE_VERSION})")

    def _load_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        if set(masks) != set(self.masks):
            raise ValueError("sparsity state masks do not cover the same weights as this controller")
        for name, mask in masks.items():
            if tuple(mask.shape) != tuple(self.masks[name].shape):
                raise ValueError(f"sparsity state mask {name!r} has shape {tuple(mask.shape)}, "
                                 f"expected {tuple(self.masks[name].shape)}")
        for name, mask in masks.items():
            self.masks[name].copy_(mask.to(torch.bool))  # in place: keeps device and contiguity
            if name in self._fmasks:
                self._fmasks[name].copy_(self.masks[name])
        if self._params:
            self._enforce()

    @torch.no_grad()
    def _enforce(self) -> None:
        """Zero pruned weights, their gradients and optimizer state (exact; robust to inf/nan)."""
        for name, weight in self._params.items():
            pruned = ~self.masks[name]
            weight.masked_fill_(pruned, 0)
            if weight.grad is not None:
                weight.grad.masked_fill_(pruned, 0)
            self._clear_state(weight, pruned)

    def _clear_state(self, weight: torch.Tensor, where: torch.Tensor) -> None:
        if self._optimizer is None:
            return
        state = self._optimizer.state.get(weight)
        if not state:
            return
        for value in state.values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                value.masked_fill_(where, 0)


class DynamicSparsity(StaticSparsity):
    """Dynamic sparse training (`disparse_dynamic` and `rigl`); see the module docstring.

    Give either `masks` (initial mask set; targets default to its per-layer counts) or `model` and
    `density` (random ERK masks drawn with `generator`, ERK targets). `target_densities` overrides the
    per-layer targets (counts `round(d * N)`), reached exactly by the final update at `end`.
    `structure`: the model's `TaskStructure` (default: `TaskStructure.from_model` of `model`, or of the
    model given to `attach`); `tasks` defaults to its tasks.
    `task_loss(task, pred, batch)` is the unweighted single-task loss (`disparse`);
    `total_loss(preds, batch)` the weighted multitask loss, a tensor or `(total, parts)` (`rigl`).
    `forward(model, batch) -> {task: prediction}` runs the model on a batch of any structure (default:
    `model(batch["img"])`). Partially shared layers grow by the arbiter over the tasks that own them;
    layers no task owns (`structure.unowned`) must be dense and are never touched.
    """

    kind = "dynamic"

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None, *, model: nn.Module | None = None,
                 density: float | None = None, target_densities: Mapping[str, float] | None = None,
                 interval: int = 50, end: int = 15000, drop_fraction: float = 0.5, mode: str = "disparse",
                 tasks: Sequence[str] | None = None,
                 task_loss: Callable[[str, torch.Tensor, Any], torch.Tensor] | None = None,
                 total_loss: Callable[[Mapping[str, torch.Tensor], Any], Any] | None = None,
                 arbiter: Any = "unanimous", growth_splits: int = 1,
                 generator: torch.Generator | None = None, structure: TaskStructure | None = None,
                 forward: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]] | None = None) -> None:
        if (masks is None) == (model is None or density is None):
            raise ValueError("DynamicSparsity needs either `masks` or both `model` and `density`")
        if masks is None:
            assert model is not None and density is not None
            masks, erk = erk_random_masks(model, float(density), generator)
            target_densities = erk if target_densities is None else target_densities
        super().__init__(masks)
        if target_densities is None:
            self.target_densities = {n: float(m.sum()) / m.numel() for n, m in self.masks.items()}
            self.target_counts = {n: int(m.sum()) for n, m in self.masks.items()}
        else:
            missing = [n for n in self.masks if n not in target_densities]
            if missing:
                raise ValueError(f"target densities miss {missing[:3]}")
            self.target_densities = {n: float(target_densities[n]) for n in self.masks}
            self.target_counts = {n: keep_count_round(d, self.masks[n].numel()) for n, d in self.target_densities.items()}
        if mode not in MODES:
            raise ValueError(f"unknown dynamic sparsity mode {mode!r} (expected disparse or rigl)")
        if int(interval) < 1 or int(end) < 0 or not 0.0 <= float(drop_fraction) <= 1.0 or int(growth_splits) < 1:
            raise ValueError(f"bad schedule: interval={interval}, end={end}, drop_fraction={drop_fraction}, "
                             f"growth_splits={growth_splits}")
        if mode == "disparse" and task_loss is None:
            raise ValueError("disparse dynamic sparsity needs `task_loss(task, pred, batch)`")
        if mode == "rigl" and total_loss is None:
            raise ValueError("rigl dynamic sparsity needs `total_loss(preds, batch)`")
        self.interval, self.end = int(interval), int(end)
        self.initial_drop_fraction = float(drop_fraction)
        self.mode = mode
        if structure is None and model is not None:
            structure = TaskStructure.from_model(model)
        self.structure = structure
        self.tasks = list(tasks) if tasks is not None else (list(structure.tasks) if structure is not None else None)
        self.task_loss, self.total_loss = task_loss, total_loss
        self.forward = forward or (lambda net, batch: net(batch["img"]))
        self.arbiter = arbiter
        self.growth_splits = int(growth_splits)
        self.frozen = False
        self.num_updates = 0
        self.last_update = -1
        if self.tasks is not None:
            self._check_tasks()

    # ------------------------------------------------------------------ schedule
    def drop_fraction_at(self, iteration: int) -> float:
        """alpha(i) = alpha0 / 2 * (1 + cos(pi * i / end)), 0 from `end` on."""
        if self.end <= 0 or iteration >= self.end:
            return 0.0
        return self.initial_drop_fraction / 2.0 * (1.0 + math.cos(math.pi * iteration / self.end))

    # ------------------------------------------------------------------ protocol
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        if self.structure is None:
            self.structure = TaskStructure.from_model(model)
        if self.tasks is None:
            self.tasks = list(self.structure.tasks)
        self._check_tasks()
        super().attach(model, optimizer)

    def before_step(self, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    batch: Any, device: torch.device | str | None = None) -> dict | None:
        if self.frozen:
            return None
        if not self._params:
            raise RuntimeError("DynamicSparsity.before_step called before attach(model, optimizer)")
        if optimizer is not None:
            self._optimizer = optimizer
        if iteration >= self.end:
            record = self._update(iteration, model, batch, device, 0.0, final=True)
            self.frozen = True
            return record
        if iteration % self.interval:
            return None
        return self._update(iteration, model, batch, device, self.drop_fraction_at(iteration), final=False)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({
            "target_counts": dict(self.target_counts),
            "target_densities": dict(self.target_densities),
            "interval": self.interval, "end": self.end, "drop_fraction": self.initial_drop_fraction,
            "mode": self.mode, "arbiter": self._arbiter_name(), "growth_splits": self.growth_splits,
            "tasks": list(self.tasks) if self.tasks is not None else None,
            "frozen": self.frozen, "num_updates": self.num_updates, "last_update": self.last_update,
        })
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks, targets, schedule and position (the saved schedule wins over the constructor's)."""
        self._check_kind(state)
        if state["mode"] != self.mode:
            raise ValueError(f"sparsity state is for mode {state['mode']!r}, this controller runs {self.mode!r}")
        if set(state["target_counts"]) != set(self.masks):
            raise ValueError("sparsity state targets do not cover the same weights as this controller")
        self._load_masks(state["masks"])
        self.target_counts = {n: int(v) for n, v in state["target_counts"].items()}
        self.target_densities = {n: float(v) for n, v in state["target_densities"].items()}
        self.interval, self.end = int(state["interval"]), int(state["end"])
        self.initial_drop_fraction = float(state["drop_fraction"])
        self.arbiter = state["arbiter"]
        self.growth_splits = int(state["growth_splits"])
        if state.get("tasks") is not None:
            self.tasks = list(state["tasks"])
        self.frozen = bool(state["frozen"])
        self.num_updates = int(state["num_updates"])
        self.last_update = int(state["last_update"])

    # ------------------------------------------------------------------ one update
    def _arbiter_name(self) -> str | int:
        if isinstance(self.arbiter, (str, int)):
            return self.arbiter
        return str(getattr(self.arbiter, "name", type(self.arbiter).__name__))

    def _layout(self) -> tuple[TaskStructure, list[str]]:
        """The structure and tasks (known from the constructor or from `attach`)."""
        if self.structure is None or self.tasks is None:
            raise RuntimeError("DynamicSparsity has no task structure yet: call attach(model, optimizer) first")
        return self.structure, self.tasks

    def _check_tasks(self) -> None:
        """The growth arbiter can arbitrate these tasks; every head in the masks belongs to one of them."""
        tasks = list(self.tasks or ())
        get_arbiter(self.arbiter).quorum(len(tasks))
        if self.structure is not None:
            owners = {self.structure.part(n) for n in self.masks} - {SHARED, UNOWNED}
            unknown = sorted(owners - set(tasks))
            if unknown:
                raise ValueError(f"heads {unknown} belong to no task in {tasks}")
            sparse = [n for n in self.structure.unowned
                      if n in self.masks and self.target_counts[n] < self.masks[n].numel()]
            if sparse:
                raise ValueError(f"{sparse[:3]} are used by no task, so nothing can regrow them: give them a "
                                 f"fully dense mask and target")

    def _update(self, iteration: int, model: nn.Module, batch: Any,
                device: torch.device | str | None, alpha: float, final: bool) -> dict:
        net = unwrap(model)
        structure, tasks = self._layout()
        parts = [SHARED] + tasks
        dropped_n = {p: 0 for p in parts}
        grown_n = {p: 0 for p in parts}
        reset: dict[str, torch.Tensor] = {}
        grow: dict[str, int] = {}
        with torch.no_grad():
            for name, weight in self._params.items():
                mask = self.masks[name]
                numel, active = mask.numel(), int(mask.sum())
                if final:
                    n_drop = max(0, active - self.target_counts[name])
                    n_grow = max(0, self.target_counts[name] - active)
                else:
                    n_drop = 0 if active in (0, numel) else int(round(alpha * active))
                    n_grow = n_drop
                if n_drop:
                    magnitude = weight.detach().abs().reshape(-1).masked_fill(~mask.reshape(-1), math.inf)
                    order = torch.sort(magnitude, stable=True).indices[:n_drop]
                    flat = mask.view(-1)
                    flat[order] = False
                    dropped = torch.zeros_like(flat)
                    dropped[order] = True
                    reset[name] = dropped
                    weight.masked_fill_(dropped.view_as(mask), 0)  # the growth gradient sees the sparse net
                    dropped_n[structure.part(name)] += n_drop
                if n_grow:
                    grow[name] = n_grow
            if grow:
                scores = self._growth_scores(net, batch, device, list(grow))
                arbiter = get_arbiter(self.arbiter)
                for name, n_grow in grow.items():
                    owner = structure.part(name)
                    flat = self.masks[name].view(-1)
                    if self.mode == "rigl":
                        chosen = select_growth(~flat, [scores[name]], n_grow)
                    elif owner == SHARED:       # arbitrated among the tasks that use the layer
                        voters = [t for t in tasks if t in structure.owners[name]]
                        chosen = arbiter.select_growth(~flat, [scores[t][name] for t in voters], n_grow)
                    else:
                        chosen = select_growth(~flat, [scores[owner][name]], n_grow)
                    flat[chosen] = True
                    mark = reset.setdefault(name, torch.zeros_like(flat))
                    mark[chosen] = True
                    grown_n[owner] += n_grow
            for name, mark in reset.items():
                weight, mask = self._params[name], self.masks[name]
                mark = mark.view_as(mask)
                self._fmasks[name].copy_(mask)
                weight.masked_fill_(mark, 0)  # dropped -> 0; grown (and dropped-then-regrown) start at 0
                if weight.grad is not None:
                    weight.grad.masked_fill_(mark | ~mask, 0)
                self._clear_state(weight, mark)
        self.num_updates += 1
        self.last_update = iteration
        return {"iteration": int(iteration), "drop_fraction": float(alpha), "final": bool(final),
                "dropped": dropped_n, "grown": grown_n,
                "dropped_total": sum(dropped_n.values()), "grown_total": sum(grown_n.values()),
                "sparsity": self.sparsity()}

    def _growth_scores(self, net: nn.Module, batch: Any, device: torch.device | str | None,
                       names: list[str]) -> dict:
        """Sum over slices (and ranks) of |dL/dW| on the current sparse net, flattened per layer.

        `rigl`: {name: score}. `disparse`: {task: {name: score}} over the task's pool among `names`.
        """
        params = self._params
        structure, tasks = self._layout()
        pools: dict[str | None, list[str]] = {}
        if self.mode == "rigl":
            pools[None] = names
        else:
            for t in tasks:
                in_pool = set(structure.pool(t))
                if any(n in in_pool for n in names):
                    pools[t] = [n for n in names if n in in_pool]
        scores = {t: {n: torch.zeros(params[n].numel(), dtype=torch.float32, device=params[n].device)
                      for n in pool} for t, pool in pools.items()}
        self._mask_grads = False
        try:
            with restored_buffers(net), torch.enable_grad():
                for piece in split_batch(to_device(batch, device), self.growth_splits):
                    preds = self.forward(net, piece)
                    last = len(pools) - 1
                    for k, (task, pool) in enumerate(pools.items()):
                        if task is None:
                            assert self.total_loss is not None
                            out = self.total_loss(preds, piece)
                            loss = out[0] if isinstance(out, (tuple, list)) else out
                        else:
                            assert self.task_loss is not None
                            loss = self.task_loss(task, preds[task], piece)
                        if not (torch.is_tensor(loss) and loss.requires_grad):
                            continue
                        grads = torch.autograd.grad(loss, [params[n] for n in pool], retain_graph=k < last,
                                                    allow_unused=True)
                        for n, g in zip(pool, grads):
                            if g is not None:
                                scores[task][n] += g.detach().abs().reshape(-1).float()
                    del preds
        finally:
            self._mask_grads = True
        if _distributed():
            for per_task in scores.values():
                for tensor in per_task.values():
                    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return scores[None] if self.mode == "rigl" else scores
