"""The steps the tools share around a method: the distributed session, rank-0-first data, loading and
evaluating any weight file, writing a pruned net with its report, printing and writing metrics."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dataloaders import ScoringBatches, build_loader, build_scoring_batches
from engine.distributed import DistContext, barrier, cleanup, setup_distributed
from engine.evaluate import evaluate
from engine.metrics import format_table
from fileio import Weights, atomic_save, atomic_write_json, compact, load_weights, make_checkpoint
from prune_utils import report
from prune_utils.masks import apply_masks, check_masks, prunable_parameters, sparsity as mask_sparsity

from .base import PruneResult, RunFiles

T = TypeVar("T")


@contextlib.contextmanager
def distributed_session(device_choice: str) -> Iterator[DistContext]:
    """`setup_distributed` (a no-op without torchrun) around a block. On success every rank meets at a
    barrier before the process group goes; on failure the group is torn down at once (a peer may be gone)."""
    ctx = setup_distributed(device_choice)
    try:
        yield ctx
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    cleanup()


def rank0_first(ctx: DistContext, build: Callable[[], T]) -> T:
    """`build()` on rank 0 first, then on the other ranks: the synthetic set is generated on first use, only once."""
    built = build() if ctx.is_main else None
    barrier()
    return built if ctx.is_main else build()


def train_loader_rank0_first(config: Mapping, ctx: DistContext, *, seed: int,
                             batch_size: Optional[int] = None) -> DataLoader:
    """The training loader, built by rank 0 first."""
    return rank0_first(ctx, lambda: build_loader(config, "train", batch_size=batch_size, seed=seed,
                                                 distributed=ctx.distributed))


def scoring_batches_rank0_first(config: Mapping, ctx: DistContext, *, seed: int, num_batches: int,
                                batch_size: Optional[int] = None) -> ScoringBatches:
    """The training batches of one scoring pass (`dataloaders.build_scoring_batches`: workers start now and
    once), built by rank 0 first. Call it before building the net that is scored."""
    return rank0_first(ctx, lambda: build_scoring_batches(config, "train", num_batches=num_batches,
                                                          batch_size=batch_size, seed=seed,
                                                          distributed=ctx.distributed))


def zero_fraction(model: nn.Module) -> float:
    """Fraction of exact zeros over the prunable weights (the sparsity of a file without masks)."""
    params = prunable_parameters(model)
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return zeros / total if total else 0.0


def load_net(path: str | Path, model: nn.Module, config: Mapping) -> tuple[Weights, float]:
    """Load any weight file (ours, compact, original) into `model` with its masks applied: (weights, sparsity).

    The sparsity is the masks' when the file has masks, else the fraction of exact zeros."""
    loaded = load_weights(path, model, config)
    if loaded.masks:
        check_masks(model, loaded.masks)
        apply_masks(model, loaded.masks)
        return loaded, float(mask_sparsity(loaded.masks))
    return loaded, zero_fraction(model)


def evaluate_split(model: nn.Module, config: Mapping, split: str, device: torch.device, *,
                   compat: Optional[str] = None, progress: bool = False, normals_space: Optional[str] = None) -> dict:
    """The paper's metrics of `model` on a whole split (sharded across ranks under DDP); `normals_space`:
    how the net's sn output is read (the loaded file's `Weights.normals_space`; default the config's)."""
    model = model.to(device)
    if config["model"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    loader = build_loader(config, split, shuffle=False, distributed=False, train=False)
    return evaluate(model, loader, config, loader.dataset, device, compat=compat, progress=progress,
                    normals_space=normals_space)


def report_metrics(metrics: Mapping[str, Any], path: Path) -> None:
    """Print the metrics table and write the metrics JSON (an undefined metric is written as null)."""
    print(format_table(metrics))
    atomic_write_json(path, metrics, nonfinite="null")


def write_pruned_net(files: RunFiles, model: nn.Module, config: Mapping, method: str, result: PruneResult,
                     extra: Mapping[str, Any], export_compact: bool = False) -> Path:
    """Write the pruned net `files.pruned` (our checkpoint), its per-layer report (`_report.csv` / `.json`,
    printed) and, when asked, the compact export; returns the checkpoint's path."""
    net = result.model if result.model is not None else model
    if result.model is None and result.masks is not None:
        apply_masks(net, result.masks)
    path = files.pruned
    atomic_save(make_checkpoint(net.state_dict(), config, method, masks=result.masks, sparsity=result.sparsity,
                                **result.entries, **extra), path)
    if result.masks is not None:
        crop = (1, 3, config["data"]["crop_h"], config["data"]["crop_w"])
        summary = report.build_report(net, result.masks, input_size=crop)
        summary["pruning"] = {"method": method, "sparsity": result.sparsity, **extra}
        report.write_csv(summary["layers"], files.sibling("_report.csv"))
        report.write_json(summary, files.sibling("_report.json"))
        print(report.format_table(summary))
    if export_compact:
        if result.masks is None:
            raise ValueError(f"--export-compact needs a masked net; {method} writes a dense one")
        compact_path = files.sibling(".compact.pth")
        compact.save_compact(compact_path, net.state_dict(), result.masks,
                             meta={"tasks": list(config["tasks"]), "num_classes": list(config["num_classes"]),
                                   "config": config, "method": method, "sparsity": result.sparsity})
        print(f"compact export: {compact_path} ({compact_path.stat().st_size / path.stat().st_size:.1%} "
              f"of the checkpoint)")
    return path
