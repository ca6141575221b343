#!/usr/bin/env python3
"""Small-scale reproduction on the synthetic set: DiSparse static and dynamic vs SNIP vs random, several seeds.

For every seed: a dense baseline; then for every ratio: prune (disparse_static, snip, random), train
with fixed masks, train disparse_dynamic from scratch, evaluate all against that seed's baseline.
Aggregates mean ± std over seeds per method, ratio and metric into a Markdown table (docs/RESULTS.md
is written from its output) and a JSON file.

  .venv/bin/python scripts/synthetic_study.py --seeds 0 1 2 --ratios 90 70 --dest runs/study
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import DYNAMIC_METHODS, MAIN_METRICS, PRUNED_METHODS, Pipeline, load_metrics, mean_std_table  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="runs/study", help="folder for every run (one subfolder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", nargs="+", default=["90", "70"])
    parser.add_argument("--iters", type=int, default=None, help="training iterations per net (default: config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-root", default=None)
    return parser.parse_args()


def run_seed(args: argparse.Namespace, seed: int) -> None:
    pipe = Pipeline(argparse.Namespace(dest=str(Path(args.dest) / f"seed{seed}"), ratio=None, iters=args.iters,
                                       seed=seed, overrides=args.overrides, data_root=args.data_root))
    baseline = str(pipe.dest / "metrics_synthetic_baseline.json")
    if not Path(baseline).is_file():
        pipe.train("baseline")
        pipe.evaluate("baseline")
    for ratio in args.ratios:
        flags = ["--ratio", ratio]
        for method in PRUNED_METHODS + DYNAMIC_METHODS:
            if (pipe.dest / f"metrics_synthetic_{method}_{ratio}.json").is_file():
                continue   # finished earlier: the study resumes where it stopped
            if method in PRUNED_METHODS:
                pipe.run(f"prune {method} {ratio}", "create_pruned_net.py", "--method", method, *flags,
                         "--dest", str(pipe.dest))
            pipe.train(method, *flags)
            pipe.evaluate(method, *flags, "--baseline-metrics", baseline)


def aggregate(dest: Path, seeds: list[int], ratios: list[str]) -> tuple[str, dict]:
    """Mean ± std over seeds of each main metric, sparsity and Δm, per (ratio, method)."""
    header = ["ratio", "method"] + [label for *_, label in MAIN_METRICS] + ["sparsity%", "Δm%"]
    groups = [("0", "baseline", "synthetic_baseline")]
    groups += [(r, m, f"synthetic_{m}_{r}") for r in ratios for m in PRUNED_METHODS + DYNAMIC_METHODS]
    rows = []
    for ratio, method, name in groups:
        runs = [load_metrics(dest / f"seed{s}", name) for s in seeds]
        columns = [(t, k, scale, label) for t, k, scale, label in MAIN_METRICS]
        columns += [(None, "sparsity", 100, "sparsity%"), (None, "delta_m", 1, "Δm%")]
        rows.append(([ratio, method], f"{method}@{ratio}",
                     [(label, [scale * (run[task][key] if task else run.get(key, 0.0)) for run in runs])
                      for task, key, scale, label in columns]))
    return mean_std_table(header, rows)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    for seed in args.seeds:
        run_seed(args, seed)
    table, data = aggregate(Path(args.dest), args.seeds, args.ratios)
    (Path(args.dest) / "study.md").write_text(table + "\n")
    (Path(args.dest) / "study.json").write_text(json.dumps(data, indent=2))
    print(f"\nseeds {args.seeds}, {time.perf_counter() - start:.0f} s\n{table}")


if __name__ == "__main__":
    main()
