#!/usr/bin/env python3
"""The demo pipeline (`make demo`): the whole DiSparse workflow on the generated synthetic dataset, on CPU.

1. prune at 90 % sparsity with DiSparse (per-task SNIP + unanimous arbiter); this first step also
   generates the synthetic scenes (first use only);
2. then, `--jobs` at a time and longest first: train DiSparse dynamic sparse training at 90 % from
   scratch; remove 50 % of the MACs by structured DiSparse channel pruning (`disparse_channel`: a smaller
   dense net) and train it; train the DiSparse net; train and evaluate a small dense baseline; prune at
   90 % with the SNIP and random baselines and train those; per-layer mask IoU across tasks and
   Meta-Sparse task similarity (of fresh nets: no step waits for another chain);
3. evaluate every pruned net (Δm against the baseline, MACs removed);
4. print one comparison table.

Every step is a real command-line call (printed as it runs), so the demo doubles as a usage example.
Outputs go under one run folder (default runs/demo); each step's output is in {dest}/logs/demo_*.log.

Speed on small CPUs: every step runs with one intra-op thread, and the independent chains (prune ->
train per method) run `--jobs` at a time; only the evaluations wait for the baseline's metrics (Δm). Two single-threaded processes use two cores
fully, whereas one two-threaded process stalls badly whenever anything else wants a core (OpenMP
threads spin-wait on each other), which made the demo several times slower on busy machines.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRUNED_METHODS = ("disparse_static", "snip", "random")
DYNAMIC_METHODS = ("disparse_dynamic",)
CHANNEL_METHODS = ("disparse_channel",)
MAIN_METRICS = (("seg", "mIoU", 100, "mIoU%"), ("seg", "Pixel Acc", 100, "PixAcc%"),
                ("sn", "Angle Mean", 1, "SN mean°"), ("sn", "Angle 22.5", 1, "SN ≤22.5°%"),
                ("depth", "abs_err", 1, "Depth abs"), ("depth", "sigma_1.25", 1, "δ<1.25%"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="runs/demo", help="run folder for every output")
    parser.add_argument("--ratio", default="90", help="target sparsity in percent")
    parser.add_argument("--macs-ratio", default="50", help="percent of the MACs the channel-pruned net removes")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per net (default: config)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to every step (e.g. model.width_mult=0.0625)")
    parser.add_argument("--data-root", default=None, help="synthetic data folder (default: the config's)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="independent chains run at the same time (one thread each)")
    return parser.parse_args()


class Pipeline:
    """Runs the steps as subprocesses with the shared flags; stops at the first failure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dest = Path(args.dest)
        self.common = ["--dataset", "synthetic", "--device", "cpu", "--seed", str(args.seed)]
        if args.data_root:
            self.common += ["--data-root", args.data_root]
        for item in args.overrides:
            self.common += ["--set", item]
        self.iters = ["--max-iters", str(args.iters)] if args.iters else []
        self.ratio = args.ratio
        self.jobs = max(1, getattr(args, "jobs", 1))
        self.timings: list[tuple[str, float]] = []
        self.env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                    "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}

    def run(self, label: str, script: str, *flags: str) -> None:
        """One step; its output goes to {dest}/logs/demo_<label>.log (tail shown if it fails)."""
        cmd = [sys.executable, script, *self.common, *flags]
        log = self.dest / "logs" / f"demo_{label.replace(' ', '_')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"$ {shlex.join(['python', *cmd[1:]])}", flush=True)
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as handle:
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        self.timings.append((label, seconds))
        if proc.returncode != 0:
            tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
            raise SystemExit(f"{tail}\ndemo step failed ({label}), exit code {proc.returncode}; log: {log}")
        print(f"  done: {label} ({seconds:.1f} s)", flush=True)

    def parallel(self, chains: list) -> None:
        """Run independent chains (callables) `jobs` at a time; the first failure stops the demo."""
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for future in [pool.submit(chain) for chain in chains]:
                future.result()

    def train(self, method: str, *flags: str, resume: bool = False) -> None:
        """Train from scratch, replacing an earlier run of the name (the demo re-runs into one folder), or
        continue an interrupted one (`resume`)."""
        self.run(f"train {method}", "launch_training.py", "--method", method, "--dest", str(self.dest),
                 "--no-final-eval", "--resume" if resume else "--overwrite", *self.iters, *flags)

    def evaluate(self, method: str, *flags: str) -> None:
        self.run(f"evaluate {method}", "eval_pruned_net.py", "--method", method, "--dest", str(self.dest), *flags)


def load_metrics(dest: Path, name: str) -> dict:
    return json.loads((dest / f"metrics_{name}.json").read_text())


def comparison_table(dest: Path, rows: list[tuple[str, str]]) -> str:
    """Method × main metrics × sparsity × MACs removed × Δm, from the evaluations' metrics JSON files.

    (Their measured latencies are left out: taken while other steps ran, they differ by more between nets of
    one architecture than between architectures; bench/bench_latency.py measures speed.)"""
    header = ["method"] + [label for *_, label in MAIN_METRICS] + ["sparsity%", "MACs↓%", "Δm%"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, name in rows:
        metrics = load_metrics(dest, name)
        cells = [method]
        for task, key, scale, _ in MAIN_METRICS:
            value = metrics.get(task, {}).get(key)
            cells.append("-" if value is None else f"{scale * value:.2f}")
        cost = metrics.get("cost", {})
        cells.append(f"{100 * metrics.get('sparsity', 0.0):.2f}")
        cells.append(f"{100 * cost.get('macs_removed', 0.0):.1f}")
        cells.append(f"{metrics['delta_m']:+.2f}" if "delta_m" in metrics else "0 (ref)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std_table(header: list[str], rows: list[tuple[list[str], str, list[tuple[str, list[float]]]]]
                   ) -> tuple[str, dict]:
    """A Markdown table of mean ± std over seeds and the same numbers as a dict. `rows`: (leading cells, key
    of the row in the dict, [(column label, one value per seed)])."""
    lines, data = [], {}
    for cells, key, columns in rows:
        entry = {}
        cells = list(cells)
        for label, values in columns:
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            entry[label] = {"mean": mean, "std": std, "values": values}
            cells.append(f"{mean:.2f} ± {std:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
        data[key] = entry
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines]), data


def main() -> None:
    args = parse_args()
    pipe = Pipeline(args)
    start = time.perf_counter()
    baseline_metrics = str(pipe.dest / "metrics_synthetic_baseline.json")
    ratio = ["--ratio", pipe.ratio]

    def prune(method: str) -> None:
        pipe.run(f"prune {method}", "create_pruned_net.py", "--method", method, *ratio, "--dest", str(pipe.dest))

    def channel_chain(method: str) -> None:
        pipe.run(f"prune {method}", "create_pruned_net.py", "--method", method, "--macs-ratio", args.macs_ratio,
                 "--dest", str(pipe.dest))
        pipe.train(method, "--ratio", args.macs_ratio)

    def baseline_chain() -> None:
        pipe.train("baseline")
        pipe.evaluate("baseline")

    def analysis_chain() -> None:
        pipe.run("mask IoU across tasks", "iou_analysis.py", "--dest", str(pipe.dest))
        pipe.run("Meta-Sparse task similarity", "static_similarity.py", "--sparsities", "50,90", "--num_seeds",
                 "2", "--sim_method", "masked_sals", "--dump_dir", str(pipe.dest / "subnetworks"),
                 "--table_json", str(pipe.dest / "table.json"), "--format", "markdown")

    first, *others = PRUNED_METHODS
    prune(first)             # alone: it generates the synthetic set on first use, before anything else reads it
    pipe.parallel([lambda m=m: pipe.train(m, *ratio) for m in DYNAMIC_METHODS]     # the longest chains first
                  + [lambda m=m: channel_chain(m) for m in CHANNEL_METHODS]
                  + [lambda: pipe.train(first, *ratio), baseline_chain]
                  + [lambda m=m: (prune(m), pipe.train(m, *ratio)) for m in others] + [analysis_chain])
    pipe.parallel([lambda m=m: pipe.evaluate(m, *ratio, "--baseline-metrics", baseline_metrics)
                   for m in PRUNED_METHODS + DYNAMIC_METHODS]
                  + [lambda m=m: pipe.evaluate(m, "--ratio", args.macs_ratio, "--baseline-metrics", baseline_metrics)
                     for m in CHANNEL_METHODS])

    rows = [("baseline", "synthetic_baseline")]
    rows += [(m, f"synthetic_{m}_{pipe.ratio}") for m in PRUNED_METHODS + DYNAMIC_METHODS]
    rows += [(f"{m} (-{args.macs_ratio}% MACs)", f"synthetic_{m}_{args.macs_ratio}") for m in CHANNEL_METHODS]
    table = comparison_table(pipe.dest, rows)
    (pipe.dest / "comparison.md").write_text(table + "\n")
    print("\n=== step times")
    for label, seconds in pipe.timings:
        print(f"{label:<32} {seconds:6.1f} s")
    for label in ("mask IoU across tasks", "Meta-Sparse task similarity"):
        log = pipe.dest / "logs" / f"demo_{label.replace(' ', '_')}.log"
        print(f"\n=== {label} (end of {log})")
        print("".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-8:]), end="")
    print(f"\n=== comparison at {pipe.ratio}% sparsity and {args.macs_ratio}% of the MACs removed (synthetic test split; "
          f"written to {pipe.dest / 'comparison.md'})")
    print(table)
    print("(MACs↓: multiply-accumulates physically removed; masked nets keep their dense MACs on dense kernels)")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs under {pipe.dest}/")


if __name__ == "__main__":
    main()
