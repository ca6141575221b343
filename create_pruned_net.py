#!/usr/bin/env python3
"""Score a multitask net, build one mask per task, arbitrate the shared backbone, and write the pruned net.

  python create_pruned_net.py --dataset nyuv2 --num_batches 50 --method disparse_static --ratio 90 --dest /data
  python create_pruned_net.py --dataset nyuv2 --method disparse_pt --ratio 90 --from /data/final_nyuv2_baseline.pth
  python create_pruned_net.py --dataset synthetic --method snip --ratio 70 --dest runs/syn --export-compact
  torchrun --nproc_per_node=2 create_pruned_net.py ...   (ranks score different batches; scores are all-reduced)

--ratio R makes the achieved sparsity R% (within 0.05 points) by searching the per-task keep ratio;
--keep-ratio K fixes the per-task keep ratio instead; --paper-keep-ratios uses the original's table.
Writes {dest}/{dataset}_{method}_{ratio}.pth (checkpoint format of docs/ARCHITECTURE.md contract 4) and,
beside it, _report.csv / _report.json (per-layer sparsity split by backbone and heads, parameter and MAC
counts). The methods (methods/oneshot.py):
"""
from __future__ import annotations

import time
from typing import Sequence

from engine.cli import (add_progress_argument, add_saliency_arguments, base_parser, exit_process, percent,
                        progress_setting, run_main, unit_fraction)
from engine.config import config_from_args
from methods.registry import METHODS, pruning_methods


def build_parser():
    table = "\n".join(f"  {name:<16} {METHODS[name].summary}" for name in pruning_methods())
    parser = base_parser(f"{__doc__}{table}")
    parser.add_argument("--method", choices=pruning_methods(), default="disparse_static", help="pruning method (see above)")
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
    add_progress_argument(parser)
    return parser


def run(args) -> None:
    import torch

    from engine import losses
    from engine.runtime import seed_everything
    from fileio import load_weights
    from methods.base import PruneRequest
    from methods.pipeline import distributed_session, scoring_batches_rank0_first, write_pruned_net
    from methods.registry import get_method, paper_keep_ratio
    from models import build_model

    config = config_from_args(args)
    dataset = config["dataset"]
    method = get_method(args.method)
    if args.num_batches is not None and args.num_batches <= 0:
        raise ValueError(f"--num_batches must be positive, got {args.num_batches}")
    keep_ratio = paper_keep_ratio(config, method.name, args.ratio) if args.paper_keep_ratios else args.keep_ratio
    source = method.dense_source(args.dest, dataset, args.from_path)
    request = PruneRequest(target_sparsity=None if keep_ratio else args.ratio / 100.0, keep_ratio=keep_ratio,
                           saliency=args.saliency, arbiter=args.arbiter or config["pruning"]["arbiter"],
                           num_batches=args.num_batches or config["pruning"]["num_batches"],
                           scoring_mode=args.saliency_mode)
    with distributed_session(args.device) as ctx:
        seed_everything(args.seed)
        batches = None        # made before the net: its loader workers are forked while the process is small
        if method.reads_data(config, request):
            batches = scoring_batches_rank0_first(config, ctx, seed=args.seed, num_batches=request.num_batches,
                                                  batch_size=args.batch_size or config["pruning"]["batch_size"])
        model = build_model(config, ctx.device)   # same init on every rank (same seed)
        if source is not None:
            load_weights(source, model, config)
        start = time.perf_counter()
        result = method.prune(model, config, request, batches,
                              losses.build_loss(config, batches.dataset if batches else None), ctx.device,
                              torch.Generator().manual_seed(args.seed),
                              progress=progress_setting(args.progress) if ctx.is_main else False)
        elapsed = time.perf_counter() - start
        if not ctx.is_main:
            return
        extra = {"keep_ratio": result.keep_ratio, "saliency": result.saliency, "arbiter": request.arbiter,
                 "num_batches": request.num_batches, "scoring_mode": request.scoring_mode, "seed": args.seed,
                 "target_ratio": float(args.ratio), "source": str(source) if source else None, **result.info}
        path = write_pruned_net(method.files(args.dest, dataset, args.ratio), model, config, method.name, result,
                                extra, export_compact=args.export_compact)
        keep = f", per-task keep ratio {result.keep_ratio:.6f}" if result.keep_ratio is not None else ""
        print(f"{method.name}: sparsity {100 * result.sparsity:.3f}% (target {args.ratio:g}%){keep}, "
              f"scored with {result.saliency} in {elapsed:.1f}s -> {path}")
        if request.target_sparsity is None and abs(100 * result.sparsity - args.ratio) > 0.5:
            print(f"note: the file is named for --ratio {args.ratio:g} but the keep ratio gives "
                  f"{100 * result.sparsity:.2f}%")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    exit_process(main())
