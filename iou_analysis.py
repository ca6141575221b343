#!/usr/bin/env python3
"""Per-layer IoU of the tasks' keep masks over the backbone (REFERENCE.md §8, the paper's density plot).

Default: per-task static SNIP saliency on a freshly initialised net (`--num_batches` train batches),
each task's exact top-k over its pool (backbone + own head) at keep ratio `--keep-ratio` (default: the
config's pruning.iou_keep_ratio, 0.078 as the original), no arbiter. `--ratio R` instead picks the keep
ratio at which the arbiter's (config pruning.arbiter) combined mask has R % sparsity.
`--from CKPT` analyses a pruned checkpoint: its weights are scored per task (config pruning.pt_saliency
unless `--saliency`), and each task keeps the top fraction `--keep-ratio` of the weights the
checkpoint kept in its pool.

Writes {dest}/{dataset}_iou.json, .csv and .png and prints a summary table. See docs/ANALYSIS.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:                      # torch is imported only when needed, so --help and bad flags are instant
    import torch


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import add_saliency_arguments, base_parser, percent, unit_fraction
    parser = base_parser("Per-layer IoU of the tasks' keep masks over the backbone (the paper's density plot): "
                         "JSON, CSV, a bar-plot PNG and a summary table.")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--keep-ratio", "--keep_ratio", dest="keep_ratio", type=unit_fraction, default=None,
                       metavar="K", help="per-task keep ratio (fraction of backbone + own head); default: the "
                                         "config's pruning.iou_keep_ratio (0.078, the original's value)")
    level.add_argument("--ratio", type=percent, default=None, metavar="R",
                       help="use the per-task keep ratio for which the arbiter's combined mask has R%% sparsity "
                            "(solved on the same scores)")
    add_saliency_arguments(parser, saliency_default_help="the config's pruning.saliency (fresh net) or "
                                                         "pruning.pt_saliency (--from)",
                           num_batches_default_help="the config's analysis.num_batches: 50, Taskonomy 200, "
                                                    "as the original")
    parser.add_argument("--from", dest="from_ckpt", default=None, metavar="CKPT",
                        help="analyse this pruned checkpoint (must hold masks and the config's tasks): score its "
                             "weights per task and keep, per task, the top --keep-ratio of the weights it kept")
    parser.add_argument("--dest", default=".", metavar="DIR", help="output folder for {dataset}_iou.json/.csv/.png")
    parser.add_argument("--no_plot", "--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="hide the progress bars")
    return parser


class _CLIError(ValueError):
    pass


def load_pruned_checkpoint(path: str, config: Mapping, device: torch.device):
    """(model with the checkpoint's weights, its mask set); one-line errors for no masks / other tasks."""
    from engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
    from models import build_model
    from prune_utils.masks import check_masks, masks_to
    ckpt = load_checkpoint(path, tasks=list(config["tasks"]), num_classes=list(config["num_classes"]))
    masks = ckpt.get("masks")
    if not masks:
        raise CheckpointError(f"checkpoint {path} holds no masks (a dense model); --from needs a pruned checkpoint")
    model = build_model(config, device)
    load_model_state(model, ckpt["model"], source=f"checkpoint {path}")
    try:
        check_masks(model, masks)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return model, masks_to(masks, "cpu")


def restricted_task_masks(scores: Mapping[str, Mapping[str, torch.Tensor]], kept: Mapping[str, torch.Tensor],
                          keep_ratio: float) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """Per-task top-k restricted to the checkpoint's kept weights: task t keeps `keep_ratio` of the weights
    the checkpoint kept in its pool (its scores elsewhere are zeroed and its mask is ANDed with `kept`)."""
    from prune_utils.mask_builder import task_masks
    out, ratios = {}, {}
    for task, per in scores.items():
        pool = sum(v.numel() for v in per.values())
        alive = sum(int(kept[n].sum()) for n in per)
        k = keep_ratio * alive / pool if pool else 0.0
        if alive == 0 or int(k * pool) < 1:
            raise ValueError(f"task {task!r}: the checkpoint keeps {alive} weights of its pool, too few for "
                             f"--keep-ratio {keep_ratio:g}")
        masked = {n: v.cpu() * kept[n].to(v.dtype).cpu() for n, v in per.items()}
        mask = task_masks({task: masked}, k)[task]
        out[task] = {n: mask[n].cpu() & kept[n] for n in per}
        ratios[task] = k
    return out, ratios


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from engine.cli import config_from_args
    from engine.runtime import seed_everything, select_device
    from prune_utils import iou as I
    from prune_utils.masks import sparsity
    from prune_utils.similarity import write_json

    if args.dataset is None and args.config is None:
        raise _CLIError("give --dataset NAME or --config FILE")
    if args.from_ckpt and args.ratio is not None:
        raise _CLIError("--ratio cannot be combined with --from (the checkpoint already fixes the sparsity); "
                        "use --keep-ratio")
    config = config_from_args(args)
    device = select_device(args.device)
    num_batches = args.num_batches if args.num_batches is not None else int(config["analysis"]["num_batches"])
    batch_size = args.batch_size if args.batch_size is not None else int(config["pruning"]["batch_size"])
    if num_batches < 1:
        raise _CLIError(f"--num_batches must be at least 1, got {num_batches}")
    if batch_size < 1:
        raise _CLIError(f"--batch_size must be at least 1, got {batch_size}")
    tasks = list(config["tasks"])
    if len(tasks) < 2:
        raise _CLIError(f"IoU analysis needs at least two tasks, the config has {tasks}")
    show = not args.no_progress
    meta: dict[str, Any] = {"dataset": config["dataset"], "tasks": tasks, "num_batches": num_batches,
                            "batch_size": batch_size, "seed": args.seed, "saliency_mode": args.saliency_mode,
                            "width_mult": config["model"]["width_mult"], "device": str(device)}

    if args.from_ckpt:
        model, kept = load_pruned_checkpoint(args.from_ckpt, config, device)
        method = args.saliency or config["pruning"]["pt_saliency"]
        keep = args.keep_ratio if args.keep_ratio is not None else float(config["pruning"]["iou_keep_ratio"])
        seed_everything(args.seed)
        print(f"scoring checkpoint {args.from_ckpt} (sparsity {100 * sparsity(kept):.2f}%) per task with "
              f"{method} saliency over {num_batches} batch(es) on {device}")
        if method == "snip":
            print("note: snip scores a Xavier re-draw of the weights, not the checkpoint's values; the checkpoint "
                  "then only restricts which weights each task can keep")
        scores = I.score_net(config, model, seed=args.seed, num_batches=num_batches, method=method,
                             batch_size=batch_size, device=device, progress=show, mode=args.saliency_mode)
        per_task, ratios = restricted_task_masks(scores, kept, keep)
        meta.update(source=str(args.from_ckpt), saliency=method, keep_ratio=keep,
                    keep_ratio_of="the weights the checkpoint keeps in each task's pool",
                    pool_keep_ratios=ratios, checkpoint_sparsity=sparsity(kept))
    else:
        method = args.saliency or config["pruning"]["saliency"]
        print(f"scoring a fresh net per task with {method} saliency over {num_batches} batch(es) of {batch_size} "
              f"on {device}")
        scores = I.score_fresh_net(config, seed=args.seed, num_batches=num_batches, method=method,
                                   batch_size=batch_size, device=device, progress=show, mode=args.saliency_mode)
        from prune_utils.mask_builder import masks_for_sparsity, task_masks
        if args.ratio is not None:
            arbiter = config["pruning"]["arbiter"]
            combined, keep = masks_for_sparsity(scores, args.ratio / 100.0, arbiter)
            meta.update(ratio=args.ratio, arbiter=arbiter, arbiter_sparsity=sparsity(combined))
            del combined
        else:
            keep = args.keep_ratio if args.keep_ratio is not None else float(config["pruning"]["iou_keep_ratio"])
        per_task = task_masks(scores, keep)
        meta.update(source="fresh", saliency=method, keep_ratio=float(keep),
                    keep_ratio_of="each task's pool (backbone + own head)")
    del scores

    report = I.analyse({t: per_task[t] for t in tasks})
    dest = Path(args.dest)
    stem = dest / f"{config['dataset']}_iou"
    record = {**meta, **report.as_dict()}
    write_json(stem.with_suffix(".json"), record)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(I.to_csv_rows(report))
    _atomic_text(stem.with_suffix(".csv"), buffer.getvalue())
    written = [stem.with_suffix(".json"), stem.with_suffix(".csv")]
    if not args.no_plot:
        from prune_utils.plots import iou_bar_plot
        level = (f"ratio {args.ratio:g}% -> keep {meta['keep_ratio']:.4g}" if args.ratio is not None
                 else f"keep {meta['keep_ratio']:.4g}")
        iou_bar_plot(report, stem.with_suffix(".png"),
                     title=f"IoU on Tasks Across Backbone Layers: {config['dataset']} ({len(tasks)} tasks, {level}, "
                           f"{num_batches} batch(es), {meta['saliency']}"
                           + (f", from {Path(args.from_ckpt).name}" if args.from_ckpt else "") + ")")
        written.append(stem.with_suffix(".png"))
    print()
    print(I.summary_table(report))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return record


if __name__ == "__main__":
    from engine.cli import run_main
    run_main(lambda: main(sys.argv[1:]))
