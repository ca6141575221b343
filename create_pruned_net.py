#!/usr/bin/env python3
"""Score a multitask net, build one mask per task, arbitrate the shared backbone, and write the pruned net.

  python create_pruned_net.py --dataset nyuv2 --num_batches 50 --method disparse_static --ratio 90 --dest /data
  python create_pruned_net.py --dataset nyuv2 --method disparse_pt --ratio 90 --from /data/final_nyuv2_baseline.pth
  python create_pruned_net.py --dataset synthetic --method snip --ratio 70 --dest runs/syn --export-compact
  torchrun --nproc_per_node=2 create_pruned_net.py ...   (ranks score different batches; scores are all-reduced)

Channel pruning (methods/channel.py, docs/CHANNELS.md) writes a smaller dense net instead of masks:

  python create_pruned_net.py --dataset nyuv2 --method disparse_channel --macs-ratio 50 --dest /data
  python create_pruned_net.py --dataset synthetic --method uniform --params-ratio 70 --dest runs/syn --tasks seg
  python create_pruned_net.py --dataset synthetic --method disparse_channel --from runs/syn/best_synthetic_disparse_channel_50.pth --tasks seg --dest runs/syn

--ratio R makes the achieved sparsity R% (within 0.05 points) by searching the per-task keep ratio;
--keep-ratio K fixes the per-task keep ratio instead; --paper-keep-ratios uses the original's table.
The channel methods take --macs-ratio R (R% of the MACs removed, within 1 point) or --params-ratio R.
Writes {dest}/{dataset}_{method}_{ratio}.pth (checkpoint format of docs/ARCHITECTURE.md contract 4; a
channel-pruned net adds its architecture spec, contract 11) and, beside it, _report.csv / _report.json
(per-layer sparsity split by backbone and heads, parameter and MAC counts; per-group widths for channel
pruning). --tasks T1,T2 (channel methods) also writes the net extracted for those tasks,
{name}_T1-T2.pth; with --from a channel-pruned (or trained) net and no target, it only extracts. The methods:
"""
from __future__ import annotations

import time
from typing import Sequence

from engine.cli import (add_progress_argument, add_saliency_arguments, base_parser, exit_process, percent,
                        progress_setting, require_positive, run_main, unit_fraction)
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
    structured = parser.add_mutually_exclusive_group()
    structured.add_argument("--macs-ratio", type=percent, default=None, metavar="R",
                            help="channel methods: percent of the MACs removed (counted at the config's crop), "
                                 "reached within 1 point; names the output file")
    structured.add_argument("--params-ratio", type=percent, default=None, metavar="R",
                            help="channel methods: percent of the parameters removed instead; names the output file")
    parser.add_argument("--tasks", default=None, metavar="T1,T2",
                        help="channel methods: also write the net extracted for these tasks (their heads and the "
                             "shared channels they chose); with --from a channel-pruned net and no target, only "
                             "extract from it")
    add_saliency_arguments(parser, saliency_default_help="the method's: pruning.saliency for disparse_static, "
                                                         "pruning.pt_saliency for disparse_pt, snip for "
                                                         "disparse_channel (taylor with --from; or magnitude), "
                                                         "else the method's name")
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
    from engine.config import task_list
    from engine.runtime import seed_everything, select_device
    from methods.base import PruneRequest
    from methods.channel import extract_file, write_extracted
    from methods.outputs import claim_outputs
    from methods.pipeline import (distributed_session, open_net, pruned_outputs, scored_batches,
                                  scoring_batches_rank0_first, write_pruned_net)
    from methods.registry import get_method, paper_keep_ratio
    from models import build_model

    config = config_from_args(args)
    dataset = config["dataset"]
    method = get_method(args.method)
    require_positive({"--num_batches": args.num_batches, "--batch_size": args.batch_size})
    tasks = task_list(args.tasks, config, "--tasks")
    if tasks and not method.structured:
        raise ValueError(f"--tasks (extraction) applies to the channel-pruning methods, not {method.name}")
    if args.export_compact and method.structured:
        raise ValueError(f"--export-compact applies to masked nets; {method.name} writes a smaller dense net")
    structured_ratio = args.macs_ratio if args.macs_ratio is not None else args.params_ratio
    if tasks and structured_ratio is None and args.from_path:
        extract_file(method, args.from_path, tasks, config, args.dest, select_device(args.device),
                     {"seed": args.seed})
        return
    keep_ratio = paper_keep_ratio(config, method.name, args.ratio) if args.paper_keep_ratios else args.keep_ratio
    fraction = None if structured_ratio is None else structured_ratio / 100.0
    source = method.dense_source(args.dest, dataset, args.from_path)
    request = PruneRequest(target_sparsity=None if keep_ratio or fraction else args.ratio / 100.0,
                           keep_ratio=keep_ratio, saliency=args.saliency,
                           arbiter=args.arbiter or config["pruning"]["arbiter"],
                           num_batches=args.num_batches or config["pruning"]["num_batches"],
                           scoring_mode=args.saliency_mode,
                           macs_removed=fraction if args.macs_ratio is not None else None,
                           params_removed=fraction if args.params_ratio is not None else None,
                           from_trained=source is not None)
    method.check_request(request)
    ratio = structured_ratio if structured_ratio is not None else args.ratio
    files = method.files(args.dest, dataset, ratio)
    outputs = pruned_outputs(files, args.export_compact)
    if tasks:
        outputs += pruned_outputs(files.derived(f"_{'-'.join(tasks)}"), False)
    with claim_outputs(files.dest, files.name, outputs), distributed_session(args.device, config) as ctx:
        seed_everything(args.seed)
        batches = None        # made before the net: its loader workers are forked while the process is small
        if method.reads_data(config, request):
            batches = scoring_batches_rank0_first(config, ctx, seed=args.seed, num_batches=request.num_batches,
                                                  batch_size=args.batch_size or config["pruning"]["batch_size"])
        # same init on every rank (same seed); a file's own architecture when it has one
        model = (open_net(source, config, ctx.device, allow_extracted=False).model if source
                 else build_model(config, ctx.device))
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
                 "target_ratio": float(ratio), "source": str(source) if source else None,
                 "world_size": ctx.world_size, "scored_batches": scored_batches(result, request, ctx),
                 **result.info}
        path = write_pruned_net(files, model, config, method.name, result, extra, export_compact=args.export_compact)
        if "macs_removed" in result.entries:
            target = "MACs" if args.macs_ratio is not None else "parameters"
            print(f"{method.name}: {100 * result.entries['macs_removed']:.2f}% of the MACs and "
                  f"{100 * result.entries['params_removed']:.2f}% of the parameters removed (target {ratio:g}% of "
                  f"the {target}), scored with {result.saliency} in {elapsed:.1f}s -> {path}")
        else:
            keep = f", per-task keep ratio {result.keep_ratio:.6f}" if result.keep_ratio is not None else ""
            print(f"{method.name}: sparsity {100 * result.sparsity:.3f}% (target {args.ratio:g}%){keep}, "
                  f"scored with {result.saliency} in {elapsed:.1f}s -> {path}")
        if request.keep_ratio is not None and abs(100 * result.sparsity - args.ratio) > 0.5:
            print(f"note: the file is named for --ratio {args.ratio:g} but the keep ratio gives "
                  f"{100 * result.sparsity:.2f}%")
        if tasks:
            write_extracted(method, files, result.model, result.entries, tasks, config, method.name, extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    exit_process(main())
