"""The examples' shared command line: `--sparsity`, `--steps`, `--seed` and one choice of their own."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence


def run_from_command_line(run: Callable[..., Any], doc: str | None, argv: Sequence[str] | None, *, sparsity: float,
                          steps: int, steps_help: str, choice: str, default: str, choices: Sequence[str]) -> int:
    """Parse the flags and call `run(sparsity, <choice>, steps, seed)`; 0 for the exit status."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=sparsity,
                        help=f"pruned fraction of all prunable weights, in (0, 1) (default {sparsity})")
    parser.add_argument(f"--{choice}", default=default, choices=list(choices), help=f"default {default}")
    parser.add_argument("--steps", type=int, default=steps, help=f"{steps_help} (default {steps})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.sparsity, getattr(args, choice), args.steps, args.seed)
    return 0
