#!/usr/bin/env python3
"""Meta-Sparse task similarity (REFERENCE.md §9): how alike the tasks' per-task sparse masks are.

For each seed: a fresh net, per-task static SNIP saliency over `--num_batches` train batches (cached
as npz under `--dump_dir`, reused unless `--force_run`), per-task top-k masks at the keep ratio of each
sparsity in `--sparsities`, per-layer similarity of every task pair over the backbone, a weighted mean
over layers, the mean over the sparsities, then the mean over seeds. See prune_utils/similarity.py and
docs/ANALYSIS.md.

Example: python3 static_similarity.py --dataset nyuv2 --num_batches 50 --num_seeds 4 --all --format latex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import add_saliency_arguments, base_parser
    from prune_utils.similarity import KEEP_RATIO_MODES, LAYER_METHODS, SIM_METHODS
    parser = base_parser("Meta-Sparse task similarity from per-task sparse masks (REFERENCE.md §9): per-task "
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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from prune_utils import similarity as S
    if args.table_only:
        path = Path(args.table_json)
        if not path.is_file():
            raise FileNotFoundError(f"table file not found: {path}")
        import json
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"table file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        print(S.format_table(table, args.format or "tsv"))
        return
    run(args)


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from engine.cli import config_from_args
    from engine.runtime import select_device
    from prune_utils import similarity as S
    from prune_utils.iou import pair_key
    from prune_utils.mask_builder import task_masks

    if args.dataset is None and args.config is None:
        args.dataset = "nyuv2"             # the original's default
    if args.num_batches < 1:
        raise ValueError(f"--num_batches must be at least 1, got {args.num_batches}")
    if args.num_seeds < 1:
        raise ValueError(f"--num_seeds must be at least 1, got {args.num_seeds}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    config = config_from_args(args)
    device = select_device(args.device)
    tasks = list(config["tasks"])
    if len(tasks) < 2:
        raise ValueError(f"task similarity needs at least two tasks, the config has {tasks}")
    sparsities = S.parse_sparsities(args.sparsities)
    keep_ratios = [S.keep_ratio_for(r, config, args.keep_ratios) for r in sparsities]
    method = args.saliency or config["pruning"]["saliency"]
    batch_size = args.batch_size or config["pruning"]["batch_size"]
    seeds = [args.seed + s for s in range(args.num_seeds)]
    cells = ([(lm, sm) for lm in S.LAYER_METHODS for sm in S.SIM_METHODS] if args.all
             else [(args.layer_method, args.sim_method)])
    sim_methods = sorted({sm for _, sm in cells}, key=S.SIM_METHODS.index)
    show = not args.no_progress
    out_dir = Path(args.dump_dir) / config["dataset"]

    print(f"tasks {', '.join(tasks)}; sparsities {', '.join(S._label(r) for r in sparsities)} -> per-task keep "
          f"ratios {', '.join(f'{k:g}' for k in keep_ratios)} ({args.keep_ratios}); {method} saliency, "
          f"{args.num_batches} batches of {batch_size}, seeds {seeds[0]}..{seeds[-1]}; device {device}")
    grid: list[list[S.LayerStats]] = []
    for seed in tqdm(seeds, desc="seeds", disable=not show):
        scores, computed = S.cached_scores(config, seed=seed, num_batches=args.num_batches, method=method,
                                           batch_size=batch_size, cache_dir=args.dump_dir, force=args.force_run,
                                           device=device, progress=show, mode=args.saliency_mode)
        tqdm.write(f"seed {seed}: saliency {'computed' if computed else 'loaded from cache'} "
                   f"({S.cache_path(args.dump_dir, S.cache_key(config, seed=seed, num_batches=args.num_batches, method=method, batch_size=batch_size, mode=args.saliency_mode))})")
        layers = S.backbone_layer_names(scores[tasks[0]])
        per_ratio = []
        for keep in tqdm(keep_ratios, desc=f"seed {seed} keep ratios", leave=False, disable=not show):
            masks = task_masks(scores, keep)
            per_ratio.append(S.layer_stats({t: masks[t] for t in tasks}, scores, layers, keep, sim_methods))
            del masks
        grid.append(per_ratio)
        del scores

    label = S.sparsity_label(sparsities)
    results = {}
    for layer_method, sim_method in cells:
        matrix = S.similarity_matrix(grid, sim_method, layer_method, args.compat_row_slice)
        cell = S.table_key(layer_method, sim_method, args.compat_row_slice)
        entries = {S.entry_key(sparsities, tasks[i], tasks[j]): float(matrix[i, j])
                   for i in range(len(tasks)) for j in range(i + 1, len(tasks))}
        S.update_table(args.table_json, cell, entries)
        per_seed = {str(seed): {pair_key(tasks[i], tasks[j]): S._clean(float(np.mean(
            [st.score(tasks[i], tasks[j], sim_method, layer_method, args.compat_row_slice) for st in per_ratio])))
            for i in range(len(tasks)) for j in range(i, len(tasks))} for seed, per_ratio in zip(seeds, grid)}
        record = {
            "config": {k: v for k, v in vars(args).items() if k not in ("overrides",)} | {"overrides": args.overrides},
            "dataset": config["dataset"], "tasks": tasks, "sparsities": sparsities, "keep_ratios": keep_ratios,
            "keep_ratio_mode": args.keep_ratios, "saliency": method, "saliency_mode": args.saliency_mode, "num_batches": args.num_batches,
            "batch_size": batch_size, "seeds": seeds, "width_mult": config["model"]["width_mult"],
            "layer_method": layer_method, "sim_method": sim_method, "compat_row_slice": args.compat_row_slice,
            "layers": grid[0][0].layers,
            "sim": {pair_key(tasks[i], tasks[j]): S._clean(float(matrix[i, j]))
                    for i in range(len(tasks)) for j in range(i, len(tasks))},
            "matrix": [[S._clean(float(v)) for v in row] for row in matrix],
            "per_seed": per_seed,
        }
        stem = f"sim_{cell}_{label}"
        S.write_json(out_dir / f"{stem}.json", record)
        if not args.no_plot:
            from prune_utils.plots import similarity_heatmap
            similarity_heatmap(matrix, tasks, out_dir / f"heatmap_{cell}_{label}.png",
                               title=f"{config['dataset']}: {sim_method}, {layer_method} weighting, "
                                     f"sparsity {label[1:]} ({args.keep_ratios} keep ratios), {len(seeds)} seed(s)")
        results[cell] = matrix
        if len(cells) == 1 or args.format is None:
            print(f"\n{cell} ({label}):")
            print(S.format_matrix(matrix, tasks))
    print(f"\nwrote {args.table_json} and {out_dir}/sim_*_{label}.json" + ("" if args.no_plot else " + heatmaps"))
    if args.format:
        import json
        table = json.loads(Path(args.table_json).read_text(encoding="utf-8"))
        print()
        print(S.format_table(table, args.format))
    return results


if __name__ == "__main__":
    from engine.cli import run_main
    run_main(lambda: main(sys.argv[1:]))
