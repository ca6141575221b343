#!/usr/bin/env python3
"""Train a multitask net: the dense baseline, a pruned net with fixed masks, dynamic sparse training, or LTH.

  python launch_training.py --dataset nyuv2 --method baseline --dest /data/
  python launch_training.py --dataset nyuv2 --method disparse_static --ratio 90 --dest /data/
  python launch_training.py --dataset synthetic --method baseline --dest runs/syn --set train.max_iters=50
  torchrun --nproc_per_node=2 launch_training.py --dataset synthetic --method baseline --dest runs/syn

Network name: `{dataset}_baseline` or `{dataset}_{method}_{ratio}`. Files under --dest:
`best_{name}.pth`, `last_{name}.pth` (resumable), `final_{name}.pth`, `metrics_{name}.json`,
`logs/{name}.jsonl`, `tb/{name}/` (TensorBoard). Pruned static methods start from
`{dest}/{dataset}_{method}_{ratio}.pth` written by create_pruned_net.py (or --from PATH).

Method semantics (REFERENCE.md 7.2):
  baseline                      fresh dense net, train.* settings
  disparse_static snip random magnitude
                                the pruned checkpoint's weights and masks, fixed masks, train.* settings
  disparse_pt                   the pruned checkpoint, fixed masks, retrain.iters steps at retrain.lr with a
                                constant LR (the original's StepLR pointed at a discarded optimizer, so
                                its LR was constant too)
  disparse_dynamic rigl         fresh net with random ERK masks at the target sparsity, dynamic sparse
                                training (config section `dynamic`; prune_utils.sparse_training)
  lth                           iterative magnitude pruning with rewinding (config section `lth`; engine/lth.py)
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fileio import CheckpointError, atomic_write_json, load_weights
from engine.cli import base_parser, config_from_args, percent, ratio_label, run_main

METHODS = ("baseline", "disparse_static", "disparse_pt", "disparse_dynamic", "snip", "random", "magnitude",
           "rigl", "lth")
STATIC_METHODS = ("disparse_static", "snip", "random", "magnitude", "disparse_pt")
DYNAMIC_METHODS = ("disparse_dynamic", "rigl")
DEFAULT_RATIO = 90.0


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__)
    parser.formatter_class = HelpFormatter
    parser.add_argument("--method", choices=METHODS, default="baseline",
                        help="what to train (see the method table above)")
    parser.add_argument("--ratio", type=percent, default=DEFAULT_RATIO,
                        help="target sparsity in percent for the pruned methods (ignored by baseline); names the files")
    parser.add_argument("--dest", default=".", metavar="DIR",
                        help="folder for checkpoints, logs and metrics (also where pruned nets are read from)")
    parser.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                        help="pruned checkpoint to start from instead of {dest}/{dataset}_{method}_{ratio}.pth")
    parser.add_argument("--resume", action="store_true",
                        help="continue from {dest}/last_{name}.pth (model, optimizer, LR schedule, RNG, data order)")
    parser.add_argument("--max-iters", type=int, default=None, metavar="N",
                        help="optimizer steps (overrides train.max_iters, or retrain.iters for disparse_pt, "
                             "or lth.iters_per_round for lth)")
    parser.add_argument("--val-split", default="test", metavar="SPLIT",
                        help="split for validation / best_ selection (the original used the test split)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after step N as if interrupted (writes last_; continue with --resume)")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="tqdm progress bars: auto = only when stderr is a terminal")
    parser.add_argument("--no-final-eval", action="store_true",
                        help="skip the evaluation of best_{name}.pth at the end")
    return parser


def network_name(dataset: str, method: str, ratio: float | None) -> str:
    """`{dataset}_baseline` or `{dataset}_{method}_{ratio}` (the original's names)."""
    if method == "baseline":
        return f"{dataset}_baseline"
    return f"{dataset}_{method}_{ratio_label(ratio)}"


def pruned_checkpoint_path(dest: str | Path, dataset: str, method: str, ratio: float) -> Path:
    return Path(dest) / f"{dataset}_{method}_{ratio_label(ratio)}.pth"


def _progress(choice: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[choice]


def build_controller(method: str, model: torch.nn.Module, config: dict, loss_fn: Any, ratio: float,
                     seed: int, pruned_path: Path | None):
    """The sparsity controller of a method (None for baseline); loads the pruned checkpoint when needed."""
    if method == "baseline":
        return None
    from prune_utils.sparse_training import StaticSparsity
    if method in STATIC_METHODS:
        loaded = load_weights(pruned_path, model, config)
        if not loaded.masks:
            raise CheckpointError(f"{pruned_path} holds no masks (a dense checkpoint?): make a pruned net with "
                                  f"create_pruned_net.py --method {method} --ratio {ratio_label(ratio)}")
        return StaticSparsity(loaded.masks)
    if method in DYNAMIC_METHODS:
        from prune_utils.sparse_training import DynamicSparsity
        dyn = config["dynamic"]
        generator = torch.Generator().manual_seed(seed)
        common = dict(model=model, density=1.0 - ratio / 100.0, interval=dyn["interval"], end=dyn["end"],
                      drop_fraction=dyn["drop_fraction"], tasks=list(config["tasks"]),
                      growth_splits=dyn["growth_splits"], generator=generator)
        if method == "disparse_dynamic":
            return DynamicSparsity(mode="disparse", task_loss=loss_fn.task_loss,
                                   arbiter=config["pruning"]["arbiter"], **common)
        return DynamicSparsity(mode="rigl", total_loss=loss_fn, **common)
    raise ValueError(f"method {method!r} has no controller")


def run(args: argparse.Namespace) -> int:
    from dataloaders import build_loader
    from engine.distributed import barrier, cleanup, setup_distributed
    from engine.evaluate import evaluate
    from engine.losses import build_loss
    from engine.metrics import format_table
    from engine.runtime import seed_everything
    from engine.trainer import Trainer, TrainOptions, checkpoint_path
    from models import build_model

    config = config_from_args(args)
    method = args.method
    ratio = None if method == "baseline" else args.ratio
    if args.max_iters is not None:
        if args.max_iters <= 0:
            raise ValueError(f"--max-iters must be positive, got {args.max_iters}")
        key = {"disparse_pt": ("retrain", "iters"), "lth": ("lth", "iters_per_round")}.get(method,
                                                                                          ("train", "max_iters"))
        config[key[0]][key[1]] = args.max_iters
    dataset = config["dataset"]
    name = network_name(dataset, method, ratio)
    dest = Path(args.dest)
    pruned_path = None
    if method in STATIC_METHODS:
        pruned_path = Path(args.from_path) if args.from_path else pruned_checkpoint_path(dest, dataset, method, ratio)
        if not pruned_path.is_file():
            raise CheckpointError(f"pruned checkpoint not found: {pruned_path} (make it with create_pruned_net.py "
                                  f"--dataset {dataset} --method {method} --ratio {ratio_label(ratio)} --dest {dest}, "
                                  f"or pass --from PATH)")

    ctx = setup_distributed(args.device)
    failed = True
    try:
        device = ctx.device
        seed_everything(args.seed)
        # Rank 0 first: the synthetic dataset is generated on first use, and only once.
        if ctx.is_main:
            train_loader = build_loader(config, "train", seed=args.seed, distributed=ctx.distributed)
        barrier()
        if not ctx.is_main:
            train_loader = build_loader(config, "train", seed=args.seed, distributed=ctx.distributed)
        val_loader = build_loader(config, args.val_split, shuffle=False, distributed=False, train=False)
        loss_fn = build_loss(config, train_loader.dataset)
        model = build_model(config, device)            # identical on every rank (same seed)
        seed_everything(args.seed + ctx.rank)          # per-rank dropout / augmentation streams
        progress = _progress(args.progress)

        if method == "lth":
            from engine.lth import run_lth
            result = run_lth(model, config, train_loader, val_loader, loss_fn, device, ctx=ctx, name=name,
                             dest=dest, ratio=ratio, seed=args.seed, resume=args.resume,
                             val_split=args.val_split, progress=progress, stop_after=args.stop_after)
        else:
            controller = build_controller(method, model, config, loss_fn, ratio, args.seed, pruned_path)
            if method == "disparse_pt":
                r = config["retrain"]
                options = TrainOptions.from_config(config, max_iters=int(r["iters"]), lr=float(r["lr"]),
                                                   constant_lr=True, val_split=args.val_split, seed=args.seed,
                                                   stop_after=args.stop_after, progress=progress)
            else:
                options = TrainOptions.from_config(config, val_split=args.val_split, seed=args.seed,
                                                   stop_after=args.stop_after, progress=progress)
            extra = {"source": str(pruned_path)} if pruned_path else {}
            if ratio is not None:
                extra["target_ratio"] = float(ratio)
            trainer = Trainer(model, config, train_loader, loss_fn, device, name=name, dest=dest, method=method,
                              val_loader=val_loader, controller=controller, ctx=ctx, options=options,
                              extra_state=extra)
            result = trainer.fit(resume=args.resume)
        if result.stopped_early:
            if ctx.is_main:
                print(f"stopped after iteration {result.iteration}; continue with --resume "
                      f"({checkpoint_path(dest, 'last', name)})")
            failed = False
            return 0
        barrier()
        if ctx.is_main:
            print(f"trained {name}: {result.iteration} iterations, best validation loss "
                  f"{result.best_value:.6g} at iteration {result.best_iteration}")
        if not args.no_final_eval:
            best = checkpoint_path(dest, "best", name)
            loaded = load_weights(best, model, config)
            test_loader = build_loader(config, "test", shuffle=False, distributed=False, train=False)
            metrics = evaluate(model, test_loader, config, test_loader.dataset, device,
                               progress=bool(progress) and ctx.is_main)
            masks = loaded.masks
            from prune_utils.masks import sparsity as mask_sparsity
            metrics["sparsity"] = float(mask_sparsity(masks)) if masks else 0.0
            if ctx.is_main:
                print(f"metrics of {best}:")
                print(format_table(metrics))
                atomic_write_json(dest / f"metrics_{name}.json", metrics, nonfinite="null")
        failed = False
        return 0
    finally:
        if failed:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        else:
            cleanup()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: run(args))


if __name__ == "__main__":
    main()
