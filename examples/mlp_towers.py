"""A hard-parameter-sharing MLP with task towers on a generated tabular problem, pruned after training.

    python -m examples.mlp_towers [--sparsity 0.8] [--arbiter majority] [--steps 300] [--seed 0]

Three tasks read the same 24 features: `value` (regression), `churn` (binary) and `segment` (three
classes). The model (a shared bottom MLP and one tower per task) returns a tuple in task order, and the
batches are `(features, (value, churn, segment))` tuples: `TaskSpec` maps both by position. The task
ownership is inferred from gradient flow. The dense net is trained first, then pruned DiSparse-style
from its trained weights (per-task `grad_weight2` scores, the arbiter deciding the shared bottom: with
`majority` a shared weight needs two of the three tasks), then fine-tuned with SGD (Nesterov momentum,
weight decay) while the masks hold.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from prune_utils import (ARBITERS, SparseTraining, TaskSpec, TaskStructure, apply_masks, build_masks,
                         format_report, mask_sparsity, sparsity_report, static_sparsity, task_scores)

from .command_line import run_from_command_line

TASKS = ("value", "churn", "segment")
FEATURES = 24


def make_data(count: int, generator: torch.Generator) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Features x ~ N(0, 1); each task depends non-linearly on its own features and on shared ones."""
    x = torch.randn(count, FEATURES, generator=generator)
    noise = 0.1 * torch.randn(count, generator=generator)
    value = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] + noise
    churn = ((2 * x[:, 0] - x[:, 4] + x[:, 1] * x[:, 5] + noise) > 0).float()
    segment = torch.stack([x[:, 6] + x[:, 7], x[:, 8] * x[:, 1], x[:, 9] - x[:, 0]], dim=1).argmax(dim=1)
    return x, (value, churn, segment)


class SharedBottomMLP(nn.Module):
    def __init__(self, hidden: int = 128, tower: int = 32) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.towers = nn.ModuleList(nn.Sequential(nn.Linear(hidden, tower), nn.ReLU(), nn.Linear(tower, out))
                                    for out in (1, 1, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.bottom(x)
        value, churn, segment = (tower(h) for tower in self.towers)
        return value.squeeze(1), churn.squeeze(1), segment


def make_spec() -> TaskSpec:
    return TaskSpec(TASKS, {"value": nn.MSELoss(), "churn": nn.BCEWithLogitsLoss(),
                            "segment": nn.CrossEntropyLoss()})


def minibatches(data: tuple[torch.Tensor, tuple[torch.Tensor, ...]], batch_size: int,
                generator: torch.Generator) -> Any:
    """An endless stream of shuffled `(x, (value, churn, segment))` batches."""
    x, targets = data
    while True:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield x[index], tuple(t[index] for t in targets)


@torch.no_grad()
def evaluate(model: nn.Module, data: tuple[torch.Tensor, tuple[torch.Tensor, ...]]) -> dict[str, float]:
    x, (value, churn, segment) = data
    v, c, s = model(x)
    return {"value_mse": float(((v - value) ** 2).mean()),
            "churn_acc": float(((c > 0).float() == churn).float().mean()),
            "segment_acc": float((s.argmax(dim=1) == segment).float().mean())}


def train(model: nn.Module, spec: TaskSpec, stream: Any, optimizer: torch.optim.Optimizer, steps: int,
          sparse: SparseTraining | None = None,
          callback: Callable[[int, nn.Module, torch.optim.Optimizer, dict], None] | None = None) -> None:
    """The user's loop; `sparse` is the only addition for sparse training."""
    for step in range(steps):
        batch = next(stream)
        if sparse is not None:
            sparse.before_step(step, batch)
        loss = spec.total_loss(spec.predict(model, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if sparse is not None:
            sparse.after_step()
        if callback is not None and sparse is not None:
            callback(step, model, optimizer, sparse.masks)


def run(sparsity: float = 0.8, arbiter: str = "majority", steps: int = 300, seed: int = 0,
        callback: Callable[[int, nn.Module, torch.optim.Optimizer, dict], None] | None = None,
        verbose: bool = True) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data, test = make_data(4096, gen), make_data(2048, gen)
    stream = minibatches(data, 128, gen)
    model, spec = SharedBottomMLP(), make_spec()

    train(model, spec, stream, torch.optim.Adam(model.parameters(), lr=3e-3), steps)      # dense
    dense = evaluate(model, test)

    structure = TaskStructure.from_gradient_flow(model, spec, next(stream))
    scores = task_scores(model, spec, [next(stream) for _ in range(8)], "grad_weight2", structure=structure,
                         generator=seed, mode="eval")
    masks = build_masks(model, scores, sparsity, arbiter=arbiter, structure=structure)
    apply_masks(model, masks)
    pruned = evaluate(model, test)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    train(model, spec, stream, optimizer, steps, static_sparsity(model, optimizer, masks), callback)
    finetuned = evaluate(model, test)
    achieved = mask_sparsity(masks)
    if verbose:
        print(structure)
        print(format_report(sparsity_report(model, masks, structure)))
        for name, metrics in (("dense", dense), ("pruned", pruned), ("fine-tuned", finetuned)):
            print(f"{name:>10}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        print(f"sparsity {achieved:.4%} (asked {sparsity:.2%})")
    return {"model": model, "optimizer": optimizer, "masks": masks, "structure": structure, "spec": spec,
            "sparsity": achieved, "dense": dense, "pruned": pruned, "finetuned": finetuned}


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_command_line(run, __doc__, argv, sparsity=0.8, steps=300,
                                 steps_help="dense steps, then as many fine-tuning steps",
                                 choice="arbiter", default="majority", choices=list(ARBITERS))


if __name__ == "__main__":
    raise SystemExit(main())
