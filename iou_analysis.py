#!/usr/bin/env python3
"""Per-layer IoU of the tasks' keep masks over the backbone (docs/ORIGINAL.md §8, the paper's density plot).

Default: per-task static SNIP saliency on a freshly initialised net (`--num_batches` train batches),
each task's exact top-k over its pool (backbone + own head) at keep ratio `--keep-ratio` (default: the
config's pruning.iou_keep_ratio, 0.078 as the original), no arbiter. `--ratio R` instead picks the keep
ratio at which the arbiter's (config pruning.arbiter) combined mask has R % sparsity.
`--from CKPT` analyses a checkpoint: its weights are scored per task (config pruning.pt_saliency
unless `--saliency`; use a task-dependent one such as grad_weight2, since magnitude scores are the
same for every task); a pruned checkpoint's tasks each keep the top fraction `--keep-ratio` of the
weights it kept in their pool, a dense one's (a trained baseline) are cut as a fresh net's are
(`--keep-ratio` of the pool, or `--ratio`).

Writes {dest}/{dataset}_iou.json, .csv and .png and prints a summary table. See docs/ANALYSIS.md.
"""
from __future__ import annotations

import sys
from typing import Sequence

from engine.cli import add_saliency_arguments, base_parser, percent, require_positive, run_main, unit_fraction


def build_parser():
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
                        help="analyse this checkpoint (the config's tasks) instead of a fresh net: score its weights "
                             "per task; pruned: keep, per task, the top --keep-ratio of the weights it kept; dense: "
                             "--keep-ratio of each task's pool, or --ratio")
    parser.add_argument("--dest", default=".", metavar="DIR", help="output folder for {dataset}_iou.json/.csv/.png")
    parser.add_argument("--no_plot", "--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="hide the progress bars")
    return parser


def run(args) -> dict:
    from engine.config import config_from_args
    from engine.runtime import select_device
    from methods.analysis import Scoring, iou_analysis

    require_positive({"--num_batches": args.num_batches, "--batch_size": args.batch_size})
    config = config_from_args(args)
    pruning = config["pruning"]
    scoring = Scoring(method=args.saliency or pruning["pt_saliency" if args.from_ckpt else "saliency"],
                      num_batches=args.num_batches if args.num_batches is not None else int(config["analysis"]["num_batches"]),
                      batch_size=args.batch_size if args.batch_size is not None else int(pruning["batch_size"]),
                      mode=args.saliency_mode, seed=args.seed, device=select_device(args.device),
                      progress=not args.no_progress)
    return iou_analysis(config, scoring, args.dest, keep_ratio=args.keep_ratio, ratio=args.ratio,
                        from_ckpt=args.from_ckpt, plot=not args.no_plot)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
