"""Training step: dense vs masked (StaticSparsity at 90 %) vs dynamic (DynamicSparsity, update and plain steps).

Masked training here computes densely and keeps the pruned weights at zero: a gradient hook multiplies each
weight's gradient by its float mask (and `after_step` re-zeroes the weights every `reapply_every` steps).
Its cost over dense is per weight (that pass, and on CPUs Adam's sqrt over a mostly-zero `exp_avg_sq`, see
docs/BENCHMARKS.md), so it grows with parameters, not with pixels: a small crop and batch (the CPU default)
make it look larger than at the paper's size.
`DynamicSparsity` adds nothing between updates; at an update step (every `dynamic.interval` iterations) it
drops by magnitude and regrows by the gradient of a growth forward/backward split into
`dynamic.growth_splits` slices of the batch, so that step costs about one more training step.

The step is the trainer's (`engine.trainer.Trainer._step` minus logging and the LR scheduler): train mode,
forward, `MultiTaskLoss`, zero_grad, backward, Adam (`build_optimizer`, the original's optimizer), and the
controller's before_step / after_step. Every variant has its own copy of the same initial net, its own
optimizer and controller (ERK random masks: the pattern does not change the cost of a dense computation).
Variants are interleaved round by round; each overhead is the median over rounds of the variant's time / the
dense time of the same round, once with one thread and once with the default thread count.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from typing import Callable

# common first: it sets OMP_WAIT_POLICY before torch loads OpenMP, and puts the repository on sys.path
from common import (base_parser, fake_batch, interleaved_samples, machine_line, paired_ratio, print_table, spread,  # isort: skip
                    start, thread_settings, workload)
import torch

from engine.losses import MultiTaskLoss
from prune_utils.sparse_training import StaticSparsity

TARGET_OVERHEAD = 0.05          # developers' guide: masked training costs at most 5 % over dense


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: MultiTaskLoss, batch: dict,
              controller: StaticSparsity | None = None, iteration: int = 0,
              device: torch.device | None = None) -> Callable[[], None]:
    """One training step of `model` on `batch`, as the trainer takes it."""
    def step() -> None:
        model.train()
        if controller is not None:
            controller.before_step(iteration, model, optimizer, batch, device)
        total, _ = loss(model(batch["img"]), batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if controller is not None:
            controller.after_step(model, optimizer)
    return step


def build_variants(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Callable[[], None]], int, str]:
    """dense, static, dynamic plain step, dynamic update step: each on its own copy of one initial net."""
    from engine.trainer import build_optimizer
    from prune_utils.erk import erk_random_masks
    from prune_utils.sparse_training import DynamicSparsity
    work = workload("nyuv2", args)
    cfg, density, dyn = work.config, 1.0 - args.sparsity, work.config["dynamic"]
    loss = work.loss()
    batch = fake_batch(work.tasks, work.batch, work.crop, device, args.seed)
    base = work.model(device)
    interval = int(dyn["interval"])

    def variant(controller_kind: str | None, iteration: int = 1) -> Callable[[], None]:
        net = copy.deepcopy(base)
        optimizer = build_optimizer(net, float(cfg["train"]["lr"]), float(cfg["train"]["weight_decay"]))
        seed = torch.Generator().manual_seed(args.seed)
        controller = None
        if controller_kind == "static":
            controller = StaticSparsity(erk_random_masks(net, density, seed)[0])
        elif controller_kind == "dynamic":
            controller = DynamicSparsity(model=net, density=density, interval=interval, end=dyn["end"],
                                         drop_fraction=dyn["drop_fraction"], growth_splits=dyn["growth_splits"],
                                         task_loss=loss.task_loss, tasks=list(work.tasks), generator=seed)
        if controller is not None:
            controller.attach(net, optimizer)
        return make_step(net, optimizer, loss, batch, controller, iteration, device)

    # A plain dynamic step never follows an update step of the same net here: in training 49 of 50 do not.
    fns = {"dense": variant(None), "static": variant("static"),
           "dynamic, plain step": variant("dynamic", interval + 1), "dynamic, update step": variant("dynamic", interval)}
    return fns, interval, work.describe() + f", growth_splits {dyn['growth_splits']}"


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], width=0.25, crop=129, batch=2, repeats=21)
    parser.add_argument("--sparsity", type=float, default=0.9, help="sparsity of the masks, a fraction (default: 0.9)")
    args = parser.parse_args()
    device = start(args)
    settings = thread_settings(args, device)
    fns, interval, what = build_variants(args, device)
    print(machine_line(device), flush=True)
    print(f"{what}; dynamic interval {interval}", flush=True)
    rows = []
    for threads in settings:
        torch.set_num_threads(threads)
        samples = interleaved_samples(fns, device, args.repeats, warmup=2)
        dense = statistics.median(samples["dense"])
        static = paired_ratio(samples, "static", "dense") - 1
        plain = paired_ratio(samples, "dynamic, plain step", "dense")
        update = paired_ratio(samples, "dynamic, update step", "dense")
        amortised = (update + (interval - 1) * plain) / interval - 1
        rows.append([threads, f"{1000 * dense:.0f}", f"{100 * spread(samples['dense']):.0f} %", f"{100 * static:+.1f} %",
                     f"<= {100 * TARGET_OVERHEAD:.0f} %: {'met' if static <= TARGET_OVERHEAD else 'MISSED'}",
                     f"{100 * (plain - 1):+.1f} %", f"{update:.2f}x", f"{100 * amortised:+.1f} %"])
    print_table(f"Training step, {100 * args.sparsity:g} % sparse vs dense (median over {args.repeats} interleaved "
                f"rounds of the per-round ratio to dense)",
                ["threads", "dense ms (median)", "dense IQR / median", "static overhead", "target",
                 "dynamic plain step overhead", "dynamic update step / dense",
                 f"dynamic overhead amortised over {interval} steps"], rows)


if __name__ == "__main__":
    main()
