"""Training step: dense vs masked (StaticSparsity at 90 %) vs dynamic (DynamicSparsity, update and plain steps).

Masked training here computes densely and keeps the pruned weights at zero: a gradient hook multiplies each
weight's gradient by its float mask and `after_step` multiplies the weights once more (one fused
`_foreach_mul_`). Its cost over dense is those per-weight passes, so it grows with parameters, not with
pixels: a small crop and batch (the CPU default) make it look larger than at the paper's size.
`DynamicSparsity` adds nothing between updates; at an update step (every `dynamic.interval` iterations) it
drops by magnitude and regrows by the gradient of a growth forward/backward split into
`dynamic.growth_splits` slices of the batch, so that step costs about one more training step.

The step is the trainer's (`engine.trainer.Trainer._step` minus logging and the LR scheduler): train mode,
forward, `MultiTaskLoss`, zero_grad, backward, Adam (`build_optimizer`, the original's optimizer), and the
controller's before_step / after_step. Every variant has its own copy of the same initial net and its own
optimizer; the two dynamic rows share one net (the update step and a plain step of the same controller).
Variants are interleaved and each is the median of many steps, once with one thread and once with the
default thread count.
"""
from __future__ import annotations

import copy
import statistics
from typing import Callable

import torch

from common import (base_parser, fake_batch, interleaved_samples, machine_line, print_table, start, thread_settings,
                    workload)

TARGET_OVERHEAD = 0.05          # developers' guide: masked training costs at most 5 % over dense


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss, batch: dict,
              controller=None, iteration: int = 0, device: torch.device | None = None) -> Callable[[], None]:
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


def build_variants(args, device: torch.device) -> tuple[dict[str, Callable[[], None]], int, str]:
    from engine.trainer import build_optimizer
    from prune_utils.erk import erk_random_masks
    from prune_utils.sparse_training import DynamicSparsity, StaticSparsity
    work = workload("nyuv2", args)
    cfg, density = work.config, 1.0 - args.sparsity
    loss = work.loss()
    batch = fake_batch(work.tasks, work.batch, work.crop, device, args.seed)
    base = work.model(device)
    lr, wd = float(cfg["train"]["lr"]), float(cfg["train"]["weight_decay"])
    nets = {name: copy.deepcopy(base) for name in ("dense", "static", "dynamic")}
    opts = {name: build_optimizer(net, lr, wd) for name, net in nets.items()}
    masks, _ = erk_random_masks(base, density, torch.Generator().manual_seed(args.seed))
    static = StaticSparsity(masks)
    static.attach(nets["static"], opts["static"])
    dyn = cfg["dynamic"]
    dynamic = DynamicSparsity(model=nets["dynamic"], density=density, interval=dyn["interval"], end=dyn["end"],
                              drop_fraction=dyn["drop_fraction"], growth_splits=dyn["growth_splits"],
                              task_loss=loss.task_loss, tasks=list(work.tasks),
                              generator=torch.Generator().manual_seed(args.seed))
    dynamic.attach(nets["dynamic"], opts["dynamic"])
    interval = int(dyn["interval"])
    assert dynamic.is_update_iteration(interval) and not dynamic.is_update_iteration(interval + 1)
    fns = {
        "dense": make_step(nets["dense"], opts["dense"], loss, batch),
        "static": make_step(nets["static"], opts["static"], loss, batch, static, 1, device),
        "dynamic, plain step": make_step(nets["dynamic"], opts["dynamic"], loss, batch, dynamic, interval + 1, device),
        "dynamic, update step": make_step(nets["dynamic"], opts["dynamic"], loss, batch, dynamic, interval, device),
    }
    return fns, interval, work.describe() + f", growth_splits {dyn['growth_splits']}"


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], width=0.25, crop=129, batch=2, repeats=15)
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
        med = {name: statistics.median(times) for name, times in samples.items()}
        dense = med["dense"]
        static_over = med["static"] / dense - 1
        amortised = (med["dynamic, update step"] + (interval - 1) * med["dynamic, plain step"]) / interval
        q = statistics.quantiles(samples["dense"], n=4)
        rows.append([threads, f"{1000 * dense:.0f}", f"{100 * (q[2] - q[0]) / dense:.0f} %", f"{1000 * med['static']:.0f}", f"{100 * static_over:+.1f} %",
                     f"<= {100 * TARGET_OVERHEAD:.0f} %: {'met' if static_over <= TARGET_OVERHEAD else 'MISSED'}",
                     f"{100 * (med['dynamic, plain step'] / dense - 1):+.1f} %",
                     f"{med['dynamic, update step'] / dense:.2f}x", f"{100 * (amortised / dense - 1):+.1f} %"])
    print_table(f"Training step, {100 * args.sparsity:g} % sparse vs dense (median of {args.repeats}, interleaved)",
                ["threads", "dense ms", "dense IQR / median", "static ms", "static overhead", "target", "dynamic plain step overhead",
                 "dynamic update step / dense", f"dynamic overhead amortised over {interval} steps"], rows)


if __name__ == "__main__":
    main()
