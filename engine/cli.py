"""What every command-line tool shares: the common flags, argument types, --progress, clean errors.

Every entry point builds its parser with `base_parser` and ends in `run_main`, so that a user error (a
`ValueError` subclass such as `ConfigError`, `CheckpointError`, `DataError`) or an OS failure (a missing
file, no permission, a full disk: `OSError`, `fileio.WriteError`) ends as one line `error: <message>` on
stderr and exit status 2, never as a traceback (docs/RELIABILITY.md). The tools' `main(argv)`
returns 0 on success and, like argparse for a bad flag, raises `SystemExit(2)` on a user error, so
scripts and tests can call them in-process.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
import threading
import time
from typing import Callable, NoReturn

from .config import add_config_arguments
from .distributed import launch_rank

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


def image_size(text: str) -> tuple[int, int]:
    """argparse type for an image size `HxW` (e.g. 321x321); at least 9x9, so the 1/8-resolution outputs exist."""
    h, _, w = text.partition("x")
    try:
        size = (int(h), int(w))
    except ValueError:
        raise argparse.ArgumentTypeError(f"an image size is HxW, e.g. 321x321, got {text!r}") from None
    if min(size) < 9:
        raise argparse.ArgumentTypeError(f"an image size must be at least 9x9 (outputs are at 1/8), got {text!r}")
    return size


def unit_fraction(value: str) -> float:
    """argparse type for `--keep-ratio`: a fraction in (0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def require_positive(flags: dict[str, int | None]) -> None:
    """One-line ValueError for a count flag given as 0 or less (`require_positive({"--batch_size": 0})`); None
    means "not given". Checked by the tools before any work, so that a 0 is never read as "unset" and
    silently replaced by the config's value."""
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")


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


PEER_REPORT_GRACE_S = 5.0   # how long a rank other than 0 lets rank 0 report a failure first (see run_main)


def error_line(exc: BaseException) -> str:
    """One line for a failure: the first line of the message; an OS error as `path: reason`."""
    if isinstance(exc, OSError) and type(exc).__str__ is OSError.__str__ and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_main(main: Callable[[], object]) -> int:
    """Run `main`; 0 on success. A user error or an OS failure (a `ValueError` such as `ConfigError`, or an
    `OSError` such as a missing file, no permission, a full disk) prints `error: <one line>` and exits 2;
    Ctrl-C exits 130.

    Under torchrun, rank 0 reports at once. Another rank that fails first waits `PEER_REPORT_GRACE_S`:
    when rank 0 failed too (the same user error, or the loss of a peer), torchrun stops this rank meanwhile,
    so the error is printed once, by rank 0, and never after another rank's traceback; when rank 0 is still
    running, this rank's own error follows, as `error: rank N: ...`.
    """
    rank, world = launch_rank()
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if rank > 0 and world > 1:
            time.sleep(PEER_REPORT_GRACE_S)
        if not isinstance(exc, (ValueError, OSError)):
            raise
        prefix = f"rank {rank}: " if rank > 0 and world > 1 else ""
        print(f"error: {prefix}{error_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return 0


def exit_process(code: int) -> NoReturn:
    """End a tool's process with status `code` (its `if __name__ == "__main__"` line, not `main`).

    The interpreter's own teardown is skipped: after a tool's work only memory is left to release, and
    Python would spend a noticeable part of a pruning run's finish walking torch's object graph (several
    garbage-collection passes) and freeing the net tensor by tensor, where the kernel frees the whole
    address space at once. What must happen still happens first: every atexit handler (log handlers,
    multiprocessing's reaping of loader workers, torch's own), then stdout and stderr are flushed.
    Files the tools write are closed by their own `with` blocks before this point. While another
    non-daemon thread is alive the normal exit runs instead, since Python would wait for that thread."""
    gc.freeze()
    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):     # a closed pipe or stream: nothing left to deliver
            pass
    os._exit(code)
