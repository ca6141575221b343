"""Shared command-line plumbing: the common flags every script takes, config loading, clean errors.

Every entry point builds its parser with `base_parser`, then calls `run_main(main)` so that a
user error (a `ValueError` subclass or a missing file) ends as one line on stderr and exit code 2,
never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .config import DATASETS, load_config


def percent(value: str) -> float:
    """argparse type for `--ratio`: a sparsity in percent, strictly between 0 and 100."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 < number < 100:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 100, got {value}")
    return number


def unit_fraction(value: str) -> float:
    """argparse type for `--keep-ratio`: a fraction in (0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def ratio_label(ratio: float) -> str:
    """File-name form of a ratio: `90` for 90.0, `92.5` otherwise (the original names use ints)."""
    return str(int(ratio)) if float(ratio).is_integer() else f"{ratio:g}"


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every script shares (DESIGN.md contract 6)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="dataset name; loads configs/<dataset>.yaml")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="config YAML to use instead of configs/<dataset>.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted keys, YAML-typed (e.g. --set train.lr=1e-4); repeatable")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="dataset root; overrides $DISPARSE_DATA and the config's data_root")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run; auto picks CUDA when available")
    parser.add_argument("--seed", type=int, default=0, help="seed for Python, NumPy, torch and the data order")
    return parser


def config_from_args(args: argparse.Namespace) -> dict:
    return load_config(dataset=args.dataset, config_file=args.config, overrides=args.overrides,
                       data_root=args.data_root)


def run_main(main: Callable[[], object]) -> None:
    """Run `main`; turn user errors into `error: <one line>` on stderr and exit status 2."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


SALIENCY_MODES = ("batch_stats", "train", "eval")


def add_saliency_arguments(parser: argparse.ArgumentParser, num_batches_default: int | None = None,
                           saliency_default_help: str = "the config's pruning.saliency",
                           num_batches_default_help: str = "the config's pruning.num_batches") -> None:
    """The scoring flags shared by create_pruned_net, iou_analysis and static_similarity."""
    default = num_batches_default_help if num_batches_default is None else num_batches_default
    parser.add_argument("--num_batches", "--num-batches", dest="num_batches", type=int,
                        default=num_batches_default, metavar="N",
                        help=f"train batches to accumulate saliency over (default: {default})")
    parser.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=None, metavar="B",
                        help="batch size of the saliency batches (default: the config's pruning.batch_size)")
    parser.add_argument("--saliency", default=None, metavar="NAME",
                        help="saliency method (snip, grad_weight2, magnitude, random; prune_utils.saliency) "
                             f"(default: {saliency_default_help})")
    parser.add_argument("--saliency_mode", "--saliency-mode", "--scoring-mode", dest="saliency_mode",
                        choices=SALIENCY_MODES, default="batch_stats",
                        help="network mode while scoring: batch_stats = batch-statistic BN, no dropout "
                             "(deterministic); train = the original's (dropout on, seeded); eval = running BN stats")
