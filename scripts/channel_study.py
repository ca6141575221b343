#!/usr/bin/env python3
"""Channel-pruning study on the synthetic set: Δm against measured latency at matched MACs, several seeds.

Settings (`BASELINE_SETTINGS`): the shared-scene dense baselines of the issue-17 study's first design (width
1/16, 48x48 crops, batch 8, 320 train / 80 test images of 96x128, 600 steps at lr 2e-3 decayed by 0.2 after
400: where its pilots' dense baselines plateaued), fixed here so that docs/RESULTS.md's channel table stays
reproducible whatever that study's design becomes. For every seed s: the dense baseline. Then for every MACs target
R (default 50 and 70 % removed) and every channel method (disparse_channel, channel_snip, channel_taylor,
channel_magnitude, uniform): prune seed s's trained baseline (`create_pruned_net.py --from final_...baseline
--macs-ratio R`: every method removes the same fraction of the MACs, within 1 point), fine-tune the smaller
dense net (`launch_training.py`, `--finetune-iters` steps at `--finetune-lr`, the baseline's final rate),
and evaluate the final weights (no selection on the test split) against seed s's baseline
(`eval_pruned_net.py --baseline-metrics`: Δm, positive = better). Last, every net's batch-1 latency is
measured in this one process, one thread, all nets interleaved round by round (so machine load hits them
alike), and the table (mean ± std over seeds), a JSON file and a plot of Δm against latency are written.

  .venv/bin/python scripts/channel_study.py --seeds 0 1 2 --targets 50 70 --dest runs/channel_study

Resumable: a step whose output exists is skipped, an interrupted training continues with --resume, measured
latencies are kept in {dest}/latency.json. The metrics are reproducible from the seeds (deterministic CPU
training); latencies are measurements and vary with the machine.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import MAIN_METRICS, ROOT, Pipeline, load_metrics, mean_std_table  # noqa: E402

sys.path.insert(0, str(ROOT))
from engine.cli import image_size  # noqa: E402

METHODS = ("disparse_channel", "channel_snip", "channel_taylor", "channel_magnitude", "uniform")
BASELINE = "synthetic_baseline"
BASELINE_STEPS = 600
# `--set` items of every run (baseline and fine-tuning): the design named in the docstring.
BASELINE_SETTINGS = (
    "model.width_mult=0.0625", "data.crop_h=48", "data.crop_w=48", "data.batch_size=8", "data.test_batch_size=8",
    "data.num_workers=0", "data.image_shape=[96,128]", "synthetic.size=[96,128]", "synthetic.n_train=320",
    "synthetic.n_test=80", "synthetic.seed=0", "train.lr=0.002", "train.lr_decay_every=400", "train.lr_decay_rate=0.2",
    "train.save_every=150", "train.log_every=20", "dynamic.end=450", "dynamic.interval=24", "pruning.num_batches=4")
FINETUNE_LR = 0.002 * 0.2      # the baseline's final rate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="runs/channel_study", help="folder for every run (one subfolder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["50", "70"], help="percent of the MACs removed")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--finetune-iters", type=int, default=200, help="training iterations after pruning")
    parser.add_argument("--finetune-lr", type=float, default=FINETUNE_LR,
                        help="constant learning rate of the fine-tuning (default: the baseline's final rate)")
    parser.add_argument("--latency-size", type=image_size, default=(384, 512), metavar="HxW",
                        help="input size of the latency measurement (batch 1)")
    parser.add_argument("--latency-rounds", type=int, default=15, help="timed passes per net (median)")
    parser.add_argument("--jobs", type=int, default=2, help="independent steps run at the same time (one thread each)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also write the plot here (e.g. docs/...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override after the baseline settings (e.g. train.max_iters=50 for a quick run)")
    parser.add_argument("--data-root", default=None, help="synthetic data folder (default: {dest}/data/shared)")
    args = parser.parse_args(argv)
    args.data_root = args.data_root or str(Path(args.dest) / "data" / "shared")
    return args


def baseline_settings(args: argparse.Namespace) -> list[str]:
    """The baseline design's `--set` items, one validation at the end, then the command line's."""
    return [*BASELINE_SETTINGS, f"train.max_iters={BASELINE_STEPS}", f"train.val_every={BASELINE_STEPS}",
            *args.overrides]


def pipeline(args: argparse.Namespace, seed: int) -> Pipeline:
    return Pipeline(argparse.Namespace(dest=str(Path(args.dest) / f"seed{seed}"), ratio=None, iters=None, seed=seed,
                                       overrides=baseline_settings(args), data_root=args.data_root, jobs=args.jobs))


def train(pipe: Pipeline, method: str, *flags: str) -> None:
    """Train unless `final_` exists; continue an interrupted run (its `last_`) with --resume."""
    name = BASELINE if method == "baseline" else f"synthetic_{method}_{flags[flags.index('--ratio') + 1]}"
    if (pipe.dest / f"final_{name}.pth").is_file():
        return
    pipe.train(method, *flags, resume=(pipe.dest / f"last_{name}.pth").is_file())


def evaluate_final(pipe: Pipeline, method: str, name: str, *flags: str) -> None:
    """Evaluate `final_{name}.pth` (no selection on the test split) -> metrics_final_{name}.json."""
    if not (pipe.dest / f"metrics_final_{name}.json").is_file():
        pipe.evaluate(method, "--checkpoint", str(pipe.dest / f"final_{name}.pth"), "--latency-runs", "0", *flags)


def baseline_chain(pipe: Pipeline) -> None:
    train(pipe, "baseline")
    evaluate_final(pipe, "baseline", BASELINE)


def pruned_chain(pipe: Pipeline, method: str, target: str, args: argparse.Namespace) -> None:
    name = f"synthetic_{method}_{target}"
    if not (pipe.dest / f"{name}.pth").is_file():
        pipe.run(f"prune {method} {target}", "create_pruned_net.py", "--method", method, "--macs-ratio", target,
                 "--from", str(pipe.dest / f"final_{BASELINE}.pth"), "--dest", str(pipe.dest))
    train(pipe, method, "--ratio", target, "--max-iters", str(args.finetune_iters), "--set",
          f"train.lr={args.finetune_lr}", "--set", f"train.val_every={args.finetune_iters}")
    evaluate_final(pipe, method, name, "--baseline-metrics", str(pipe.dest / f"metrics_final_{BASELINE}.json"))


def measure_latencies(args: argparse.Namespace, nets: dict[str, Path]) -> dict[str, float]:
    """Median batch-1 latency (ms) of every net, one thread, the nets interleaved round by round."""
    import torch

    from engine.config import load_config
    from engine.latency import measure_latency
    from methods.pipeline import open_net

    cache_path = Path(args.dest) / "latency.json"
    settings = {"size": list(args.latency_size), "rounds": args.latency_rounds, "threads": 1}
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if cache.get("settings") == settings and set(nets) <= set(cache.get("ms", {})):
        return cache["ms"]
    torch.set_num_threads(1)
    config = load_config("synthetic", overrides=baseline_settings(args), data_root=args.data_root)
    models = {key: open_net(path, config).model.eval() for key, path in nets.items()}
    samples: dict[str, list[float]] = {key: [] for key in models}
    for key, model in models.items():                      # warm-up: allocation, oneDNN primitives
        measure_latency(model, args.latency_size, runs=1, warmup=1)
    keys = list(models)
    for round_ in range(args.latency_rounds):
        order = keys[round_ % len(keys):] + keys[:round_ % len(keys)]   # a different net goes first each round
        for key in order:
            samples[key].append(measure_latency(models[key], args.latency_size, runs=1, warmup=0)["median_ms"])
    ms = {key: statistics.median(values) for key, values in samples.items()}
    cache_path.write_text(json.dumps({"settings": settings, "ms": ms, "samples": samples}, indent=1) + "\n")
    return ms


def aggregate(args: argparse.Namespace, latency: dict[str, float]) -> tuple[str, dict]:
    """Mean ± std over seeds per (target, method): main metrics, MACs/params removed, latency, Δm."""
    header = (["MACs↓ target", "method"] + [label for *_, label in MAIN_METRICS]
              + ["MACs↓%", "params↓%", "latency ms", "Δm%"])
    rows = []
    groups = [("0", "baseline", BASELINE)] + [(t, m, f"synthetic_{m}_{t}") for t in args.targets for m in args.methods]
    for target, method, name in groups:
        runs = [load_metrics(Path(args.dest) / f"seed{s}", f"final_{name}") for s in args.seeds]
        columns = [(label, [scale * run[task][key] for run in runs]) for task, key, scale, label in MAIN_METRICS]
        columns += [("MACs↓%", [100 * run["cost"].get("macs_removed", 0.0) for run in runs]),
                    ("params↓%", [100 * run["cost"].get("params_removed", 0.0) for run in runs]),
                    ("latency ms", [latency[f"seed{s}/{name}"] for s in args.seeds]),
                    ("Δm%", [run.get("delta_m", 0.0) for run in runs])]
        rows.append(([target, method], f"{method}@{target}", columns))
    return mean_std_table(header, rows)


def plot(data: dict, args: argparse.Namespace, paths: list[Path]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fileio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    base = data["baseline@0"]
    ax.errorbar(base["latency ms"]["mean"], 0.0, xerr=base["latency ms"]["std"], fmt="k*", markersize=12,
                label="dense baseline")
    markers = dict(zip(METHODS, "osD^v"))
    for method in args.methods:
        points = [data[f"{method}@{t}"] for t in args.targets]
        xs = [p["latency ms"]["mean"] for p in points]
        ys = [p["Δm%"]["mean"] for p in points]
        ax.errorbar(xs, ys, xerr=[p["latency ms"]["std"] for p in points], yerr=[p["Δm%"]["std"] for p in points],
                    marker=markers[method], linestyle="-", capsize=3, label=method)
        for x, y, t in zip(xs, ys, args.targets):
            ax.annotate(f"-{t}%", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"measured latency, ms (batch 1, {args.latency_size[0]}x{args.latency_size[1]}, 1 thread; "
                  f"mean over seeds)")
    ax.set_ylabel("Δm vs the dense baseline, % (mean ± std)")
    ax.set_title(f"Channel pruning on the synthetic set: {len(args.seeds)} seeds, MACs removed "
                 f"{', '.join(args.targets)} %", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    for path in paths:
        atomic_write_bytes(path, buffer.getvalue())


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    pipes = {seed: pipeline(args, seed) for seed in args.seeds}
    ready = {seed: threading.Event() for seed in args.seeds}     # the seed's baseline is trained and evaluated

    def baseline(seed: int) -> None:
        try:
            baseline_chain(pipes[seed])
        finally:
            ready[seed].set()                                # also when it failed: its chains then stand down

    def pruned(seed: int, method: str, target: str) -> None:
        ready[seed].wait()
        if (pipes[seed].dest / f"metrics_final_{BASELINE}.json").is_file():
            pruned_chain(pipes[seed], method, target, args)

    # one pool: the baselines first, then the pruned nets seed by seed, each waiting for its seed's baseline
    next(iter(pipes.values())).parallel([lambda s=s: baseline(s) for s in args.seeds]
                                        + [lambda s=s, m=m, t=t: pruned(s, m, t) for s in args.seeds
                                           for t in args.targets for m in args.methods])
    trained = time.perf_counter()
    nets = {f"seed{s}/{BASELINE}": pipes[s].dest / f"final_{BASELINE}.pth" for s in args.seeds}
    nets.update({f"seed{s}/synthetic_{m}_{t}": pipes[s].dest / f"final_synthetic_{m}_{t}.pth"
                 for s in args.seeds for t in args.targets for m in args.methods})
    latency = measure_latencies(args, nets)
    table, data = aggregate(args, latency)
    dest = Path(args.dest)
    (dest / "channel_study.md").write_text(table + "\n")
    (dest / "channel_study.json").write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()},
                                                         "results": data}, indent=1) + "\n")
    plot(data, args, [dest / "channel_study.png"] + ([Path(args.plot)] if args.plot else []))
    elapsed = time.perf_counter() - start
    print(f"\n=== channel study: seeds {args.seeds}, MACs removed {args.targets} %, fine-tuned {args.finetune_iters} "
          f"iterations at lr {args.finetune_lr:g} (synthetic test split, final weights; Δm against each seed's "
          f"baseline)")
    print(table)
    print(f"\ntraining and evaluation {trained - start:.0f} s, latency {elapsed - (trained - start):.0f} s; "
          f"total {elapsed:.0f} s; outputs under {dest}/")


if __name__ == "__main__":
    main()
