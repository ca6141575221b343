r"""Per-task saliency scores, by registry name (docs/ORIGINAL.md §5.1, §5.2).

`compute_scores(model, batches, loss_fn, tasks, method=...)` returns `{task: {param name: FloatTensor}}`
covering each task's pool (the backbone followed by the task's own head, `TaskStructure.pool`),
on the CPU. With `task_agnostic_weights={task: λ}` it returns one score over every prunable weight,
`{ALL: {...}}` (`ALL == "__all__"`), from the weighted summed loss: the SNIP / random / magnitude
baselines, masked with `mask_builder.global_topk`.

| name | score | data | network scored |
|---|---|---|---|
| `snip` | Σ_batches \|∂L_t/∂w ⊙ w\| = \|∂L_t/∂m\| at m = 1 | yes | a copy whose Conv/Linear weights are re-drawn Xavier-normal (gain 1) from the seed |
| `grad_weight2` | (Σ_batches \|∂L_t/∂w\|) ⊙ w² | yes | a copy of the trained net itself |
| `magnitude` | \|w\| | no | the net |
| `random` | U[0, 1) per weight, independent per task | no | (seeded) |

Add your own with `register_saliency(name, fn)`, where `fn(model, batches, loss_fn, tasks, **options)`
returns the same structure; `GradientSaliency(name, probe, finalize)` and `WeightSaliency(name, fn)`
build the two usual kinds.

One forward per batch, shared by all tasks
------------------------------------------
The original runs one full forward per task per batch (T forwards). Here each batch is forwarded once;
then, task by task, `torch.autograd.grad(L_t, pool_t, retain_graph=...)` takes the gradient of the
unweighted single-task loss with respect to that task's pool only (backbone + its head; the other heads
and every bias / BN parameter are frozen and never differentiated). `shared_forward=False` runs the
original's per-task forwards (same scores to float rounding when the forward is deterministic, see modes).
Per-task |grad| sums accumulate on the device in one flat float32 buffer per task and move to the CPU
once at the end; the returned per-parameter tensors are views into that buffer.

Modes: train-mode batch norm, dropout, determinism
--------------------------------------------------
The original scores a network in train mode: batch-statistic BN **and active dropout** (p = 0.5 in the
heads), so its masks change from run to run (docs/ORIGINAL.md §11 item 24). `mode` chooses:

* `"batch_stats"` (default): BN uses batch statistics (as the original: at a fresh init the running
  statistics mean nothing), dropout is off. Scores are a deterministic function of the data and the
  seed, and the shared and per-task forwards agree.
* `"train"`: the original's behaviour, dropout active. Still reproducible: the dropout draws come from a
  torch RNG seeded from `generator`, so the same seed gives the same scores and masks.
* `"eval"`: running BN statistics, no dropout (for scoring a trained net as it is used at test time).

The scoring always happens on a deep copy, so the caller's model keeps its weights, BN running
statistics and `.grad` untouched.

Seeds: `generator` is a `torch.Generator`, an int seed, or None (then one seed is drawn from torch's
global RNG, so `engine.runtime.seed_everything` makes runs reproducible). Precisely: base = the first
draw of `torch.randint(0, 2**62, (1,), generator=generator)`; the Xavier re-draw and the random scores
use `torch.Generator().manual_seed(base)`, the dropout draws `torch.manual_seed(base + 1 + rank)` inside
a forked RNG state (the caller's global RNG is left as it was).

Distributed: when `torch.distributed` is initialised, every rank scores its own batches; the summed
|grad| buffers are all-reduced (SUM) before the multiplication by the weights, so every rank ends with
the scores of all batches of all ranks. The base seed is broadcast from rank 0 so that all ranks score
the same Xavier copy; dropout draws differ per rank.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .batches import to_device
from .masks import prunable_parameters, unwrap
from .structure import TaskStructure

ALL = "__all__"
MODES = ("batch_stats", "train", "eval")
ScoreDict = dict[str, dict[str, torch.Tensor]]
LossFn = Callable[[str, Mapping[str, torch.Tensor], Any], torch.Tensor]
Forward = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]      # (model, batch) -> task -> prediction


# ----------------------------------------------------------------------------------------------------------
# helpers


def make_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A CPU generator from a generator, an int seed, or None (a seed drawn from torch's global RNG)."""
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ValueError("pass a CPU torch.Generator (or an int seed) to seed the scoring")
        return generator
    if generator is None:
        generator = int(torch.randint(0, 2 ** 62, (1,)))
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return torch.Generator().manual_seed(int(generator))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _base_seed(generator: torch.Generator) -> int:
    """One seed for the whole scoring, identical on every rank (rank 0's)."""
    seed = torch.randint(0, 2 ** 62, (1,), generator=generator)
    if _distributed():
        if torch.distributed.get_backend() == "nccl":
            seed = seed.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.broadcast(seed, src=0)
    return int(seed)


def _resolve_loss(loss_fn: Any) -> LossFn:
    """`loss_fn(task, preds, batch)`; an `engine.losses.MultiTaskLoss` is used through its `.single`."""
    single = getattr(loss_fn, "single", None)
    if callable(single):
        return single
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(task, preds, batch)")
    return loss_fn


def take_batches(batches: Iterable, num_batches: int | None) -> Iterator:
    """The first `num_batches` batches (all when None). A re-iterable (list, DataLoader) is restarted
    when it runs out; a one-shot iterator that runs out just ends early (with a warning).

    Which of the two `batches` is, is read from its type: calling `iter()` to find out would start a
    DataLoader's workers and advance its sampler's epoch for nothing."""
    if num_batches is None:
        yield from batches
        return
    if num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    produced = 0
    one_shot = isinstance(batches, Iterator)
    while produced < num_batches:
        empty = True
        for batch in batches:
            empty = False
            yield batch
            produced += 1
            if produced >= num_batches:
                return
        if empty or one_shot:
            if produced == 0:
                raise ValueError("no batches to score (the data loader yields nothing)")
            warnings.warn(f"only {produced} of the {num_batches} requested batches were available", RuntimeWarning,
                          stacklevel=3)
            return


def _layout(model: nn.Module, tasks: Sequence[str], structure: TaskStructure | None,
            task_agnostic: bool) -> dict[str, list[str]]:
    """ALL -> every prunable weight, or task -> its pool (backbone names then head names)."""
    if task_agnostic:
        return {ALL: list(prunable_parameters(model))}
    structure = structure or TaskStructure.from_model(model)
    return {task: list(structure.pool(task)) for task in tasks}


class _FlatScores:
    """One flat float32 buffer per key (a task, or ALL) with a view per parameter."""

    def __init__(self, layout: Mapping[str, Sequence[str]], shapes: Mapping[str, torch.Size],
                 device: torch.device) -> None:
        self.layout = {key: list(names) for key, names in layout.items()}
        self.shapes = shapes
        self.flat = {key: torch.zeros(sum(shapes[n].numel() for n in names), dtype=torch.float32, device=device)
                     for key, names in self.layout.items()}
        self.views = {key: self._split(self.flat[key], names) for key, names in self.layout.items()}

    def _split(self, flat: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        views, offset = {}, 0
        for name in names:
            numel = self.shapes[name].numel()
            views[name] = flat[offset:offset + numel].view(self.shapes[name])
            offset += numel
        return views

    def all_reduce(self) -> None:
        if _distributed():
            for flat in self.flat.values():
                torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)

    def to_cpu(self) -> ScoreDict:
        return {key: self._split(flat.cpu(), self.layout[key]) for key, flat in self.flat.items()}


def _set_mode(probe: nn.Module, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r} (expected one of {', '.join(MODES)})")
    if mode == "eval":
        probe.eval()
        return
    probe.train()
    if mode == "batch_stats":
        for module in probe.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()


def _check_tasks(tasks: Sequence[str], task_agnostic_weights: Mapping[str, float] | None) -> list[str]:
    tasks = list(tasks)
    if not tasks:
        raise ValueError("compute_scores needs at least one task")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"a task is listed twice: {tasks}")
    if task_agnostic_weights is not None:
        unknown = [t for t in task_agnostic_weights if t not in tasks]
        if unknown:
            raise ValueError(f"task_agnostic_weights names task(s) {unknown} not in {tasks}")
    return tasks


# ----------------------------------------------------------------------------------------------------------
# the two kinds of saliency


class GradientSaliency:
    """Σ_batches |∂L_t/∂w| on a probe copy of the net, then `finalize(sum_abs_grad, probe_weight)` in place.

    `probe(model, generator) -> nn.Module` makes the copy that is differentiated (it may re-initialise
    weights); `finalize` turns the summed |gradient| into the score (e.g. × |w| for SNIP). With
    `signed=True` the gradients are summed with their signs (Σ_batches ∂L_t/∂w, the full-data gradient), for
    scores such as first-order Taylor terms that cancel across weights (`prune_utils.channel_importance`).
    """

    needs_data = True

    def __init__(self, name: str, probe: Callable[[nn.Module, torch.Generator], nn.Module],
                 finalize: Callable[[torch.Tensor, torch.Tensor], None], signed: bool = False) -> None:
        self.name = name
        self.probe = probe
        self.finalize = finalize
        self.signed = signed

    def __call__(self, model: nn.Module, batches: Iterable, loss_fn: Any, tasks: Sequence[str], *,
                 num_batches: int | None = None, device: Any = None, generator: Any = None,
                 task_agnostic_weights: Mapping[str, float] | None = None, shared_forward: bool = True,
                 mode: str = "batch_stats", progress: bool | None = None, input_key: str = "img",
                 structure: TaskStructure | None = None, forward: Forward | None = None) -> ScoreDict:
        from tqdm import tqdm

        tasks = _check_tasks(tasks, task_agnostic_weights)
        if batches is None:
            raise ValueError(f"saliency {self.name!r} needs data batches")
        model = unwrap(model)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        loss = _resolve_loss(loss_fn)
        run = forward or (lambda net, batch: net(batch[input_key]))
        seed = _base_seed(make_generator(generator))
        probe = self.probe(model, torch.Generator().manual_seed(seed)).to(device)
        _set_mode(probe, mode)
        weights = prunable_parameters(probe)
        for param in probe.parameters():
            param.requires_grad_(False)
        layout = _layout(model, tasks, structure, task_agnostic_weights is not None)
        for key_names in layout.values():
            for name in key_names:
                weights[name].requires_grad_(True)
        acc = _FlatScores(layout, {n: w.shape for n, w in weights.items()}, device)
        rank = torch.distributed.get_rank() if _distributed() else 0
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed + 1 + rank)     # dropout draws (mode "train"); distinct per rank
            show = None if progress is None else not progress
            for batch in tqdm(take_batches(batches, num_batches), total=num_batches, disable=show,
                              desc=f"saliency ({self.name})", leave=False):
                batch = to_device(batch, device)
                if task_agnostic_weights is not None:
                    preds = run(probe, batch)
                    total = sum(float(task_agnostic_weights.get(t, 0.0)) * loss(t, preds, batch) for t in tasks)
                    self._accumulate(total, weights, acc.views[ALL], retain=False)
                    continue
                preds = run(probe, batch) if shared_forward else None
                for i, task in enumerate(tasks):
                    if not shared_forward:
                        preds = run(probe, batch)
                    retain = shared_forward and i < len(tasks) - 1
                    self._accumulate(loss(task, preds, batch), weights, acc.views[task], retain)
                del preds
        acc.all_reduce()
        with torch.no_grad():
            for key, views in acc.views.items():
                for name, view in views.items():
                    self.finalize(view, weights[name].detach())
        return acc.to_cpu()

    def _accumulate(self, loss: torch.Tensor, weights: Mapping[str, torch.Tensor],
                    views: Mapping[str, torch.Tensor], retain: bool) -> None:
        names = list(views)
        grads = torch.autograd.grad(loss, [weights[n] for n in names], retain_graph=retain, allow_unused=True)
        with torch.no_grad():
            for name, grad in zip(names, grads):
                if grad is not None:
                    views[name].add_(grad if self.signed else grad.abs_())


class WeightSaliency:
    """A data-free score `fn(weight, generator) -> tensor` per prunable weight (magnitude, random)."""

    needs_data = False

    def __init__(self, name: str, fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor]) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, model: nn.Module, batches: Iterable | None = None, loss_fn: Any = None,
                 tasks: Sequence[str] = (), *, task_agnostic_weights: Mapping[str, float] | None = None,
                 generator: Any = None, device: Any = None, structure: TaskStructure | None = None,
                 **_: Any) -> ScoreDict:
        tasks = _check_tasks(tasks, task_agnostic_weights)
        model = unwrap(model)
        gen = torch.Generator().manual_seed(_base_seed(make_generator(generator)))
        weights = {n: w.detach().cpu() for n, w in prunable_parameters(model).items()}
        layout = _layout(model, tasks, structure, task_agnostic_weights is not None)
        out = _FlatScores(layout, {n: w.shape for n, w in weights.items()}, torch.device("cpu"))
        with torch.no_grad():
            for key, views in out.views.items():
                for name, view in views.items():
                    view.copy_(self.fn(weights[name], gen))
        return out.to_cpu()


# ----------------------------------------------------------------------------------------------------------
# the built-in methods


def xavier_probe(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A deep copy whose every Conv2d/Linear weight is re-drawn Xavier-normal (gain 1) from `generator`.

    Drawn on the CPU in `named_modules` order, so the values do not depend on the device.
    """
    probe = copy.deepcopy(unwrap(model))
    with torch.no_grad():
        for weight in prunable_parameters(probe).values():
            draw = torch.empty(weight.shape, dtype=torch.float32)
            nn.init.xavier_normal_(draw, generator=generator)
            weight.copy_(draw)
    return probe


def copy_probe(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A deep copy of the net itself (its trained weights)."""
    return copy.deepcopy(unwrap(model))


def _times_abs_weight(acc: torch.Tensor, weight: torch.Tensor) -> None:
    acc.mul_(weight.abs())


def _times_weight_squared(acc: torch.Tensor, weight: torch.Tensor) -> None:
    acc.mul_(weight.square())


SALIENCY: dict[str, Callable[..., ScoreDict]] = {
    "snip": GradientSaliency("snip", xavier_probe, _times_abs_weight),
    "grad_weight2": GradientSaliency("grad_weight2", copy_probe, _times_weight_squared),
    "magnitude": WeightSaliency("magnitude", lambda w, g: w.abs()),
    "random": WeightSaliency("random", lambda w, g: torch.rand(w.shape, generator=g)),
}


def register_saliency(name: str, fn: Callable[..., ScoreDict], overwrite: bool = False) -> None:
    """Make a saliency method available by name (config `pruning.saliency` / `pruning.pt_saliency`)."""
    if name in SALIENCY and not overwrite:
        raise ValueError(f"saliency {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(fn):
        raise TypeError(f"saliency {name!r} must be callable")
    SALIENCY[name] = fn


def get_saliency(method: str | Callable[..., ScoreDict]) -> Callable[..., ScoreDict]:
    if callable(method):
        return method
    if method not in SALIENCY:
        raise ValueError(f"unknown saliency method {method!r} (expected one of {', '.join(SALIENCY)})")
    return SALIENCY[method]


def compute_scores(model: nn.Module, batches: Iterable[Any] | None, loss_fn: Any,
                   tasks: Sequence[str], method: str = "snip", num_batches: int | None = None, device: Any = None,
                   generator: torch.Generator | int | None = None,
                   task_agnostic_weights: Mapping[str, float] | None = None, *, shared_forward: bool = True,
                   mode: str = "batch_stats", progress: bool | None = None, input_key: str = "img",
                   structure: TaskStructure | None = None, forward: Forward | None = None) -> ScoreDict:
    """Per-task saliency `{task: {param name: FloatTensor (CPU)}}` over each task's pool.

    `batches`: what `forward` reads (by default dicts with `input_key`, the image) and the targets
    `loss_fn` reads; the first `num_batches` are used (all when None; a DataLoader is restarted if it is
    shorter).
    `loss_fn(task, preds, batch)`: the unweighted single-task loss (an `engine.losses.MultiTaskLoss` works:
    its `.single` is used). `task_agnostic_weights={task: λ}` scores all weights at once from
    Σ_t λ_t L_t and returns `{ALL: {...}}`. See the module docstring for `mode`, `shared_forward`, seeds
    and distributed runs. Data-free methods (`magnitude`, `random`) ignore `batches` and `loss_fn`.
    `structure`: the model's `TaskStructure` (default: `TaskStructure.from_model(model)`).
    `forward(model, batch) -> {task: prediction}` runs the model on a batch (any structure, moved to the
    device); the default is `model(batch[input_key])` for a model returning a dict.
    """
    saliency = get_saliency(method)
    return saliency(model, batches, loss_fn, tasks, num_batches=num_batches, device=device, generator=generator,
                    task_agnostic_weights=task_agnostic_weights, shared_forward=shared_forward, mode=mode,
                    progress=progress, input_key=input_key, structure=structure, forward=forward)
