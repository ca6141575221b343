"""DiSparse static pruning of a small U-Net with three decoder heads, trained in a plain PyTorch loop.

    python -m examples.unet_static [--sparsity 0.9] [--arbiter unanimous] [--steps 60] [--seed 0]

The model is the user's own: a U-Net-style encoder shared by three task decoders (semantic labels,
depth, surface normals), each decoder with its own skip connections from the encoder; it returns a dict
task -> prediction. The data are synthetic indoor scenes rendered in memory (`examples.scenes`), batches
are dicts. Steps: ownership from the module names, SNIP scores per task on a fresh net, masks at the
exact sparsity with the arbiter, then training with the masks fixed (pruned weights and their Adam state
stay zero), then the test metrics.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prune_utils import (ARBITERS, TaskSpec, TaskStructure, apply_masks, build_masks, format_report,
                         mask_sparsity, sparsity_report, static_sparsity, task_scores)

from .command_line import run_from_command_line
from .scenes import NUM_CLASSES, batches, depth_loss, normal_loss, pixel_accuracy, render_scenes

TASKS = {"seg": NUM_CLASSES, "depth": 1, "normal": 3}      # task -> output channels
WIDTHS = (8, 16, 32)                                        # encoder channels, fine to coarse


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        chans = (3,) + WIDTHS
        self.stages = nn.ModuleList(nn.Sequential(conv_block(a, b), conv_block(b, b)) for a, b in zip(chans, WIDTHS))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for i, stage in enumerate(self.stages):
            x = stage(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """Upsample, concatenate the encoder's skip, convolve; a 1x1 convolution makes the task's output."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.ups = nn.ModuleList(conv_block(WIDTHS[i + 1] + WIDTHS[i], WIDTHS[i])
                                 for i in reversed(range(len(WIDTHS) - 1)))
        self.out = nn.Conv2d(WIDTHS[0], out_channels, 1)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        return self.out(x)


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoders = nn.ModuleDict({task: Decoder(channels) for task, channels in TASKS.items()})

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = self.encoder(img)
        return {task: decoder(skips) for task, decoder in self.decoders.items()}


def make_spec() -> TaskSpec:
    return TaskSpec(list(TASKS), {"seg": nn.CrossEntropyLoss(ignore_index=255), "depth": depth_loss,
                                  "normal": normal_loss})


@torch.no_grad()
def evaluate(model: nn.Module, test: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    preds = model(test["img"])
    model.train()
    return {"seg_pixel_acc": pixel_accuracy(preds["seg"], test["seg"]),
            "depth_abs_err": float(depth_loss(preds["depth"], test["depth"])),
            "normal_1_minus_cos": float(normal_loss(preds["normal"], test["normal"]))}


def run(sparsity: float = 0.9, arbiter: str = "unanimous", steps: int = 60, seed: int = 0, batch_size: int = 8,
        callback: Callable[[int, nn.Module, torch.optim.Optimizer, dict], None] | None = None,
        verbose: bool = True) -> dict[str, Any]:
    torch.manual_seed(seed)
    train, test = render_scenes(96, seed=seed), render_scenes(32, seed=seed + 1000)
    stream = batches(train, batch_size, torch.Generator().manual_seed(seed))
    model, spec = UNet(), make_spec()

    # 1. who uses which weight: the encoder is shared, decoders.<task> belongs to the task
    structure = TaskStructure.from_modules(model, shared="encoder", heads={t: f"decoders.{t}" for t in TASKS})
    # 2. per-task SNIP scores on 4 batches, 3. masks at the exact sparsity, the arbiter deciding the encoder
    scores = task_scores(model, spec, [next(stream) for _ in range(4)], "snip", structure=structure, generator=seed)
    masks = build_masks(model, scores, sparsity, arbiter=arbiter, structure=structure)
    apply_masks(model, masks)
    if verbose:
        print(format_report(sparsity_report(model, masks, structure)))

    # 4. the user's own training loop, with the masks held fixed
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sparse = static_sparsity(model, optimizer, masks)
    losses = []
    for step in range(steps):
        batch = next(stream)
        sparse.before_step(step, batch)
        loss = spec.total_loss(spec.predict(model, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparse.after_step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, model, optimizer, masks)
    metrics = evaluate(model, test)
    achieved = mask_sparsity(masks)
    if verbose:
        print(f"sparsity {achieved:.4%} (asked {sparsity:.2%}); training loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
              f"test {', '.join(f'{k} {v:.3f}' for k, v in metrics.items())}")
    return {"model": model, "optimizer": optimizer, "masks": masks, "structure": structure, "spec": spec,
            "sparsity": achieved, "losses": losses, "metrics": metrics, "probe_batch": next(stream)}


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_command_line(run, __doc__, argv, sparsity=0.9, steps=60,
                                 steps_help="training steps after pruning",
                                 choice="arbiter", default="unanimous", choices=list(ARBITERS))


if __name__ == "__main__":
    raise SystemExit(main())
