#!/usr/bin/env python3
"""Meta-Sparse task similarity (docs/ORIGINAL.md §9): how alike the tasks' per-task sparse masks are.

For each seed: a fresh net, per-task static SNIP saliency over `--num_batches` train batches (cached
as npz under `--dump_dir`, reused unless `--force_run`), per-task top-k masks at the keep ratio of each
sparsity in `--sparsities`, per-layer similarity of every task pair over the backbone, a weighted mean
over layers, the mean over the sparsities, then the mean over seeds. See prune_utils/similarity.py and
docs/ANALYSIS.md.

Example: python3 static_similarity.py --dataset nyuv2 --num_batches 50 --num_seeds 4 --all --format latex
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from engine.cli import add_saliency_arguments, base_parser, require_positive, run_main


def build_parser():
    from prune_utils.similarity import KEEP_RATIO_MODES, LAYER_METHODS, SIM_METHODS
    parser = base_parser("Meta-Sparse task similarity from per-task sparse masks (docs/ORIGINAL.md §9): per-task "
                         "SNIP masks on fresh nets, compared layer by layer over the backbone.")
    add_saliency_arguments(parser, num_batches_default=5)   # the original's default 5 (its runs used 50)
    parser.add_argument("--num_seeds", "--num-seeds", type=int, default=5,
                        help="seeds --seed .. --seed+N-1, each a fresh net and data order; results are averaged")
    parser.add_argument("--sim_method", "--sim-method", choices=SIM_METHODS, default="iou",
                        help="per-layer similarity: iou (mask IoU), epi (EPI-Sim, kept counts only), "
                             "sals (CSS, saliency cosine), masked_sals (MCSS, cosine of the masked saliencies)")
    parser.add_argument("--layer_method", "--layer-method", choices=LAYER_METHODS, default="equal",
                        help="layer weighting: equal, linear (l), linear_plus_one (l+1), five_zeros (0 for the first 5 "
                             "layers), av_sparsity (s_a+s_b), min_sparsity, epi_like (EPI formula on the kept counts); "
                             "sparsities are of the whole layer")
    parser.add_argument("--all", action="store_true",
                        help="compute every (layer_method, sim_method) cell (7 x 4) from the same scores in one run")
    parser.add_argument("--sparsities", default="30,50,70,90",
                        help="comma list of sparsity levels in percent; the score is averaged over them")
    parser.add_argument("--keep_ratios", "--keep-ratios", choices=KEEP_RATIO_MODES, default="paper",
                        help="per-task keep ratio of a sparsity: paper = the config's pruning.paper_keep_ratios."
                             "disparse_static table (as the original; (100-r)/100 for levels it lacks), "
                             "exact = (100-r)/100 of each task's pool")
    parser.add_argument("--dump_dir", "--dump-dir", default="./subnetworks/",
                        help="where the saliency cache, per-cell JSON results and heatmaps go ({dump_dir}/{dataset}/)")
    parser.add_argument("--force_run", "--force-run", action="store_true",
                        help="recompute the saliency even when a cache file for the same key exists")
    parser.add_argument("--table_json", "--table-json", default="table.json",
                        help="results table, created if missing, updated under {layer_method}_X_{sim_method}")
    parser.add_argument("--format", choices=("tsv", "latex", "markdown"), default=None,
                        help="after the run, print the whole --table_json table in this format")
    parser.add_argument("--table_only", "--table-only", action="store_true",
                        help="only print --table_json in --format (default tsv); compute nothing")
    parser.add_argument("--compat_row_slice", "--compat-row-slice", action="store_true",
                        help="reproduce the original's bug for av_sparsity/min_sparsity/epi_like (sparsity of "
                             "output row l of layer l); stored under '<method>-rowslice' in the table")
    parser.add_argument("--no_plot", "--no-plot", action="store_true", help="skip the heatmap PNGs")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="hide the progress bars")
    return parser


def print_table(path: str, fmt: str) -> None:
    from fileio import read_json
    from prune_utils.similarity import format_table

    print(format_table(read_json(path, "table file", dict), fmt))


def run(args) -> None:
    from engine.config import config_from_args
    from engine.runtime import select_device
    from methods.analysis import Scoring, similarity_study
    from methods.outputs import claim_outputs
    from prune_utils import similarity as S

    if args.table_only:
        print_table(args.table_json, args.format or "tsv")
        return
    if args.dataset is None and args.config is None:
        args.dataset = "nyuv2"             # the original's default
    require_positive({"--num_batches": args.num_batches, "--num_seeds": args.num_seeds,
                      "--batch_size": args.batch_size})
    config = config_from_args(args)
    scoring = Scoring(method=args.saliency or config["pruning"]["saliency"], num_batches=args.num_batches,
                      batch_size=args.batch_size or config["pruning"]["batch_size"], mode=args.saliency_mode,
                      seed=args.seed, device=select_device(args.device), progress=not args.no_progress)
    cells = ([(lm, sm) for lm in S.LAYER_METHODS for sm in S.SIM_METHODS] if args.all
             else [(args.layer_method, args.sim_method)])
    table = Path(args.table_json)
    with claim_outputs(table.parent, table.name, [table], folders=[Path(args.dump_dir)], what="--table_json folder"):
        similarity_study(config, scoring, sparsities=S.parse_sparsities(args.sparsities),
                         keep_ratio_mode=args.keep_ratios, num_seeds=args.num_seeds, cells=cells,
                         dump_dir=args.dump_dir, table_json=args.table_json, force=args.force_run,
                         compat_row_slice=args.compat_row_slice, plot=not args.no_plot,
                         show_each=len(cells) == 1 or args.format is None, settings=vars(args))
    if args.format:
        print()
        print_table(args.table_json, args.format)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
