#!/usr/bin/env python3
"""Score a multitask net, build one mask per task, arbitrate the shared backbone, and write the pruned net.

  python create_pruned_net.py --dataset nyuv2 --num_batches 50 --method disparse_static --ratio 90 --dest /data
  python create_pruned_net.py --dataset nyuv2 --method disparse_pt --ratio 90 --from /data/final_nyuv2_baseline.pth
  python create_pruned_net.py --dataset synthetic --method snip --ratio 70 --dest runs/syn --export-compact
  torchrun --nproc_per_node=2 create_pruned_net.py ...   (ranks score different batches; scores are all-reduced)

Methods (prune_utils/static_pruning.py):
  disparse_static  per-task saliency (config pruning.saliency, SNIP) on a fresh net; backbone by the arbiter
  disparse_pt      per-task saliency (config pruning.pt_saliency) on a trained dense net (--from)
  snip random magnitude
                   task-agnostic baselines: one global top-k (magnitude with --from = one-shot IMP)

--ratio R makes the achieved sparsity R% (within 0.05 points) by searching the per-task keep ratio;
--keep-ratio K fixes the per-task keep ratio instead; --paper-keep-ratios uses the original's table.
Writes {dest}/{dataset}_{method}_{ratio}.pth (checkpoint format of DESIGN.md contract 4) and, beside
it, _report.csv / _report.json (per-layer sparsity split by backbone and heads, parameter and MAC counts).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from engine.cli import (add_saliency_arguments, base_parser, config_from_args, percent, ratio_label, run_main,
                        unit_fraction)
from prune_utils.static_pruning import METHODS, PER_TASK_METHODS, PruneRequest, paper_keep_ratio, prune

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__)
    parser.formatter_class = HelpFormatter
    parser.add_argument("--method", choices=METHODS, default="disparse_static", help="pruning method (see above)")
    parser.add_argument("--ratio", type=percent, default=90.0,
                        help="target sparsity in percent, strictly between 0 and 100; also names the output file")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep-ratio", type=unit_fraction, default=None, metavar="K",
                       help="per-task keep ratio (fraction of backbone + own head) instead of searching for --ratio; "
                            "for the task-agnostic methods, the fraction of all weights kept")
    group.add_argument("--paper-keep-ratios", action="store_true",
                       help="use the original's hand-tuned keep ratio for --ratio (config pruning.paper_keep_ratios)")
    add_saliency_arguments(parser, saliency_default_help="the method's: pruning.saliency for disparse_static, "
                                                         "pruning.pt_saliency for disparse_pt, else the method's name")
    parser.add_argument("--dest", default=".", metavar="DIR", help="output folder")
    parser.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                        help="dense checkpoint to prune (ours or the original's); disparse_pt defaults to "
                             "{dest}/final_{dataset}_baseline.pth")
    parser.add_argument("--arbiter", default=None, metavar="NAME",
                        help="backbone arbiter for the per-task methods: unanimous (the paper), intersection, "
                             "majority, mean_score (default: config pruning.arbiter)")
    parser.add_argument("--export-compact", action="store_true",
                        help="also write {name}.compact.pth: kept values + bit-packed masks (fileio/compact.py)")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="tqdm progress bars: auto = only when stderr is a terminal")
    return parser


def dense_source(args: argparse.Namespace, dataset: str) -> Path | None:
    """The trained net to prune: --from, or the original's default name for disparse_pt."""
    if args.from_path:
        return Path(args.from_path)
    if args.method == "disparse_pt":
        return Path(args.dest) / f"final_{dataset}_baseline.pth"
    return None


def main() -> None:
    args = build_parser().parse_args()
    from dataloaders import build_loader
    from fileio import CheckpointError, atomic_save, compact, load_weights, make_checkpoint
    from engine.distributed import barrier, cleanup, setup_distributed
    from engine.losses import build_loss
    from engine.runtime import seed_everything
    from models import build_model
    from prune_utils import report

    config = config_from_args(args)
    dataset = config["dataset"]
    if args.num_batches is not None and args.num_batches <= 0:
        raise ValueError(f"--num_batches must be positive, got {args.num_batches}")
    if args.paper_keep_ratios and args.method not in PER_TASK_METHODS:
        raise ValueError(f"--paper-keep-ratios applies to {' and '.join(PER_TASK_METHODS)}, not {args.method}")
    source = dense_source(args, dataset)
    if source is not None and not source.is_file():
        hint = (f" (train one with launch_training.py --dataset {dataset} --method baseline --dest {args.dest}, "
                f"or pass --from PATH)" if args.method == "disparse_pt" else "")
        raise CheckpointError(f"dense checkpoint not found: {source}{hint}")

    keep_ratio = args.keep_ratio
    if args.paper_keep_ratios:
        keep_ratio = paper_keep_ratio(config, args.method, args.ratio)
    request = PruneRequest(method=args.method, target_sparsity=None if keep_ratio else args.ratio / 100.0,
                           keep_ratio=keep_ratio, saliency=args.saliency,
                           arbiter=args.arbiter or config["pruning"]["arbiter"],
                           num_batches=args.num_batches or config["pruning"]["num_batches"],
                           scoring_mode=args.saliency_mode)

    ctx = setup_distributed(args.device)
    try:
        seed_everything(args.seed)
        model = build_model(config, ctx.device)   # same init on every rank (same seed)
        if source is not None:
            load_weights(source, model, config)
        batch_size = args.batch_size or config["pruning"]["batch_size"]
        if ctx.is_main:   # rank 0 first: the synthetic set is generated on first use
            loader = build_loader(config, "train", batch_size=batch_size, seed=args.seed, distributed=ctx.distributed)
        barrier()
        if not ctx.is_main:
            loader = build_loader(config, "train", batch_size=batch_size, seed=args.seed, distributed=ctx.distributed)
        loss_fn = build_loss(config, loader.dataset)
        progress = {"auto": None, "on": True, "off": False}[args.progress] if ctx.is_main else False

        start = time.perf_counter()
        result = prune(model, config, request, loader, loss_fn, ctx.device,
                       torch.Generator().manual_seed(args.seed), progress=progress)
        elapsed = time.perf_counter() - start
        if not ctx.is_main:
            return

        from prune_utils.masks import apply_masks
        apply_masks(model, result.masks)
        name = f"{dataset}_{args.method}_{ratio_label(args.ratio)}"
        dest = Path(args.dest)
        path = dest / f"{name}.pth"
        extra = {"keep_ratio": result.keep_ratio, "saliency": result.saliency, "arbiter": request.arbiter,
                 "num_batches": request.num_batches, "scoring_mode": request.scoring_mode, "seed": args.seed,
                 "target_ratio": float(args.ratio), "source": str(source) if source else None, **result.info}
        atomic_save(make_checkpoint(model.state_dict(), config, args.method, masks=result.masks,
                                    sparsity=result.sparsity, **extra), path)
        crop = (1, 3, config["data"]["crop_h"], config["data"]["crop_w"])
        summary = report.build_report(model, result.masks, input_size=crop)
        summary["pruning"] = {"method": args.method, "sparsity": result.sparsity, **extra}
        report.write_csv(summary["layers"], dest / f"{name}_report.csv")
        report.write_json(summary, dest / f"{name}_report.json")
        print(report.format_table(summary))
        if args.export_compact:
            compact_path = dest / f"{name}.compact.pth"
            compact.save_compact(compact_path, model.state_dict(), result.masks,
                                 meta={"tasks": list(config["tasks"]), "num_classes": list(config["num_classes"]),
                                       "config": config, "method": args.method, "sparsity": result.sparsity})
            print(f"compact export: {compact_path} ({compact_path.stat().st_size / path.stat().st_size:.1%} "
                  f"of the checkpoint)")
        keep = f", per-task keep ratio {result.keep_ratio:.6f}" if result.keep_ratio is not None else ""
        print(f"{args.method}: sparsity {100 * result.sparsity:.3f}% (target {args.ratio:g}%){keep}, "
              f"scored with {result.saliency} in {elapsed:.1f}s -> {path}")
        if request.target_sparsity is None and abs(100 * result.sparsity - args.ratio) > 0.5:
            print(f"note: the file is named for --ratio {args.ratio:g} but the keep ratio gives "
                  f"{100 * result.sparsity:.2f}%")
    finally:
        barrier()
        cleanup()


if __name__ == "__main__":
    run_main(main)
