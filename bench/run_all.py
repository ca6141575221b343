"""Run every benchmark, one after the other, and collect their Markdown tables (`make bench`).

Each script runs in its own process (so one's memory and thread settings never leak into the next) with the
flags given here passed on: the CPU defaults by default, `--device cuda --full` for the paper's sizes on a
GPU. The tables are printed as they come and, with `--out`, written to one Markdown file.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "scoring": "bench_scoring.py",
    "masks": "bench_masks.py",
    "train_step": "bench_train_step.py",
    "checkpoint_size": "bench_checkpoint_size.py",
    "pruning_run": "bench_pruning_run.py",
}
ALWAYS_FULL = {"pruning_run"}     # runs the full net as the tool does: takes no --full


def run(name: str, flags: list[str]) -> tuple[int, str, float]:
    """(exit status, captured stdout, seconds) of one benchmark; its output is echoed line by line."""
    command = [sys.executable, str(HERE / SCRIPTS[name]), *flags]
    print(f"$ {' '.join(['python', 'bench/' + SCRIPTS[name], *flags])}", flush=True)
    start = time.perf_counter()
    lines = []
    with subprocess.Popen(command, cwd=HERE.parent, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    return proc.returncode, "".join(lines), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="passed to every benchmark (default: auto)")
    parser.add_argument("--full", action="store_true",
                        help="the paper's full-size net at the paper's crop and batch (for a GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, passed on (default: 0 = torch's)")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS),
                        help="run only these benchmarks (default: all)")
    parser.add_argument("--out", default=None, help="also write all tables to this Markdown file")
    args = parser.parse_args()
    outputs, failed = [], []
    for name in args.only:
        flags = ["--device", args.device, "--threads", str(args.threads)]
        flags += ["--full"] if args.full and name not in ALWAYS_FULL else []
        code, text, seconds = run(name, flags)
        outputs.append(f"<!-- bench/{SCRIPTS[name]} {' '.join(flags)}: {seconds:.0f} s -->\n{text}")
        print(f"[{name}: {'ok' if code == 0 else f'failed, exit {code}'}, {seconds:.0f} s]\n", flush=True)
        if code:
            failed.append(name)
    if args.out:
        Path(args.out).write_text("\n".join(outputs), encoding="utf-8")
    if failed:
        sys.exit(f"error: benchmark(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
