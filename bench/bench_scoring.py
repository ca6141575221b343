"""Saliency scoring: one shared forward per batch vs one forward per task (the original's way).

`prune_utils.saliency.compute_scores(..., shared_forward=True)` forwards each batch once and takes one
`autograd.grad` per task; `shared_forward=False` forwards once per task, as the original does. Both run on
the same net, the same random batch and in `mode="batch_stats"` (no dropout), so they compute the same scores
(checked below) and differ only in how many forwards they pay for.

Why two timings: a `compute_scores` call also deep-copies the net and re-draws it Xavier-normal (the SNIP
probe), a fixed cost per call that has nothing to do with forwards. "1 batch" is one whole call; "per batch"
is the marginal cost of one more batch ((time with N batches - time with 1) / (N - 1), paired per round),
which is what 50-batch scoring pays 50 times. The targets are about the per-batch cost.

Peak memory: on the CPU each variant runs once in its own process and reports its peak RSS (and the RSS
before scoring, so the increment is the scoring's own); on CUDA `torch.cuda.max_memory_allocated` around
one call in this process.
"""
from __future__ import annotations

import argparse
import statistics
import time

# common first: it sets OMP_WAIT_POLICY before torch loads OpenMP, and puts the repository on sys.path
from common import (DATASETS, Workload, base_parser, child_args, cuda_peak_mib, current_rss_mib, fake_batch,  # isort: skip
                    interleaved_samples, machine_line, peak_rss_of, print_table, ratio, report_child, reset_peak_rss,
                    start, workload)
import torch

from engine.losses import MultiTaskLoss

TARGET_SPEEDUP = {2: 1.25, 5: 1.8}          # developers' guide, per batch
VARIANTS = {"shared": True, "per_task": False}


def score(work: Workload, model: torch.nn.Module, batch: dict, loss: MultiTaskLoss, shared: bool,
          num_batches: int, device: torch.device) -> dict:
    """One `compute_scores` call over `num_batches` copies of `batch` (SNIP, fixed seed, no progress bar)."""
    from prune_utils.saliency import compute_scores
    return compute_scores(model, [batch], loss, list(work.tasks), method="snip", num_batches=num_batches,
                          device=device, generator=0, shared_forward=shared, mode="batch_stats", progress=False)


def max_rel_diff(a: dict, b: dict) -> float:
    """Largest |a - b| / max|a| over every task's scores: how far the two paths disagree (float rounding)."""
    worst = 0.0
    for task in a:
        for name in a[task]:
            x, y = a[task][name], b[task][name]
            worst = max(worst, float((x - y).abs().max()) / max(float(x.abs().max()), 1e-30))
    return worst


def run_child(args: argparse.Namespace, device: torch.device) -> None:
    """`--child DATASET:VARIANT`: build everything, note the RSS, score one batch, report (own process)."""
    dataset, variant = args.child.split(":")
    work = workload(dataset, args, "pruning")
    model, loss = work.model(device), work.loss()
    batch = fake_batch(work.tasks, work.batch, work.crop, device, args.seed)
    reset_peak_rss()
    before = current_rss_mib()
    start_time = time.perf_counter()
    score(work, model, batch, loss, VARIANTS[variant], 1, device)
    report_child(base_rss_mib=before, seconds=time.perf_counter() - start_time)


def bench(label: str, dataset: str, args: argparse.Namespace, device: torch.device) -> tuple[list, list]:
    """(time row, memory row) of one task set."""
    work = workload(dataset, args, "pruning")
    print(f"{label}: {work.describe()}", flush=True)
    model, loss = work.model(device), work.loss()
    batch = fake_batch(work.tasks, work.batch, work.crop, device, args.seed)
    n = args.batches
    diff = max_rel_diff(score(work, model, batch, loss, True, 1, device),
                        score(work, model, batch, loss, False, 1, device))
    fns = {f"{v}@{k}": (lambda s=s, k=k: score(work, model, batch, loss, s, k, device))
           for v, s in VARIANTS.items() for k in (1, n)}
    samples = interleaved_samples(fns, device, args.repeats, warmup=0)
    one = {v: statistics.median(samples[f"{v}@1"]) for v in VARIANTS}
    per = {v: statistics.median([(a - b) / (n - 1) for a, b in zip(samples[f"{v}@{n}"], samples[f"{v}@1"])])
           for v in VARIANTS}
    target = TARGET_SPEEDUP.get(len(work.tasks))
    speed = per["per_task"] / per["shared"]
    time_row = [label, f"{one['shared']:.2f}", f"{one['per_task']:.2f}", ratio(one["per_task"], one["shared"]),
                f"{per['shared']:.2f}", f"{per['per_task']:.2f}", f"{speed:.2f}x",
                f">= {target}x: {'met' if speed >= target else 'MISSED'}" if target else "-", f"{diff:.1e}"]
    if device.type == "cuda":
        peaks = {v: cuda_peak_mib(lambda s=s: score(work, model, batch, loss, s, 1, device), device)
                 for v, s in VARIANTS.items()}
        mem_row = [label, "CUDA max_memory_allocated above the net", f"{peaks['shared']:.0f}",
                   f"{peaks['per_task']:.0f}", ratio(peaks["per_task"], peaks["shared"])]
    else:
        base, peaks = {}, {}
        for v in VARIANTS:
            peaks[v], info = peak_rss_of(child_args(args, f"{dataset}:{v}"))
            base[v] = info["base_rss_mib"]
        inc = {v: peaks[v] - base[v] for v in VARIANTS}
        mem_row = [label, f"peak RSS {peaks['shared']:.0f} / {peaks['per_task']:.0f} (before scoring "
                   f"{base['shared']:.0f} / {base['per_task']:.0f})", f"{inc['shared']:.0f}",
                   f"{inc['per_task']:.0f}", ratio(inc["per_task"], inc["shared"])]
    return time_row, mem_row


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], width=0.25, crop=129, batch=2, repeats=5)
    parser.add_argument("--batches", type=int, default=3,
                        help="batches N of the long call; per-batch time = (t(N) - t(1)) / (N - 1) (default: %(default)s)")
    args = parser.parse_args()
    device = start(args)
    if args.child:
        run_child(args, device)
        return
    if args.batches < 2:
        parser.error("--batches must be at least 2")
    print(machine_line(device), flush=True)
    times, mems = [], []
    for label, dataset in DATASETS.items():
        time_row, mem_row = bench(label, dataset, args, device)
        times.append(time_row)
        mems.append(mem_row)
    print_table(f"Scoring time, shared forward vs one forward per task (s, median of {args.repeats}, interleaved)",
                ["tasks", "1 batch shared", "1 batch per-task", "speedup", "per batch shared",
                 "per batch per-task", "speedup per batch", "target", "max rel. score diff"], times)
    print_table("Scoring peak memory, one batch (MiB)",
                ["tasks", "measured", "shared: scoring's own", "per-task: scoring's own", "per-task / shared"], mems)


if __name__ == "__main__":
    main()
