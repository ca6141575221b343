"""The training loop (docs/ORIGINAL.md §7.1), made resumable, device-agnostic and DDP-ready.

What it does, per optimizer step (`iteration` counts finished steps, starting at 0):

1. take the next training batch (the loader is cycled over epochs; see "Data order" below);
2. `controller.before_step(iteration, model, optimizer, batch, device)` when a sparsity controller
   is attached (its returned record, if any, is logged);
3. forward under the configured precision, weighted multi-task loss, backward, Adam step;
4. `controller.after_step(model, optimizer)`, then the per-iteration StepLR step;
5. every `train.log_every` steps: a JSON-lines/TensorBoard record; every `train.val_every` steps and
   after the last one: the weighted multi-task loss on the validation split (default `test`, as the
   original, which selects its model on the test set; `--val-split` chooses another split);
   `best_{name}.pth` whenever it improves, *including the first validation* (the original skipped
   that save, so a run whose first validation stayed best had no `best_` file);
6. every `train.save_every` steps and at the end: `last_{name}.pth`, the full resumable state.
   At the end also `final_{name}.pth`.

Differences from the original, on purpose:

* exactly `max_iters` optimizer steps. The original's loop breaks only once its counter *exceeds*
  `MAX_ITERS`, after the step, so it takes MAX_ITERS + 1 steps;
* Adam with coupled L2 weight decay (`torch.optim.Adam(weight_decay=...)`, not AdamW), as the
  original; StepLR stepped every iteration: lr(i) = lr * rate ** (i // every) for step i (0-based);
  `train.lr_schedule: cosine` (with `train.warmup_iters`) is an addition for short schedules;
* `constant_lr=True` (used for `disparse_pt`) keeps the LR fixed. The original builds a new Adam with
  RETRAIN_LR but leaves its StepLR pointing at the discarded optimizer, so its LR is constant too;
  we make that explicit rather than accidental;
* a non-finite loss (or non-finite weights at a save) stops the run with `NonFiniteError` (a
  ValueError: one line, exit 2 through `run_main`) *before* anything is written, so `last_` keeps
  the last good state.

Checkpoints (docs/ARCHITECTURE.md contract 4, written atomically by rank 0 only): `last_` holds everything
needed to resume (`model`, `masks`, `iteration`, `optimizer`, `scheduler`, `scaler`, `rng` (+
`rng_ranks` under DDP), `data_position`, `sparsity_state`, `best_value`, ...). `best_` and `final_`
hold the model, masks, iteration and validation result but not the optimizer, to keep them small.

Data order and exact resume: epoch `e` starts with every global RNG (Python, NumPy, torch) and the
loader's generator / `DistributedSampler` epoch set from `(seed, e, rank)`, inside a sandbox that puts
the global streams back afterwards; so the order and augmentation of epoch `e` depend on nothing but
those numbers. `last_` stores `(epoch, batches consumed)` and the RNG state after the step. `--resume`
rebuilds that epoch's iterator the same way, skips the consumed batches (loading and discarding them,
under a sandbox), then restores the saved RNG states: on CPU the resumed run ends bit-identical to an
uninterrupted one (tests/test_train.py checks `torch.equal` on the final weights). Validation runs
inside an RNG sandbox as well, so `val_every` does not change the trajectory.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from fileio import CheckpointError, atomic_save, load_checkpoint, load_model_state, make_checkpoint
from .controller import SparsityController
from .distributed import DistContext, all_gather_object, all_reduce_sum, is_dist, wrap_model
from .evaluate import autocast, move_batch, preserved_rng, test_loss
from .logging_utils import RunLogger
from .resume import ResumeError, check_iterations, resume_notes
from .runtime import rng_state, set_rng_state

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

CKPT_KINDS = ("best", "last", "final")


class NonFiniteError(ValueError):
    """The loss or the weights became NaN/inf; the run stopped and wrote nothing more."""


def checkpoint_path(dest: str | Path, kind: str, name: str) -> Path:
    """`{dest}/{kind}_{name}.pth` for kind in best, last, final (the original's names)."""
    if kind not in CKPT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    return Path(dest) / f"{kind}_{name}.pth"


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (default betas/eps) over all parameters, coupled L2 weight decay: the original's optimizer."""
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


LR_SCHEDULES = ("step", "cosine")


def cosine_factor(iteration: int, max_iters: int, warmup: int = 0) -> float:
    """LR factor of step `iteration` (0-based) under `cosine`: linear warm-up (iteration + 1) / warmup over
    the first `warmup` steps, then 0.5 * (1 + cos(pi * t)) with t going from 0 at the end of the warm-up
    to 1 at `max_iters`."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    span = max(1, max_iters - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (iteration - warmup) / span)))


def build_scheduler(optimizer: torch.optim.Optimizer, every: int, rate: float, constant: bool = False,
                    schedule: str = "step", max_iters: int = 0, warmup: int = 0
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration LR schedule. `step` (the original's): StepLR, lr * rate ** (i // every);
    `cosine`: `cosine_factor` over `max_iters` steps with `warmup` warm-up steps, for short schedules
    that must end annealed. `constant=True` keeps the LR fixed whatever the schedule."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r} (expected one of {', '.join(LR_SCHEDULES)})")
    if schedule == "cosine" and not constant:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda iteration: cosine_factor(iteration, int(max_iters), int(warmup)))
    every = max(1, int(every))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=1.0 if constant else float(rate))


@dataclass
class TrainOptions:
    """Knobs of one run; `from_config` reads `train.*`, keyword arguments override."""

    max_iters: int
    lr: float
    weight_decay: float
    lr_decay_every: int
    lr_decay_rate: float
    val_every: int
    save_every: int
    log_every: int
    precision: str = "fp32"
    constant_lr: bool = False
    lr_schedule: str = "step"
    warmup_iters: int = 0
    tensorboard: bool = True           # False: JSON-lines log only (many short runs, e.g. scripts/study.py)
    val_split: str = "test"
    seed: int = 0
    stop_after: Optional[int] = None   # stop (as if interrupted) once this iteration is done; resume later
    progress: Optional[bool] = None    # None: a bar when stderr is a terminal

    @classmethod
    def from_config(cls, config: Mapping, **overrides: Any) -> "TrainOptions":
        t = config["train"]
        values = dict(max_iters=int(t["max_iters"]), lr=float(t["lr"]), weight_decay=float(t["weight_decay"]),
                      lr_decay_every=int(t["lr_decay_every"]), lr_decay_rate=float(t["lr_decay_rate"]),
                      val_every=int(t["val_every"]), save_every=int(t["save_every"]),
                      log_every=int(t["log_every"]), precision=str(t["precision"]))
        # optional keys (engine.config.OPTIONAL_KEYS): when absent, the field's default above applies
        optional = {"lr_schedule": str, "warmup_iters": int, "tensorboard": bool}
        values.update({key: kind(t[key]) for key, kind in optional.items() if key in t})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class TrainResult:
    name: str
    iteration: int
    best_value: Optional[float]
    best_iteration: Optional[int]
    paths: dict[str, Path] = field(default_factory=dict)
    stopped_early: bool = False


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 15_485_863) % (2**31 - 1)


class DataStream:
    """Cycles a DataLoader over epochs with a per-epoch seeded order; knows its position for resume."""

    def __init__(self, loader: DataLoader, seed: int = 0, rank: int = 0) -> None:
        self.loader = loader
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.consumed = 0          # batches handed out in the current epoch
        self._it: Optional[Iterator] = None
        self._pending: Any = None  # the epoch's first batch, fetched inside the seeding sandbox
        self._exhausted = False

    def _seed_epoch(self, epoch: int) -> None:
        import random
        import numpy as np
        s = _epoch_seed(self.seed, epoch, self.rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for gen in {id(g): g for g in (getattr(self.loader, "generator", None),
                                        getattr(sampler, "generator", None)) if g is not None}.values():
            gen.manual_seed(_epoch_seed(self.seed, epoch, 0))

    def start(self, epoch: int, skip: int = 0) -> None:
        """Begin `epoch` (fresh iterator, deterministic order) and skip `skip` already-used batches."""
        self.epoch, self.consumed, self._exhausted, self._pending = epoch, 0, False, None
        with preserved_rng():
            self._seed_epoch(epoch)
            self._it = iter(self.loader)
            try:
                self._pending = next(self._it)
            except StopIteration:
                self._exhausted = True
        if self._exhausted and skip == 0:
            raise ValueError(f"the training loader yields no batches ({len(self.loader.dataset)} items, "
                             f"batch size {self.loader.batch_size}); use a smaller data.batch_size")
        if skip:
            with preserved_rng():
                self._pending = None
                self.consumed = 1
                while self.consumed < skip:
                    try:
                        next(self._it)
                    except StopIteration:
                        self._exhausted = True
                        break
                    self.consumed += 1
            self.consumed = skip

    def next(self) -> Any:
        if self._it is None:
            self.start(self.epoch)
        if self._pending is not None:
            batch, self._pending = self._pending, None
            self.consumed += 1
            return batch
        if not self._exhausted:
            try:
                batch = next(self._it)
                self.consumed += 1
                return batch
            except StopIteration:
                pass
        self.start(self.epoch + 1)
        return self.next()

    def position(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "batch": int(self.consumed)}


class Trainer:
    """One training run. `fit(resume=...)` returns a `TrainResult`.

    model: the bare model, already on `device` (wrapped in DDP here when `ctx` is distributed).
    train_loader: from `dataloaders.build_loader(config, "train", seed=..., distributed=...)`.
    val_loader: the validation split, unshuffled (sharded across ranks automatically); None = no validation.
    loss_fn: `engine.losses.build_loss(...)`, `(preds, batch) -> (total, {task: loss})`.
    controller: an optional sparsity controller (`engine.controller.SparsityController`). It gets the bare
      model, so a controller that runs its own forward/backward must reduce across ranks itself.
    method: stored in checkpoints (`baseline`, `disparse_static`, ...).
    extra_state: more entries for every checkpoint (e.g. the LTH round).
    on_step: called as `on_step(trainer)` right after each optimizer step (`trainer.iteration` = steps done).
    """

    def __init__(self, model: nn.Module, config: Mapping, train_loader: DataLoader, loss_fn: Callable,
                 device: torch.device, *, name: str, dest: str | Path, method: str = "baseline",
                 val_loader: Optional[DataLoader] = None, controller: Optional[SparsityController] = None,
                 ctx: Optional[DistContext] = None, options: Optional[TrainOptions] = None,
                 extra_state: Optional[dict] = None,
                 on_step: Optional[Callable[["Trainer"], None]] = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.ctx = ctx or DistContext(device=self.device)
        self.opts = options or TrainOptions.from_config(config)
        self.name = name
        self.dest = Path(dest)
        self.method = method
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.controller = controller
        self.extra_state = dict(extra_state or {})
        self.on_step = on_step
        self.channels_last = bool(config.get("model", {}).get("channels_last", False))
        autocast(self.device, self.opts.precision)  # fail early on amp without CUDA
        self.model = model
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(model, self.opts.lr, self.opts.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, self.opts.lr_decay_every, self.opts.lr_decay_rate,
                                         self.opts.constant_lr, self.opts.lr_schedule, self.opts.max_iters,
                                         self.opts.warmup_iters)
        self.scaler = torch.amp.GradScaler("cuda") if self.opts.precision == "amp" else None
        if controller is not None:
            controller.attach(model, self.optimizer)
        self.net = wrap_model(model, self.ctx)
        self.stream = DataStream(train_loader, self.opts.seed, self.ctx.rank)
        self.iteration = 0
        self.best_value: Optional[float] = None
        self.best_iteration: Optional[int] = None
        self.last_saved: Optional[int] = None
        self.logger = RunLogger(self.dest, name, enabled=self.ctx.is_main, tensorboard=self.opts.tensorboard)

    # ----------------------------------------------------------------- paths and checkpoints
    def path(self, kind: str) -> Path:
        return checkpoint_path(self.dest, kind, self.name)

    def _masks_and_sparsity(self) -> tuple[Optional[dict], float]:
        if self.controller is None:
            return None, 0.0
        masks = getattr(self.controller, "masks", None)
        return masks, float(self.controller.sparsity())

    def _check_weights_finite(self) -> None:
        for pname, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteError(f"weights became non-finite ({pname}) at iteration {self.iteration}; "
                                     f"stopped without saving. {self._last_good()}")

    def _last_good(self) -> str:
        if self.last_saved is None:
            return "No checkpoint of this run was written yet."
        return f"Last good checkpoint: {self.path('last')} (iteration {self.last_saved})."

    def _checkpoint(self, full: bool) -> dict:
        masks, sparsity = self._masks_and_sparsity()
        extra: dict[str, Any] = dict(iteration=self.iteration, name=self.name,
                                     best_value=self.best_value, best_iteration=self.best_iteration,
                                     val_split=self.opts.val_split, precision=self.opts.precision,
                                     world_size=self.ctx.world_size)
        extra.update(self.extra_state)
        if self.controller is not None:
            extra["sparsity_state"] = self.controller.state_dict()
        if full:
            extra.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         data_position=self.stream.position(), seed=self.opts.seed, max_iters=self.opts.max_iters)
            if self.scaler is not None:
                extra["scaler"] = self.scaler.state_dict()
        return make_checkpoint(self.model.state_dict(), self.config, self.method, masks=masks,
                               sparsity=sparsity, **extra)

    def save(self, kind: str) -> None:
        """Write `{kind}_{name}.pth` (rank 0). Collective under DDP (gathers every rank's RNG state)."""
        self._check_weights_finite()
        rngs = all_gather_object(rng_state()) if kind == "last" else None
        if kind == "last":
            self.last_saved = self.iteration      # on every rank: they must agree on later collectives
        if not self.ctx.is_main:
            return
        ckpt = self._checkpoint(full=(kind == "last"))
        if rngs is not None:
            ckpt["rng"] = rngs[0]
            if len(rngs) > 1:
                ckpt["rng_ranks"] = rngs
        atomic_save(ckpt, self.path(kind))

    def _resume(self) -> None:
        path = self.path("last")
        if not path.is_file():
            raise ResumeError(f"cannot resume: {path} does not exist (run without --resume first)")
        ckpt = load_checkpoint(path, list(self.config["tasks"]), list(self.config["num_classes"]))
        missing = [k for k in ("optimizer", "scheduler", "iteration", "rng", "data_position") if k not in ckpt]
        if missing:
            raise ResumeError(f"cannot resume from {path}: it lacks {', '.join(missing)} (not a last_ checkpoint)")
        if ckpt.get("method") != self.method:
            raise ResumeError(f"cannot resume from {path}: it was written by method {ckpt.get('method')!r}, "
                              f"this run is {self.method!r}")
        check_iterations(int(ckpt["iteration"]), self.opts.max_iters, path)
        if self.ctx.is_main:
            for note in resume_notes(ckpt.get("config") or {}, self.config, ckpt.get("seed"), self.opts.seed, path):
                warnings.warn(note, RuntimeWarning, stacklevel=3)
        if ckpt.get("seed") is not None:           # the data order and per-epoch seeds continue the run's own
            self.opts.seed = self.stream.seed = int(ckpt["seed"])
        load_model_state(self.model, ckpt["model"], source=str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.controller is not None:
            if "sparsity_state" not in ckpt:
                raise ResumeError(f"cannot resume from {path}: it has no sparsity controller state")
            self.controller.load_state_dict(ckpt["sparsity_state"])
        self.iteration = int(ckpt["iteration"])
        self.last_saved = self.iteration
        self.best_value = ckpt.get("best_value")
        self.best_iteration = ckpt.get("best_iteration")
        pos = ckpt["data_position"]
        self.stream.start(int(pos["epoch"]), skip=int(pos["batch"]))
        ranks = ckpt.get("rng_ranks")
        if self.ctx.world_size > 1:
            if ranks is not None and len(ranks) == self.ctx.world_size:
                set_rng_state(ranks[self.ctx.rank])
            else:
                warnings.warn(f"{path} was written with world size {ckpt.get('world_size')}, this run has "
                              f"{self.ctx.world_size}: resuming, but not bit-identically", stacklevel=2)
                set_rng_state(ckpt["rng"])
                torch.manual_seed(_epoch_seed(self.opts.seed, 10_000 + self.iteration, self.ctx.rank))
        else:
            if int(ckpt.get("world_size", 1)) != 1:
                warnings.warn(f"{path} was written with world size {ckpt.get('world_size')}; this run has 1: "
                              f"resuming, but not bit-identically", stacklevel=2)
            set_rng_state(ckpt["rng"])
        self.logger.log("event", self.iteration, event="resume", path=str(path))

    # ----------------------------------------------------------------- one step
    def _step(self, batch: Mapping[str, Any]) -> tuple[float, dict[str, float], float]:
        self.net.train()
        batch = move_batch(batch, self.device, self.channels_last)
        if self.controller is not None:
            record = self.controller.before_step(self.iteration, self.model, self.optimizer, batch, self.device)
            if record:
                self.logger.log("controller", self.iteration,
                                **{k: v for k, v in dict(record).items() if k not in ("kind", "iteration")})
        with autocast(self.device, self.opts.precision):
            preds = self.net(batch["img"])
        loss, parts = self.loss_fn({k: v.float() for k, v in preds.items()}, batch)
        names = list(parts)
        values = torch.stack([torch.as_tensor(v, device=self.device).detach().float().reshape(())
                              for v in [loss] + [parts[t] for t in names]])
        if is_dist():
            values = all_reduce_sum(values.clone()) / self.ctx.world_size
        values = values.tolist()
        if not all(math.isfinite(v) for v in values):
            bad = ", ".join(f"{t}={v}" for t, v in zip(names, values[1:]) if not math.isfinite(v))
            raise NonFiniteError(f"non-finite training loss {values[0]} at iteration {self.iteration + 1}"
                                 f"{' (' + bad + ')' if bad else ''}; stopped without saving. {self._last_good()}")
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.controller is not None:
            self.controller.after_step(self.model, self.optimizer)
        self.scheduler.step()
        self.iteration += 1
        return values[0], dict(zip(names, values[1:])), lr

    def validate(self) -> Optional[dict]:
        if self.val_loader is None:
            return None
        result = test_loss(self.net, self.val_loader, self.loss_fn, self.device, self.opts.precision,
                           self.channels_last)
        improved = self.best_value is None or result["loss"] < self.best_value
        if improved:
            self.best_value, self.best_iteration = result["loss"], self.iteration
        self.logger.log("val", self.iteration, loss=result["loss"], losses=result["losses"],
                        split=self.opts.val_split, count=result["count"], best=improved,
                        best_value=self.best_value)
        if improved:
            self.save("best")
        return result

    # ----------------------------------------------------------------- the loop
    def _show_progress(self) -> bool:
        if tqdm is None or not self.ctx.is_main:
            return False
        if self.opts.progress is None:
            return sys.stderr.isatty()
        return bool(self.opts.progress)

    def fit(self, resume: bool = False) -> TrainResult:
        opts = self.opts
        try:
            if resume:
                self._resume()
            else:
                self.stream.start(0)
                self.logger.log("event", 0, event="start", method=self.method, max_iters=opts.max_iters,
                                 lr=opts.lr, world_size=self.ctx.world_size, precision=opts.precision)
            bar = tqdm(total=opts.max_iters, initial=self.iteration, desc=self.name, dynamic_ncols=True,
                       disable=not self._show_progress()) if tqdm is not None else None
            window: list[float] = []
            stopped = False
            t0 = time.time()
            validated_at = None
            while self.iteration < opts.max_iters:
                loss, parts, lr = self._step(self.stream.next())
                window.append(loss)
                it = self.iteration
                if self.on_step is not None:
                    self.on_step(self)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if opts.log_every > 0 and (it % opts.log_every == 0 or it == 1):
                    self.logger.log("train", it, loss=loss, avg_loss=sum(window) / len(window), losses=parts,
                                    lr=lr, epoch=self.stream.epoch, seconds=round(time.time() - t0, 3))
                    window = []
                if (opts.val_every > 0 and it % opts.val_every == 0) or it == opts.max_iters:
                    self.validate()
                    validated_at = it
                stop_now = opts.stop_after is not None and it == opts.stop_after and it < opts.max_iters
                if (opts.save_every > 0 and it % opts.save_every == 0) or it == opts.max_iters or stop_now:
                    self.save("last")
                if stop_now:
                    stopped = True
                    break
            if bar is not None:
                bar.close()
            if not stopped:
                if validated_at != self.iteration and self.best_value is None and self.val_loader is not None:
                    self.validate()   # resumed at the very end: make sure a best_ exists
                if self.last_saved != self.iteration:
                    self.save("last")
                self.save("final")
                self.logger.log("event", self.iteration, event="end", best_value=self.best_value,
                                best_iteration=self.best_iteration)
            else:
                self.logger.log("event", self.iteration, event="stopped", reason="stop_after")
            paths = {k: self.path(k) for k in CKPT_KINDS}
            return TrainResult(self.name, self.iteration, self.best_value, self.best_iteration, paths, stopped)
        finally:
            self.logger.close()

