"""The steps the tools share around a method: the distributed session, rank-0-first data, loading and
evaluating any weight file, writing a pruned net with its report, printing and writing metrics."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dataloaders import ScoringBatches, build_loader, build_scoring_batches
from engine.config import restrict_tasks
from engine.distributed import DistContext, barrier, cleanup, setup_distributed, timeout_setting
from engine.evaluate import evaluate
from engine.latency import measure_latency
from engine.metrics import format_table
from fileio import (CheckpointError, Weights, atomic_save, atomic_write_json, compact, install_weights, load_weights,
                    make_checkpoint, nonfinite_paths, read_json, read_weights)
from models import build_model
from prune_utils import report
from prune_utils.channel_pruning import channel_summary, format_channel_summary
from prune_utils.masks import apply_masks, check_masks, prunable_parameters, sparsity as mask_sparsity

from .base import PruneRequest, PruneResult, RunFiles

T = TypeVar("T")


@contextlib.contextmanager
def distributed_session(device_choice: str, config: Optional[Mapping] = None) -> Iterator[DistContext]:
    """`setup_distributed` (a no-op without torchrun) around a block, collectives timing out after the
    config's `dist.timeout_s`. On success every rank meets at a barrier before the process group goes; on
    failure the group is torn down at once (a peer may be gone)."""
    ctx = setup_distributed(device_choice, timeout_setting(config) if config is not None else None)
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


def pruned_outputs(files: RunFiles, export_compact: bool) -> list[Path]:
    """The files `write_pruned_net` writes: the pruned net, its report and, when asked, the compact export."""
    return [files.pruned, files.sibling("_report.csv"), files.sibling("_report.json")] + (
        [files.sibling(".compact.pth")] if export_compact else [])


def scored_batches(result: PruneResult, request: PruneRequest, ctx: DistContext) -> int:
    """How many batches the scoring saw over all ranks (each rank scores its own `num_batches`; 0 for the
    data-free saliencies), recorded in the pruned net beside the world size."""
    return request.num_batches * ctx.world_size if result.reads_data else 0


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
    return loaded, _apply_file_masks(model, loaded)


def _apply_file_masks(model: nn.Module, loaded: Weights) -> float:
    if loaded.masks:
        check_masks(model, loaded.masks)
        apply_masks(model, loaded.masks)
        return float(mask_sparsity(loaded.masks))
    return zero_fraction(model)


@dataclass
class OpenedNet:
    """A net built for a weight file, its weights (and masks) loaded; `config` is the config it runs with."""

    model: nn.Module
    weights: Weights
    sparsity: float
    config: dict


def open_net(path: str | Path, config: Mapping, device: torch.device | str = "cpu",
             allow_extracted: bool = True) -> OpenedNet:
    """The net a weight file describes, loaded (any kind, as `load_net`): built from the file's architecture
    spec when it has one (a channel-pruned net, docs/CHANNELS.md), else the config's net. A net extracted for
    some of the config's tasks runs with the config restricted to them (refused unless `allow_extracted`)."""
    with torch.device("meta"):
        model_keys = list(build_model(config, "meta").state_dict())   # checks original-format files key by key
    weights = read_weights(path, config["tasks"], config["num_classes"], model_keys=model_keys,
                           dataset=config.get("dataset"), task_subset=True)
    tasks = list(weights.meta.get("tasks") or config["tasks"])
    if tasks != list(config["tasks"]) and not allow_extracted:
        raise CheckpointError(f"{path} holds a net extracted for {tasks}; this step needs the net for all the "
                              f"config's tasks {list(config['tasks'])} (extract after it)")
    config = dict(config) if tasks == list(config["tasks"]) else restrict_tasks(config, tasks)
    try:
        model = build_model(config, device, architecture=weights.meta.get("architecture"))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    install_weights(weights, path, model, config)
    try:
        sparsity = _apply_file_masks(model, weights)
    except ValueError as exc:                    # masks that do not fit the weights
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return OpenedNet(model, weights, sparsity, config)


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


def net_cost(model: nn.Module, config: Mapping, meta: Mapping[str, Any], latency_runs: int = 5) -> dict[str, Any]:
    """What running `model` costs, for the metrics file: parameters, MACs and (with `latency_runs` > 0) the
    measured batch-1 latency at the evaluation size (`data.image_shape`), plus the fractions of MACs and
    parameters a channel-pruned file records having removed (`meta`: the file's metadata)."""
    size = tuple(int(v) for v in config["data"]["image_shape"])
    cost: dict[str, Any] = {"params": int(report.param_counts(model)["total"]),
                            "macs": int(report.mac_counts(model, input_size=(1, 3, *size))["dense"])}
    cost.update({k: float(meta[k]) for k in ("macs_removed", "params_removed") if k in meta})
    if latency_runs > 0:
        latency = measure_latency(model, size, runs=latency_runs)
        cost.update(latency_ms=latency["median_ms"], latency_min_ms=latency["min_ms"], latency_runs=latency_runs,
                    latency_threads=latency["threads"], input_size="x".join(map(str, size)))
    return cost


def metrics_provenance(split: str, compat: str, checkpoint: str | Path) -> dict[str, str]:
    """What a metrics file records about its making, beside the metrics (contract 8)."""
    return {"split": split, "metrics_compat": compat, "checkpoint": str(checkpoint)}


def check_metrics_target(path: Path, split: str, compat: str) -> None:
    """Refuse, before evaluating, to replace a metrics file of another split or metric definition (a file
    renamed by hand, or written before names told the kinds apart and recording its kind)."""
    if not path.is_file():
        return
    try:
        old = read_json(path, "metrics file", dict)
    except ValueError:
        return                                   # not a metrics file we can read: replaced as before
    kind = {"split": split, "metrics_compat": compat}
    if any(key in old and old[key] != value for key, value in kind.items()):
        raise ValueError(f"{path} holds metrics of split {old.get('split')!r} ({old.get('metrics_compat')} "
                         f"metrics); refusing to replace them with split {split!r} ({compat} metrics): move it, or "
                         f"pass another --dest")


def check_baseline_kind(baseline: Mapping[str, Any], path: str | Path, split: str, compat: str) -> None:
    """`--baseline-metrics` must come from the same split and metric definitions (Δm compares like with like);
    a file that does not record them (an older one) is used with a warning."""
    recorded = {key: baseline.get(key) for key in ("split", "metrics_compat")}
    if None in recorded.values():
        warnings.warn(f"baseline metrics file {path} does not record its split and metric definitions; assuming "
                      f"split {split!r} and {compat} metrics", RuntimeWarning, stacklevel=2)
    if recorded["split"] not in (None, split) or recorded["metrics_compat"] not in (None, compat):
        raise ValueError(f"baseline metrics file {path} was measured on split {recorded['split']!r} with "
                         f"{recorded['metrics_compat']} metrics, this evaluation is split {split!r} with {compat} "
                         f"metrics: delta_m needs the same kind")


def report_metrics(metrics: Mapping[str, Any], path: Path, provenance: Mapping[str, str]) -> None:
    """Print the metrics table and write the metrics JSON with its `provenance` (an undefined metric is
    written as null, with a warning naming it)."""
    print(format_table(metrics))
    undefined = nonfinite_paths(metrics)
    if undefined:
        warnings.warn(f"undefined metric(s) {', '.join(undefined)} (NaN) written as null to {path}", RuntimeWarning,
                      stacklevel=2)
    atomic_write_json(path, {**metrics, **provenance}, nonfinite="null")


def write_pruned_net(files: RunFiles, model: nn.Module, config: Mapping, method: str, result: PruneResult,
                     extra: Mapping[str, Any], export_compact: bool = False) -> Path:
    """Write the pruned net `files.pruned` (our checkpoint), its per-layer report (`_report.csv` / `.json`,
    printed; for a channel-pruned net the per-group widths in `_report.json`) and, when asked, the compact
    export; returns the checkpoint's path. The nets are written atomically but not fsynced
    (`durable=False`, see `fileio.atomic`): rerunning the command regenerates them exactly. They are written
    after the (fsynced) reports: on a journalling file system an fsync can wait for other files' pending
    data, and a report's fsync after the net's write would sync the net after all."""
    net = result.model if result.model is not None else model
    if result.model is None and result.masks is not None:
        apply_masks(net, result.masks)
    if result.masks is None and "channels" in result.entries:     # a channel-pruned net: widths, not masks
        summary = {**channel_summary(result.entries["channels"]), "pruning": {"method": method, **extra}}
        report.write_json(summary, files.sibling("_report.json"))
        print(format_channel_summary(summary))
    if result.masks is not None:
        crop = (1, 3, config["data"]["crop_h"], config["data"]["crop_w"])
        summary = report.build_report(net, result.masks, input_size=crop)
        summary["pruning"] = {"method": method, "sparsity": result.sparsity, **extra}
        report.write_csv(summary["layers"], files.sibling("_report.csv"))
        report.write_json(summary, files.sibling("_report.json"))
        print(report.format_table(summary))
    path = files.pruned
    atomic_save(make_checkpoint(net.state_dict(), config, method, masks=result.masks, sparsity=result.sparsity,
                                **result.entries, **extra), path, durable=False)
    if export_compact:
        if result.masks is None:
            raise ValueError(f"--export-compact needs a masked net; {method} writes a dense one")
        compact_path = files.sibling(".compact.pth")
        compact.save_compact(compact_path, net.state_dict(), result.masks,
                             meta={"tasks": list(config["tasks"]), "num_classes": list(config["num_classes"]),
                                   "config": config, "method": method, "sparsity": result.sparsity},
                             durable=False)
        print(f"compact export: {compact_path} ({compact_path.stat().st_size / path.stat().st_size:.1%} "
              f"of the checkpoint)")
    return path
