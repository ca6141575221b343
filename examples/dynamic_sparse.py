"""Dynamic sparse training (DiSparse dynamic, or RigL) in a plain PyTorch loop.

    python -m examples.dynamic_sparse [--sparsity 0.8] [--mode disparse] [--steps 80] [--seed 0]

The model computes one task per call, `model(img, task)` (as in codebases that route by task name), so
`TaskSpec(outputs={task: fn(model, inputs)})` tells the API how to get each task's prediction. The net
starts sparse from random ERK masks at the target sparsity; every `interval` steps until `end`, each
layer drops its smallest-magnitude weights and regrows as many where the gradient is largest: per task
on its own layers, and on the shared encoder by the arbiter over the tasks (`disparse`), or by the
summed loss everywhere (`rigl`). Every layer keeps its count, so the sparsity is the target throughout;
regrown weights start at zero with zero Adam state.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prune_utils import TaskSpec, TaskStructure, dynamic_sparsity, format_report, sparsity_report

from .command_line import run_from_command_line
from .scenes import NUM_CLASSES, batches, depth_loss, pixel_accuracy, render_scenes

TASKS = {"seg": NUM_CLASSES, "depth": 1}


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TaskRoutedNet(nn.Module):
    """A shared strided encoder and one small decoder per task; `forward(img, task)` runs one task."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(conv(3, width), conv(width, 2 * width, 2), conv(2 * width, 2 * width),
                                     conv(2 * width, 4 * width, 2))
        self.decoders = nn.ModuleDict({task: nn.Sequential(conv(4 * width, 2 * width), nn.Conv2d(2 * width, out, 1))
                                       for task, out in TASKS.items()})

    def forward(self, img: torch.Tensor, task: str) -> torch.Tensor:
        out = self.decoders[task](self.encoder(img))
        return F.interpolate(out, size=img.shape[-2:], mode="bilinear", align_corners=False)


def make_spec() -> TaskSpec:
    return TaskSpec(list(TASKS), {"seg": nn.CrossEntropyLoss(ignore_index=255), "depth": depth_loss},
                    outputs={task: (lambda model, img, task=task: model(img, task)) for task in TASKS})


def run(sparsity: float = 0.8, mode: str = "disparse", steps: int = 80, seed: int = 0, interval: int = 10,
        end: int = 60, callback: Callable[[int, nn.Module, torch.optim.Optimizer, dict], None] | None = None,
        verbose: bool = True) -> dict[str, Any]:
    torch.manual_seed(seed)
    train, test = render_scenes(96, seed=seed), render_scenes(32, seed=seed + 1000)
    stream = batches(train, 8, torch.Generator().manual_seed(seed))
    model, spec = TaskRoutedNet(), make_spec()
    structure = TaskStructure.from_gradient_flow(model, spec, next(stream))

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sparse = dynamic_sparsity(model, optimizer, spec, sparsity=sparsity, structure=structure, mode=mode,
                              interval=interval, end=end, drop_fraction=0.3, generator=seed)
    initial = {name: int(mask.sum()) for name, mask in sparse.masks.items()}
    start = {name: mask.clone() for name, mask in sparse.masks.items()}
    records = []
    for step in range(steps):
        batch = next(stream)
        record = sparse.before_step(step, batch)          # a mask update on schedule, else None
        if record is not None:
            records.append(record)
        loss = spec.total_loss(spec.predict(model, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparse.after_step()
        if callback is not None:
            callback(step, model, optimizer, sparse.masks)
    with torch.no_grad():
        model.eval()
        seg_acc = pixel_accuracy(model(test["img"], "seg"), test["seg"])
        depth_err = float(depth_loss(model(test["img"], "depth"), test["depth"]))
    changed = sum(int((sparse.masks[n] != start[n]).sum()) for n in start) // 2
    if verbose:
        print(format_report(sparsity_report(model, sparse.masks, structure)))
        for r in records:
            print(f"step {r['iteration']:>3}: drop fraction {r['drop_fraction']:.3f}, moved {r['dropped_total']} "
                  f"weights ({', '.join(f'{part} {n}' for part, n in r['grown'].items())})"
                  + (" [final]" if r["final"] else ""))
        print(f"sparsity {sparse.sparsity():.4%} (asked {sparsity:.2%}); {changed} weights moved in all; "
              f"test seg pixel acc {seg_acc:.3f}, depth abs err {depth_err:.3f}")
    return {"model": model, "optimizer": optimizer, "sparse": sparse, "structure": structure, "spec": spec,
            "sparsity": sparse.sparsity(), "initial_counts": initial, "records": records, "moved": changed,
            "metrics": {"seg_pixel_acc": seg_acc, "depth_abs_err": depth_err}}


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_command_line(run, __doc__, argv, sparsity=0.8, steps=80,
                                 steps_help="training steps (mask updates every 10 until 60)",
                                 choice="mode", default="disparse", choices=("disparse", "rigl"))


if __name__ == "__main__":
    raise SystemExit(main())
