"""The two analysis runs: per-layer mask IoU across tasks (iou_analysis.py) and Meta-Sparse task
similarity (static_similarity.py). Each scores nets per task (`methods.scoring`), builds per-task masks
(`prune_utils.mask_builder`), measures them (`prune_utils.iou`, `prune_utils.similarity`) and writes
its files; docs/ANALYSIS.md describes the measures."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from engine.runtime import seed_everything
from fileio import atomic_write_text
from models import build_model
from prune_utils import iou as I
from prune_utils import similarity as S
from prune_utils.channel_pruning import channel_task_masks
from prune_utils.mask_builder import masks_for_sparsity, task_masks
from prune_utils.masks import masks_to, sparsity
from prune_utils.plots import iou_bar_plot, similarity_heatmap
from prune_utils.structure import TaskStructure

from .outputs import claim_outputs
from .pipeline import OpenedNet, open_net
from .scoring import score_fresh_net, score_net


@dataclass
class Scoring:
    """How the nets are scored: saliency name and mode, batches, seed, device, progress bars."""

    method: str
    num_batches: int
    batch_size: int
    mode: str = "batch_stats"
    seed: int = 0
    device: Any = "cpu"
    progress: bool = True


def structure_of_config(config: Mapping) -> TaskStructure:
    """The task structure of the config's net, sized on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return TaskStructure.from_model(build_model(config, "meta"))


def analysed_net(opened: OpenedNet) -> tuple[torch.nn.Module, Optional[dict[str, torch.Tensor]]]:
    """(model with the file's weights, its mask set, or None for a dense checkpoint such as a trained
    baseline); `open_net` has already refused masks that do not fit the net and files of other tasks."""
    masks = opened.weights.masks
    return opened.model, masks_to(masks, "cpu") if masks else None


def channel_iou_analysis(channels: Mapping[str, Any], path: str, config: Mapping, stem: Path,
                         plot: bool = True) -> dict:
    """Per-layer IoU of the tasks' own channel choices over the shared channel groups of a channel-pruned
    net (its `channels` report): writes {stem}.json/.csv(/.png), prints a table."""
    per_task, structure = channel_task_masks(channels)
    if len(per_task) < 2:
        raise ValueError(f"{path} holds no per-task channel choices of two or more tasks (method "
                         f"{channels.get('method')}: only disparse_channel records them)")
    report = I.analyse(per_task, structure)
    target = channels.get("target") or {}
    record = {"dataset": config["dataset"], "tasks": list(per_task), "source": str(path), "level": "channel",
              "method": channels.get("method"), "importance": channels.get("importance"),
              "arbiter": channels.get("arbiter"), "target": target, "fraction": channels.get("fraction"),
              **report.as_dict()}
    title = (f"Channel IoU on Tasks Across Backbone Groups: {config['dataset']} ({len(per_task)} tasks, "
             f"{channels.get('method')} {channels.get('importance')}, {100 * target.get('removed', 0):g}% "
             f"{target.get('kind', '')} removed, from {Path(path).name})")
    return write_iou(report, record, stem, title if plot else None)


def write_iou(report: I.IoUReport, record: dict, stem: Path, title: Optional[str]) -> dict:
    """{stem}.json and .csv (and a bar plot {stem}.png when `title` is given); prints the summary table."""
    S.write_json(stem.with_suffix(".json"), record)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(I.to_csv_rows(report))
    atomic_write_text(stem.with_suffix(".csv"), buffer.getvalue())
    written = [stem.with_suffix(".json"), stem.with_suffix(".csv")]
    if title is not None:
        iou_bar_plot(report, stem.with_suffix(".png"), title=title)
        written.append(stem.with_suffix(".png"))
    print()
    print(I.summary_table(report))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return record


def iou_analysis(config: Mapping, scoring: Scoring, dest: str | Path, *, keep_ratio: Optional[float] = None,
                 ratio: Optional[float] = None, from_ckpt: Optional[str] = None, plot: bool = True) -> dict:
    """Per-layer IoU of the tasks' keep masks: writes {dest}/{dataset}_iou.json/.csv(/.png), prints a table.

    A fresh net (default) or a dense checkpoint (`from_ckpt` without masks, e.g. a trained baseline)
    keeps, per task, `keep_ratio` of its pool (default `pruning.iou_keep_ratio`), or the keep ratio at
    which the arbiter's combined mask has `ratio` % sparsity; a pruned checkpoint (`from_ckpt` with
    masks) keeps, per task, the top `keep_ratio` of the weights the checkpoint kept in its pool. A
    channel-pruned checkpoint gets the channel-level analysis instead (`channel_iou_analysis`,
    {dest}/{dataset}_channel_iou.*). `dest` is checked and the outputs locked before any scoring
    (`methods.outputs.claim_outputs`).
    """
    if len(config["tasks"]) < 2:
        raise ValueError(f"IoU analysis needs at least two tasks, the config has {list(config['tasks'])}")
    opened = open_net(from_ckpt, config, scoring.device) if from_ckpt else None
    if opened is not None and opened.weights.masks and ratio is not None:
        raise ValueError("--ratio cannot be combined with --from of a pruned checkpoint (it already fixes the "
                         "sparsity); use --keep-ratio")
    channels = opened.weights.meta.get("channels") if opened is not None else None
    if channels is not None and keep_ratio is not None:
        raise ValueError("--keep-ratio does not apply to a channel-pruned checkpoint (its tasks' channel choices "
                         "are in the file)")
    stem = Path(dest) / f"{config['dataset']}_{'channel_iou' if channels is not None else 'iou'}"
    with claim_outputs(dest, stem.name, [stem.with_suffix(suffix) for suffix in (".json", ".csv", ".png")]):
        if channels is not None:
            return channel_iou_analysis(channels, str(from_ckpt), config, stem, plot)
        return _iou_analysis(config, scoring, stem, keep_ratio=keep_ratio, ratio=ratio, opened=opened,
                             from_ckpt=from_ckpt, plot=plot)


def _iou_analysis(config: Mapping, scoring: Scoring, stem: Path, *, keep_ratio: Optional[float],
                  ratio: Optional[float], opened: Optional[OpenedNet], from_ckpt: Optional[str], plot: bool) -> dict:
    tasks = list(config["tasks"])
    structure = structure_of_config(config)
    meta: dict[str, Any] = {"dataset": config["dataset"], "tasks": tasks, "num_batches": scoring.num_batches,
                            "batch_size": scoring.batch_size, "seed": scoring.seed, "saliency_mode": scoring.mode,
                            "width_mult": config["model"]["width_mult"], "device": str(scoring.device)}
    keep = keep_ratio if keep_ratio is not None else float(config["pruning"]["iou_keep_ratio"])
    common = dict(seed=scoring.seed, num_batches=scoring.num_batches, method=scoring.method,
                  batch_size=scoring.batch_size, device=scoring.device, progress=scoring.progress, mode=scoring.mode)
    kept = None
    if opened is not None:
        model, kept = analysed_net(opened)
        seed_everything(scoring.seed)
        what = "dense" if kept is None else f"sparsity {100 * sparsity(kept):.2f}%"
        print(f"scoring checkpoint {from_ckpt} ({what}) per task with {scoring.method} saliency over "
              f"{scoring.num_batches} batch(es) on {scoring.device}")
        if scoring.method == "snip":
            print("note: snip scores a Xavier re-draw of the weights, not the checkpoint's values; the checkpoint "
                  "then only restricts which weights each task can keep")
        scores = score_net(config, model, structure=structure, **common)
    else:
        print(f"scoring a fresh net per task with {scoring.method} saliency over {scoring.num_batches} batch(es) "
              f"of {scoring.batch_size} on {scoring.device}")
        scores = score_fresh_net(config, **common)
    if kept is not None:
        per_task, ratios = I.restricted_task_masks(scores, kept, keep, structure)
        meta.update(source=str(from_ckpt), saliency=scoring.method, keep_ratio=keep,
                    keep_ratio_of="the weights the checkpoint keeps in each task's pool",
                    pool_keep_ratios=ratios, checkpoint_sparsity=sparsity(kept))
    else:
        if ratio is not None:
            arbiter = config["pruning"]["arbiter"]
            combined, keep = masks_for_sparsity(scores, ratio / 100.0, arbiter, structure=structure)
            meta.update(ratio=ratio, arbiter=arbiter, arbiter_sparsity=sparsity(combined))
            del combined
        per_task = task_masks(scores, keep, structure)
        meta.update(source=str(from_ckpt) if from_ckpt else "fresh", saliency=scoring.method, keep_ratio=float(keep),
                    keep_ratio_of="each task's pool (backbone + own head)")
    del scores

    report = I.analyse({t: per_task[t] for t in tasks}, structure)
    level = (f"ratio {ratio:g}% -> keep {meta['keep_ratio']:.4g}" if ratio is not None
             else f"keep {meta['keep_ratio']:.4g}")
    title = (f"IoU on Tasks Across Backbone Layers: {config['dataset']} ({len(tasks)} tasks, {level}, "
             f"{scoring.num_batches} batch(es), {meta['saliency']}"
             + (f", from {Path(from_ckpt).name}" if from_ckpt else "") + ")")
    return write_iou(report, {**meta, **report.as_dict()}, stem, title if plot else None)


def similarity_study(config: Mapping, scoring: Scoring, *, sparsities: Sequence[float], keep_ratio_mode: str,
                     num_seeds: int, cells: Sequence[tuple[str, str]], dump_dir: str | Path, table_json: str | Path,
                     force: bool = False, compat_row_slice: bool = False, plot: bool = True, show_each: bool = True,
                     settings: Optional[Mapping[str, Any]] = None) -> dict[str, np.ndarray]:
    """Meta-Sparse task similarity over `num_seeds` fresh nets (seeds scoring.seed ..): per seed, per-task
    masks at the keep ratio of each sparsity, per-layer similarities over the backbone; one matrix per
    (layer_method, sim_method) cell, written to `table_json` and {dump_dir}/{dataset}/sim_*.json."""
    tasks = list(config["tasks"])
    if len(tasks) < 2:
        raise ValueError(f"task similarity needs at least two tasks, the config has {tasks}")
    keep_ratios = [S.keep_ratio_for(r, config, keep_ratio_mode) for r in sparsities]
    seeds = [scoring.seed + s for s in range(num_seeds)]
    sim_methods = sorted({sm for _, sm in cells}, key=S.SIM_METHODS.index)
    out_dir = Path(dump_dir) / config["dataset"]
    structure = structure_of_config(config)
    layers = list(structure.shared)                  # every backbone layer, in layer order
    print(f"tasks {', '.join(tasks)}; sparsities {', '.join(S.sparsity_label([r])[1:] for r in sparsities)} -> "
          f"per-task keep ratios {', '.join(f'{k:g}' for k in keep_ratios)} ({keep_ratio_mode}); {scoring.method} "
          f"saliency, {scoring.num_batches} batches of {scoring.batch_size}, seeds {seeds[0]}..{seeds[-1]}; "
          f"device {scoring.device}")
    grid: list[list[S.LayerStats]] = []
    for seed in tqdm(seeds, desc="seeds", disable=not scoring.progress):
        key = dict(seed=seed, num_batches=scoring.num_batches, method=scoring.method, batch_size=scoring.batch_size,
                   mode=scoring.mode)
        scores, computed = S.cached_scores(config, cache_dir=dump_dir, scorer=score_fresh_net, force=force,
                                           device=scoring.device, progress=scoring.progress, **key)
        tqdm.write(f"seed {seed}: saliency {'computed' if computed else 'loaded from cache'} "
                   f"({S.cache_path(dump_dir, S.cache_key(config, **key))})")
        per_ratio = []
        for keep in tqdm(keep_ratios, desc=f"seed {seed} keep ratios", leave=False, disable=not scoring.progress):
            masks = task_masks(scores, keep, structure)
            per_ratio.append(S.layer_stats({t: masks[t] for t in tasks}, scores, layers, keep, sim_methods))
            del masks
        grid.append(per_ratio)
        del scores

    label = S.sparsity_label(sparsities)
    results = {}
    for layer_method, sim_method in cells:
        matrix = S.similarity_matrix(grid, sim_method, layer_method, compat_row_slice)
        cell = S.table_key(layer_method, sim_method, compat_row_slice)
        S.update_table(table_json, cell, {S.entry_key(sparsities, tasks[i], tasks[j]): float(matrix[i, j])
                                          for i in range(len(tasks)) for j in range(i + 1, len(tasks))})
        pairs = [(i, j) for i in range(len(tasks)) for j in range(i, len(tasks))]
        per_seed = {str(seed): {I.pair_key(tasks[i], tasks[j]): float(np.mean(
            [st.score(tasks[i], tasks[j], sim_method, layer_method, compat_row_slice) for st in per_ratio]))
            for i, j in pairs} for seed, per_ratio in zip(seeds, grid)}
        record = {
            "config": dict(settings or {}), "dataset": config["dataset"], "tasks": tasks, "sparsities": list(sparsities),
            "keep_ratios": keep_ratios, "keep_ratio_mode": keep_ratio_mode, "saliency": scoring.method,
            "saliency_mode": scoring.mode, "num_batches": scoring.num_batches, "batch_size": scoring.batch_size,
            "seeds": seeds, "width_mult": config["model"]["width_mult"], "layer_method": layer_method,
            "sim_method": sim_method, "compat_row_slice": compat_row_slice, "layers": grid[0][0].layers,
            "sim": {I.pair_key(tasks[i], tasks[j]): float(matrix[i, j]) for i, j in pairs},
            "matrix": [[float(v) for v in row] for row in matrix],
            "per_seed": per_seed,
        }
        S.write_json(out_dir / f"sim_{cell}_{label}.json", record)
        if plot:
            similarity_heatmap(matrix, tasks, out_dir / f"heatmap_{cell}_{label}.png",
                               title=f"{config['dataset']}: {sim_method}, {layer_method} weighting, "
                                     f"sparsity {label[1:]} ({keep_ratio_mode} keep ratios), {len(seeds)} seed(s)")
        results[cell] = matrix
        if show_each:
            print(f"\n{cell} ({label}):")
            print(S.format_matrix(matrix, tasks))
    print(f"\nwrote {table_json} and {out_dir}/sim_*_{label}.json" + ("" if not plot else " + heatmaps"))
    return results
