#!/usr/bin/env python3
"""Train a multitask net: the dense baseline, a pruned net with fixed masks, dynamic sparse training, or LTH.

  python launch_training.py --dataset nyuv2 --method baseline --dest /data/
  python launch_training.py --dataset nyuv2 --method disparse_static --ratio 90 --dest /data/
  python launch_training.py --dataset synthetic --method baseline --dest runs/syn --set train.max_iters=50
  torchrun --nproc_per_node=2 launch_training.py --dataset synthetic --method baseline --dest runs/syn

Network name: `{dataset}_baseline` or `{dataset}_{method}_{ratio}`. Files under --dest:
`best_{name}.pth`, `last_{name}.pth` (resumable), `final_{name}.pth`, `metrics_{name}.json`,
`logs/{name}.jsonl`, `tb/{name}/` (TensorBoard). The one-shot methods start from
`{dest}/{dataset}_{method}_{ratio}.pth` written by create_pruned_net.py (or --from PATH) and train with
its masks fixed (`disparse_pt` with the config's `retrain` settings at a constant LR, as the original
effectively did); the dynamic methods start from random ERK masks (config `dynamic`); `lth` runs its
rounds (config `lth`). What each method does: methods/registry.py, docs/ARCHITECTURE.md.

A --dest that already holds checkpoints of the name is refused unless --resume continues them or
--overwrite replaces them; while a run writes a name, another run of that name in the same --dest is
refused; --dest is checked writable before any work (docs/RELIABILITY.md).
"""
from __future__ import annotations

import sys
from typing import Sequence

from engine.cli import add_progress_argument, base_parser, percent, progress_setting, require_positive, run_main
from engine.config import config_from_args
from methods.registry import method_names, methods_table


def build_parser():
    parser = base_parser(f"{__doc__}\nmethods:\n{methods_table()}")
    parser.add_argument("--method", choices=method_names(), default="baseline",
                        help="what to train (see the method table above)")
    parser.add_argument("--ratio", type=percent, default=90.0,
                        help="target sparsity in percent for the pruned methods (ignored by baseline); names the files")
    parser.add_argument("--dest", default=".", metavar="DIR",
                        help="folder for checkpoints, logs and metrics (also where pruned nets are read from)")
    parser.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                        help="pruned checkpoint to start from instead of {dest}/{dataset}_{method}_{ratio}.pth")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from {dest}/last_{name}.pth (model, optimizer, LR schedule, RNG, data order)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace a previous run of the same name in --dest (its checkpoints, metrics and logs "
                            "are removed first); without it, or --resume, such a folder is refused")
    parser.add_argument("--max-iters", type=int, default=None, metavar="N",
                        help="optimizer steps (overrides train.max_iters, or retrain.iters for disparse_pt, "
                             "or lth.iters_per_round for lth)")
    parser.add_argument("--val-split", default="test", metavar="SPLIT",
                        help="split for validation / best_ selection (the original used the test split)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after step N as if interrupted (writes last_; continue with --resume)")
    add_progress_argument(parser)
    parser.add_argument("--no-final-eval", action="store_true",
                        help="skip the evaluation of best_{name}.pth at the end")
    return parser


def run(args) -> None:
    from dataloaders import build_loader
    from engine import losses
    from engine.distributed import barrier
    from engine.runtime import seed_everything
    from methods.base import TrainingRun
    from methods.outputs import check_fresh_start, claim_outputs
    from methods.pipeline import (check_metrics_target, distributed_session, evaluate_split, load_net, metrics_provenance,
                                  report_metrics, train_loader_rank0_first)
    from methods.registry import get_method
    from models import build_model

    config = config_from_args(args)
    method = get_method(args.method)
    require_positive({"--stop-after": args.stop_after})       # --max-iters: Method.set_iterations
    if args.max_iters is not None:
        method.set_iterations(config, args.max_iters)
    ratio = args.ratio if method.uses_ratio else None
    files = method.files(args.dest, config["dataset"], ratio)
    start_file = method.start_file(files, args.from_path)
    progress = progress_setting(args.progress)
    compat = config["eval"]["metrics_compat"]
    checkpoints = method.training_files(files, config)
    metrics_path = files.metrics_for("test", compat)
    with claim_outputs(files.dest, files.name, checkpoints + [metrics_path],
                       folders=[files.dest / "logs", files.dest / "tb"]) as lock, \
            distributed_session(args.device, config) as ctx:
        if lock is not None:                           # rank 0: the rank that writes
            check_fresh_start(checkpoints, [p for run in method.trainer_runs(files, config) for p in run.logs()],
                              files.dest, files.name, resume=args.resume, overwrite=args.overwrite)
            if not args.no_final_eval:
                check_metrics_target(metrics_path, "test", compat)
        seed_everything(args.seed)
        train_loader = train_loader_rank0_first(config, ctx, seed=args.seed)
        val_loader = build_loader(config, args.val_split, shuffle=False, distributed=False, train=False)
        loss_fn = losses.build_loss(config, train_loader.dataset)
        model = build_model(config, ctx.device)        # identical on every rank (same seed)
        seed_everything(args.seed + ctx.rank)          # per-rank dropout / augmentation streams
        run = TrainingRun(config, model, train_loader, val_loader, loss_fn, ctx.device, ctx, files, ratio,
                          seed=args.seed, resume=args.resume, val_split=args.val_split, progress=progress,
                          stop_after=args.stop_after, start_file=start_file)
        result = method.train(run)
        if result.stopped_early:
            if ctx.is_main:
                print(f"stopped after iteration {result.iteration}; continue with --resume ({files.checkpoint('last')})")
            return
        barrier()
        if ctx.is_main:
            print(f"trained {files.name}: {result.iteration} iterations, best validation loss "
                  f"{result.best_value:.6g} at iteration {result.best_iteration}")
        if not args.no_final_eval:
            loaded, sparsity = load_net(files.checkpoint("best"), run.model, config)
            metrics = evaluate_split(run.model, config, "test", ctx.device, progress=bool(progress) and ctx.is_main,
                                     normals_space=loaded.normals_space)
            metrics["sparsity"] = sparsity
            if ctx.is_main:
                print(f"metrics of {files.checkpoint('best')}:")
                report_metrics(metrics, metrics_path, metrics_provenance("test", compat, files.checkpoint("best")))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
