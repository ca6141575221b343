"""What every command-line tool shares: the common flags, argument types, --progress, clean errors.

Every entry point builds its parser with `base_parser` and ends in `run_main`, so that a user error (a
`ValueError` subclass such as `ConfigError`, `CheckpointError`, `DataError`, or a missing file) ends as
one line `error: <message>` on stderr and exit status 2, never as a traceback. The tools' `main(argv)`
returns 0 on success and, like argparse for a bad flag, raises `SystemExit(2)` on a user error, so
scripts and tests can call them in-process.
"""
from __future__ import annotations

import argparse
import gc
import sys
from typing import Callable, NoReturn

from .config import add_config_arguments

PROGRESS_CHOICES = ("auto", "on", "off")
SALIENCY_MODES = ("batch_stats", "train", "eval")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout (the tools' docstrings) and show every default."""


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


def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every tool takes (docs/ARCHITECTURE.md contract 6)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run; auto picks CUDA when available")
    parser.add_argument("--seed", type=int, default=0, help="seed for Python, NumPy, torch and the data order")
    return parser


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=PROGRESS_CHOICES, default="auto",
                        help="tqdm progress bars: auto = only when stderr is a terminal")


def progress_setting(choice: str) -> bool | None:
    """--progress as the tri-state the library takes: None = a bar when stderr is a terminal."""
    return {"auto": None, "on": True, "off": False}[choice]


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


def run_main(main: Callable[[], object]) -> int:
    """Run `main`; 0 on success. A user error prints `error: <one line>` and exits 2; Ctrl-C exits 130."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


def exit_process(code: int) -> NoReturn:
    """End a tool's process with status `code` (its `if __name__ == "__main__"` line, not `main`).

    Everything alive is frozen out of the garbage collector first: the interpreter's exit otherwise walks
    torch's whole object graph in several collection passes, which took 1.5-3 s on a busy 2-core machine.
    atexit handlers, stream flushing and the finalisers of objects freed at exit still run."""
    gc.freeze()
    sys.exit(code)
