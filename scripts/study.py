#!/usr/bin/env python3
"""Does per-task saliency with an arbiter beat SNIP, and when? The paired DiSparse study (issue 17).

    .venv/bin/python scripts/study.py                  # the full study, resumable: run it again to continue
    .venv/bin/python scripts/study.py --quick          # a tiny grid (2 seeds, 90 %, few steps), ~2 minutes
    .venv/bin/python scripts/study.py --report-only    # tables and plots again from {dest}/results.json

Grid: both synthetic scene kinds (`shared` rooms, where every task follows from the same geometry, and
`disentangled` scenes, where seg, depth and normals are independent and each has its own image cue;
dataloaders/synthetic_disentangled.py) x seeds x sparsities x methods:

* the dense baseline (once per kind and seed);
* DiSparse static (per-task SNIP, one mask per task) with each arbiter: unanimous (the paper),
  intersection, majority, mean_score; DiSparse dynamic sparse training; SNIP; random pruning;
* per-layer IoU of the tasks' masks at each sparsity (iou_analysis.py --ratio), on a fresh net (the masks
  DiSparse static prunes with) and on the trained dense baseline (iou_analysis.py --from);
* the plateau check: once per kind (design plateau_check) the dense baseline trained twice as long, since
  a cosine schedule ends flat whatever its length and a flat end alone proves no plateau.

Pairing: within a kind and seed every net starts from the same initial weights (`--seed` seeds the
model before it is built, and pruning keeps the surviving initial weights) and sees the same batches
in the same order (the loaders' order depends only on the seed); every net trains for the same number
of steps and the final weights are evaluated (no selection on the test split). The data set of a kind
is the same for every seed (generator seed 0). Δm is taken against the same seed's dense baseline.

Every step is a project CLI (launch_training, create_pruned_net, eval_pruned_net, iou_analysis) run
in this process through `run_cli` (its output goes to {dest}/{kind}/seed{s}/cli_logs/), so the
study depends on the CLIs' flags and file names only. Chains (one kind and seed each) run `--jobs`
at a time in single-threaded worker processes. A finished run is marked by its metrics file; an
interrupted training continues from its last checkpoint (`--resume`), so a killed study resumes where
it stopped and ends with the numbers an uninterrupted one gives (same seeds, same numbers on CPU).
Results: {dest}/results.json (every metric of every run, the baselines' learning curves, per-layer
IoU, timings), then scripts/study_report.py writes {dest}/report/STUDY.md, contrasts.json and PNGs.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import multiprocessing
import os
import resource
import shlex
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_report  # noqa: E402
from fileio import atomic_write_json, read_json  # noqa: E402

CONFIGS = {"shared": "configs/synthetic.yaml", "disentangled": "configs/synthetic_disentangled.yaml"}
DATASET = "synthetic"                      # the configs' dataset name: it names every file
ARBITERS = ("unanimous", "intersection", "majority", "mean_score")
VARIANTS = tuple(f"disparse_static[{a}]" for a in ARBITERS) + ("disparse_dynamic", "snip", "random")
IOU_SOURCES = ("init", "trained")          # masks of a fresh net / of the trained dense baseline (Chain.iou)
# The full study (the choices are explained in docs/RESULTS.md) and the --quick smoke grid. `steps` and
# `loss_weights` are per scene kind (comparisons are within a kind); every net of a kind trains `steps` steps.
FULL = {"kinds": ["shared", "disentangled"], "seeds": [0, 1, 2, 3, 4], "ratios": [90, 95, 98],
        "variants": list(VARIANTS), "steps": {"shared": 250, "disentangled": 250}, "width": 0.0625,
        "size": [64, 80], "crop": [64, 80], "batch": 8, "lr": 2.0e-3, "weight_decay": 0.0, "schedule": "cosine",
        "warmup": 20, "dropout": 0.0, "loss_weights": {"shared": [1.0, 5.0, 1.0], "disentangled": [1.0, 5.0, 0.1]},
        "n_train": 320, "n_test": 80, "val_points": 12, "num_batches": 4, "trained_iou_saliency": "grad_weight2",
        "plateau_check": {"seed": 0, "factor": 2}}
QUICK = {**FULL, "seeds": [0, 1], "ratios": [90], "steps": {"shared": 12, "disentangled": 12}, "size": [32, 40],
         "crop": [32, 40], "warmup": 2, "n_train": 24, "n_test": 8, "val_points": 3, "num_batches": 1}


class StudyError(RuntimeError):
    """A step failed (its log's tail is in the message) or the destination holds another study."""


# --------------------------------------------------------------------------- calling the CLIs

def run_cli(module_name: str, argv: Sequence[str], log: Path) -> None:
    """Run a project CLI in this process, its output into `log`: `main(argv)` when its main takes the
    arguments, else `main()` with `sys.argv` set. A non-zero exit or an exception fails with the log's tail."""
    module = importlib.import_module(module_name)
    takes_argv = bool(inspect.signature(module.main).parameters)
    log.parent.mkdir(parents=True, exist_ok=True)
    saved = sys.argv
    with open(log, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle), \
            contextlib.redirect_stderr(handle):
        print("$ python " + shlex.join([module_name.replace(".", "/") + ".py", *argv]), flush=True)
        sys.argv = [module_name + ".py", *argv]
        try:
            result = module.main(list(argv)) if takes_argv else module.main()
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:                                   # a failed step: keep its traceback in the log
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = saved
    if code:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-12:])
        raise StudyError(f"{module_name} failed (exit {code}); log {log}:\n{tail}")


def design_flags(design: dict, kind: str, dest: Path) -> list[str]:
    """Flags every CLI of a kind gets: config, data root, and the design's sizes, loss weights and schedule.
    Study runs keep their decoded samples in memory and write no TensorBoard files (JSON-lines logs only)."""
    steps = int(design["steps"][kind])
    h, w = design["size"]
    crop_h, crop_w = design["crop"]
    weights = ",".join(f"{x:g}" for x in design["loss_weights"][kind])
    sets = {"model.width_mult": design["width"], "model.dropout": design["dropout"], "loss_weights": f"[{weights}]",
            "data.crop_h": crop_h, "data.crop_w": crop_w, "data.batch_size": design["batch"],
            "data.test_batch_size": 8, "data.num_workers": 0, "data.cache": "true",
            "data.image_shape": f"[{h},{w}]", "synthetic.size": f"[{h},{w}]", "synthetic.n_train": design["n_train"],
            "synthetic.n_test": design["n_test"], "synthetic.seed": 0, "train.lr": design["lr"],
            "train.weight_decay": design["weight_decay"],
            "train.lr_schedule": design["schedule"], "train.warmup_iters": design["warmup"],
            "train.tensorboard": "false", "train.save_every": max(1, steps // 4), "train.log_every": max(1, steps // 40),
            "dynamic.end": max(1, (3 * steps) // 4), "dynamic.interval": max(1, steps // 25),
            "pruning.num_batches": design["num_batches"]}
    flags = ["--config", str(ROOT / CONFIGS[kind]), "--data-root", str(dest / "data" / kind),
             "--device", design.get("device", "cpu")]
    for key, value in sets.items():
        flags += ["--set", f"{key}={value}"]
    return flags


def parse_variant(variant: str) -> tuple[str, str | None]:
    """`disparse_static[majority]` -> ("disparse_static", "majority"); `snip` -> ("snip", None)."""
    if variant.endswith("]"):
        method, arbiter = variant[:-1].split("[")
        return method, arbiter
    return variant, None


def run_name(method: str, ratio: float | None) -> str:
    """The network name launch_training gives a run (README: {dataset}_baseline, {dataset}_{method}_{ratio})."""
    return f"{DATASET}_baseline" if method == "baseline" else f"{DATASET}_{method}_{ratio:g}"


# --------------------------------------------------------------------------- one chain (kind, seed)

class Chain:
    """The runs of one scene kind and seed, in order: dense baseline, then every ratio x variant and the
    IoU analysis per ratio. Each run is skipped when its result file exists."""

    def __init__(self, design: dict, kind: str, seed: int, dest: Path, progress: "Progress | None" = None) -> None:
        self.design, self.kind, self.seed, self.dest = design, kind, seed, dest
        self.dir = dest / kind / f"seed{seed}"
        self.flags = design_flags(design, kind, dest) + ["--seed", str(seed)]
        self.progress = progress

    def folder(self, variant: str, factor: int = 1) -> Path:
        """A run's folder; `factor` > 1: the plateau check's longer dense baseline (`baseline_x2`)."""
        return self.dir / (variant.replace("[", "-").replace("]", "") + (f"_x{factor}" if factor > 1 else ""))

    def metrics_path(self, variant: str, ratio: float | None, factor: int = 1) -> Path:
        method, _ = parse_variant(variant)
        return self.folder(variant, factor) / f"metrics_final_{run_name(method, ratio)}.json"

    def iou_path(self, ratio: float, source: str = "init") -> Path:
        folder = f"iou{ratio:g}" if source == "init" else f"iou_{source}{ratio:g}"
        return self.dir / folder / f"{DATASET}_iou.json"

    def cli(self, module: str, label: str, *argv: str) -> float:
        start = time.perf_counter()
        run_cli(module, [*self.flags, *argv], self.dir / "cli_logs" / f"{label}.log")
        return time.perf_counter() - start

    def run(self) -> None:
        self.train_and_evaluate("baseline", None)
        for ratio in self.design["ratios"]:
            for variant in self.design["variants"]:
                self.train_and_evaluate(variant, ratio)
            for source in IOU_SOURCES:
                self.iou(ratio, source)
        if self.seed == self.design["plateau_check"]["seed"]:
            self.train_and_evaluate("baseline", None, int(self.design["plateau_check"]["factor"]))

    def iou(self, ratio: float, source: str) -> None:
        """Per-layer IoU of the tasks' masks at the keep ratio that gives `ratio` % under the arbiter:
        `init` scores a fresh net with SNIP (the masks DiSparse static prunes with), `trained` scores
        the seed's trained dense baseline with design["trained_iou_saliency"] (what the tasks use once
        learned)."""
        path = self.iou_path(ratio, source)
        if path.is_file():
            return
        extra = [] if source == "init" else [
            "--from", str(self.folder("baseline") / f"final_{run_name('baseline', None)}.pth"),
            "--saliency", self.design["trained_iou_saliency"]]
        seconds = self.cli("iou_analysis", f"iou_{source}_{ratio:g}", "--ratio", f"{ratio:g}", "--dest",
                           str(path.parent), "--no-plot", "--no-progress", *extra)
        self.report(f"IoU ({source}) at {ratio:g} %", {"iou": seconds})

    def train_and_evaluate(self, variant: str, ratio: float | None, factor: int = 1) -> None:
        """Prune (static methods), train the design's steps (`factor` times as many: the plateau check; the
        cosine schedule then anneals over the longer run), evaluate the final weights, drop the checkpoints
        no later step needs."""
        result = self.metrics_path(variant, ratio, factor)
        if result.is_file():
            return
        method, arbiter = parse_variant(variant)
        folder, name = self.folder(variant, factor), run_name(method, ratio)
        label = variant + (f"_{ratio:g}" if ratio is not None else "") + (f"_x{factor}" if factor > 1 else "")
        where = ["--dest", str(folder)] + (["--ratio", f"{ratio:g}"] if ratio is not None else [])
        seconds: dict[str, float] = {}
        if method not in ("baseline", "disparse_dynamic") and not (folder / f"{name}.pth").is_file():
            seconds["prune"] = self.cli("create_pruned_net", f"prune_{label}", "--method", method, *where,
                                        "--progress", "off", *(["--arbiter", arbiter] if arbiter else []))
        final = folder / f"final_{name}.pth"
        if not final.is_file():
            steps = int(self.design["steps"][self.kind]) * factor
            val_every = max(1, steps // (factor * int(self.design["val_points"]))) if method == "baseline" else steps
            resume = ["--resume"] if (folder / f"last_{name}.pth").is_file() else []
            seconds["train"] = self.cli("launch_training", f"train_{label}", "--method", method, *where,
                                        "--max-iters", str(steps), "--no-final-eval", "--progress", "off",
                                        "--set", f"train.val_every={val_every}", *resume)
        baseline = [] if method == "baseline" else ["--baseline-metrics", str(self.metrics_path("baseline", None))]
        seconds["eval"] = self.cli("eval_pruned_net", f"eval_{label}", "--checkpoint", str(final), "--dest",
                                   str(folder), *baseline, "--progress", "off")
        for kind in ("last", "best"):                      # only the final weights are used from here on
            (folder / f"{kind}_{name}.pth").unlink(missing_ok=True)
        write_json_atomic(folder / f"seconds_{name}.json", seconds)
        self.report(f"{variant} {ratio:g} %" if ratio is not None else variant + (f" x{factor} steps" if factor > 1
                                                                                    else ""), seconds)

    def report(self, what: str, seconds: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.done(self, what, seconds)


class Progress:
    """Prints one line per finished run: what, how long, how far the whole study is and an ETA."""

    def __init__(self, design: dict, dest: Path, start: float, done_at_start: int) -> None:
        self.total = count_units(design)
        self.dest, self.design, self.start, self.done_at_start = dest, design, start, done_at_start

    def done(self, chain: Chain, what: str, seconds: dict[str, float]) -> None:
        finished = count_finished(self.design, self.dest)
        elapsed = time.time() - self.start
        new = finished - self.done_at_start
        eta = elapsed / new * (self.total - finished) if new > 0 else float("nan")
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
        print(f"[{finished}/{self.total}] {chain.kind} seed {chain.seed} {what}: {parts} | elapsed "
              f"{elapsed / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)


def units(design: dict, dest: Path) -> list[Path]:
    """The result file of every run and IoU analysis of the design."""
    files = []
    for kind in design["kinds"]:
        for seed in design["seeds"]:
            chain = Chain(design, kind, seed, dest)
            files.append(chain.metrics_path("baseline", None))
            for ratio in design["ratios"]:
                files += [chain.metrics_path(v, ratio) for v in design["variants"]]
                files += [chain.iou_path(ratio, source) for source in IOU_SOURCES]
            if seed == design["plateau_check"]["seed"]:
                files.append(chain.metrics_path("baseline", None, int(design["plateau_check"]["factor"])))
    return files


def count_units(design: dict) -> int:
    per_ratio = len(design["variants"]) + len(IOU_SOURCES)
    plateau = int(design["plateau_check"]["seed"] in design["seeds"])
    return len(design["kinds"]) * (len(design["seeds"]) * (1 + len(design["ratios"]) * per_ratio) + plateau)


def count_finished(design: dict, dest: Path) -> int:
    return sum(path.is_file() for path in units(design, dest))


def run_chain(design: dict, kind: str, seed: int, dest: str, start: float, done_at_start: int) -> None:
    """Worker entry point: one thread, then every run of (kind, seed)."""
    import torch
    torch.set_num_threads(1)
    Chain(design, kind, seed, Path(dest), Progress(design, Path(dest), start, done_at_start)).run()


# --------------------------------------------------------------------------- collecting the results

def learning_curve(log: Path) -> dict[str, list]:
    """Validation points [step, loss, {task: loss}] and training points [step, mean loss since the
    previous record] from a run's JSON-lines log (logs/{name}.jsonl, README). A resumed run logged the
    steps after its last checkpoint twice: records past a `resume` event's step are replaced."""
    val: list[list] = []
    train: list[list] = []
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        kind, step = record.get("kind"), record.get("iteration")
        if kind == "event" and record.get("event") == "resume":
            val = [point for point in val if point[0] <= step]
            train = [point for point in train if point[0] <= step]
        elif kind == "val":
            val.append([step, record["loss"], record.get("losses", {})])
        elif kind == "train":
            train.append([step, record["avg_loss"]])
    return {"val": val, "train": train}


def collect(design: dict, dest: Path, command: str) -> dict:
    """results.json from the files the CLIs wrote (every run must be finished)."""
    runs, iou, curves, plateau = [], [], [], []   # plateau: the longer dense baseline per kind (plateau_check)
    for kind in design["kinds"]:
        for seed in design["seeds"]:
            chain = Chain(design, kind, seed, dest)
            for variant, ratio in [("baseline", None)] + [(v, r) for r in design["ratios"] for v in design["variants"]]:
                method, arbiter = parse_variant(variant)
                name = run_name(method, ratio)
                folder = chain.folder(variant)
                record = {"kind": kind, "seed": seed, "variant": variant, "method": method, "arbiter": arbiter,
                          "ratio": 0 if ratio is None else ratio,
                          "metrics": read_json(chain.metrics_path(variant, ratio), "metrics file", dict),
                          "seconds": read_json(folder / f"seconds_{name}.json", "timings file", dict),
                          "train_curve": learning_curve(folder / "logs" / f"{name}.jsonl")["train"]}
                report = folder / f"{name}_report.json"
                if report.is_file():                        # the pruning report: per-layer kept counts
                    summary = read_json(report, "pruning report", dict)
                    record["pruning"] = summary.get("pruning", {})
                runs.append(record)
                if method == "baseline":
                    curves.append({"kind": kind, "seed": seed,
                                   **learning_curve(folder / "logs" / f"{name}.jsonl")})
            for ratio in design["ratios"]:
                for source in IOU_SOURCES:
                    data = read_json(chain.iou_path(ratio, source), "IoU analysis", dict)
                    iou.append({"kind": kind, "seed": seed, "ratio": ratio, "source": source,
                                "saliency": data.get("saliency"), "keep_ratio": data.get("keep_ratio"),
                                "overall": data.get("overall"), "watershed": data.get("watershed"),
                                "layers": [{k: layer[k] for k in ("name", "index", "kind", "all", "pairs")}
                                           for layer in data["layers"]]})
        seed, factor = design["plateau_check"]["seed"], int(design["plateau_check"]["factor"])
        if seed in design["seeds"]:
            chain = Chain(design, kind, seed, dest)
            folder = chain.folder("baseline", factor)
            plateau.append({"kind": kind, "seed": seed, "factor": factor, "steps": design["steps"][kind] * factor,
                            "metrics": read_json(chain.metrics_path("baseline", None, factor), "metrics file", dict),
                            **learning_curve(folder / "logs" / f"{run_name('baseline', None)}.jsonl")})
    return {"design": design, "command": command, "runs": runs, "iou": iou, "curves": curves, "plateau": plateau}


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_json(path, data, nonfinite="null", indent=1)


# --------------------------------------------------------------------------- cost, code version, reproduction

def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the spawned workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def record_cost(dest: Path, entry: dict) -> dict:
    """Append one invocation's cost to {dest}/cost.json and return the totals over all invocations (a
    resumed study is the sum of its pieces; a killed invocation records nothing)."""
    path = dest / "cost.json"
    entries = read_json(path, "cost record", dict)["invocations"] if path.is_file() else []
    entries.append(entry)
    totals = {"invocations": entries, "wall_seconds": sum(e["wall_seconds"] for e in entries),
              "cpu_seconds": sum(e["cpu_seconds"] for e in entries)}
    write_json_atomic(path, totals)
    return totals


def code_version() -> dict:
    """The commit the study runs on, and whether tracked files differ from it (taken when an invocation
    starts; each invocation's is kept in cost.json, the last one's in results.json)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""
    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _numbers(tree: Any, prefix: str = "") -> dict[str, float | None]:
    """Every number of a nested dict/list as {dotted path: value} (None kept: an undefined metric)."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _numbers(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _numbers(value, f"{prefix}{i}.").items()}
    if tree is None or (isinstance(tree, (int, float)) and not isinstance(tree, bool)):
        return {prefix.rstrip("."): tree}
    return {}


MEASURED_FIELDS = ("cost.latency",)    # timings in the metrics files: they vary with the machine


def compare_results(results: dict, reference: dict, tolerance: float) -> list[str]:
    """Differences between the runs and IoU analyses of `results` and the same ones in `reference` (every
    metric and every per-layer IoU; relative to the reference value, `tolerance` allowed). Empty: same.
    Timings (`MEASURED_FIELDS`) are not compared, nor numbers the reference does not record at all (fields
    that later versions of the tools added to the metrics files, e.g. `cost`); a number the reference
    records and the results lack is a difference."""
    def index(data: dict) -> dict:
        runs = {("run", r["kind"], r["seed"], r["variant"], float(r["ratio"])): r["metrics"] for r in data["runs"]}
        ious = {("iou", r["kind"], r["seed"], r.get("source", "init"), float(r["ratio"])): r["layers"]
                for r in data["iou"]}
        return {**runs, **ious}
    ours, theirs = index(results), index(reference)
    problems = []
    for key, value in ours.items():
        if key not in theirs:
            problems.append(f"{key}: not in the reference")
            continue
        a, b = _numbers(value), _numbers(theirs[key])
        for name in sorted(set(a) | set(b)):
            if name.startswith(MEASURED_FIELDS) or name not in b:
                continue
            x, y = a.get(name), b.get(name)
            if x is None or y is None:
                if x is not y:
                    problems.append(f"{key} {name}: {x} vs reference {y}")
            elif abs(x - y) > tolerance * max(abs(y), 1e-12):
                problems.append(f"{key} {name}: {x!r} vs reference {y!r}")
    return problems


# --------------------------------------------------------------------------- main

def steps_per_kind(text: str) -> dict[str, int]:
    """argparse type: `600` (every kind) or `shared=600,disentangled=1200`."""
    try:
        if "=" not in text:
            return {kind: int(text) for kind in CONFIGS}
        pairs = dict(item.split("=") for item in text.split(","))
        steps = {kind: int(value) for kind, value in pairs.items()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or KIND=N,..., got {text!r}") from None
    unknown = set(steps) - set(CONFIGS)
    if unknown or min(steps.values()) < 1:
        raise argparse.ArgumentTypeError(f"kinds are {', '.join(CONFIGS)} and steps positive, got {text!r}")
    return steps


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=None, help="study folder (default runs/study, or runs/study_quick)")
    parser.add_argument("--quick", action="store_true", help="tiny grid to check the pipeline (~2 minutes)")
    parser.add_argument("--report-only", action="store_true", help="only tables and plots from {dest}/results.json")
    parser.add_argument("--report-dir", default=None, help="where the report goes (default {dest}/report)")
    parser.add_argument("--jobs", type=int, default=2, help="chains (kind, seed) run at once, one thread each")
    parser.add_argument("--kinds", nargs="+", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--ratios", type=float, nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                        help="pruned methods to run (default: all); the dense baseline always runs")
    parser.add_argument("--compare", default=None, metavar="RESULTS_JSON",
                        help="after the runs, compare every metric and IoU with the same runs in this results JSON "
                             "(e.g. docs/study/per_seed_results.json) instead of writing a report; exit 1 on a difference")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="relative difference --compare accepts (default 1e-6; CPU runs of one commit are equal)")
    parser.add_argument("--steps", type=steps_per_kind, default=None, metavar="N|KIND=N,...",
                        help="training steps of every net: one number for both kinds, or per kind "
                             "(shared=600,disentangled=1200)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where every net is trained, pruned and evaluated (default cpu: the numbers in "
                             "docs/RESULTS.md are CPU numbers, and only CPU runs repeat them exactly)")
    return parser.parse_args(argv)


def resolve_design(args: argparse.Namespace) -> dict:
    design = dict(QUICK if args.quick else FULL)
    for key in ("kinds", "seeds", "ratios", "variants"):
        if getattr(args, key) is not None:
            design[key] = getattr(args, key)
    if args.steps is not None:
        design["steps"] = {**design["steps"], **args.steps}
    design["ratios"] = [int(r) if float(r).is_integer() else float(r) for r in design["ratios"]]
    if args.device != "cpu":            # recorded only when not the default, so CPU designs stay as published
        design["device"] = args.device
    return design


def check_device(design: dict) -> None:
    """A one-line error before any run when the design asks for a GPU this machine does not have."""
    import torch

    if design.get("device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise StudyError("--device cuda: no CUDA device here (torch.cuda.is_available() is False); run on a "
                         "machine with a GPU, or without --device for the CPU")


def check_design(design: dict, dest: Path) -> None:
    """Refuse to mix two designs in one folder; record the design on first use."""
    path = dest / "design.json"
    if path.is_file():
        stored = read_json(path, "study design", dict)
        if stored != design:
            diff = ", ".join(f"{k}={stored.get(k)!r} (now {design.get(k)!r})" for k in sorted(set(stored) | set(design))
                             if stored.get(k) != design.get(k))
            raise StudyError(f"{dest} holds a study with other settings: {diff}; use another --dest")
        return
    dest.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, design)


def generate_data(design: dict, dest: Path) -> None:
    for kind in design["kinds"]:
        root = dest / "data" / kind
        if (root / "synthetic_meta.json").is_file():
            continue
        h, w = design["size"]
        run_cli("dataloaders.synthetic", ["--out", str(root), "--n-train", str(design["n_train"]), "--n-test",
                                          str(design["n_test"]), "--size", f"{h}x{w}", "--seed", "0",
                                          "--scene-kind", kind, "--quiet"], dest / "data" / f"generate_{kind}.log")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    design = resolve_design(args)
    dest = Path(args.dest or ("runs/study_quick" if args.quick else "runs/study")).absolute()
    report_dir = Path(args.report_dir) if args.report_dir else dest / "report"
    results_path = dest / "results.json"
    command = shlex.join(["python", "scripts/study.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        if not args.report_only:
            check_device(design)
            check_design(design, dest)
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            os.environ.setdefault("MKL_NUM_THREADS", "1")
            generate_data(design, dest)
            start, cpu_start, done = time.time(), cpu_seconds(), count_finished(design, dest)
            code = code_version()                          # what this invocation runs (the tree may change later)
            steps = ", ".join(f"{design['steps'][k]} ({k})" for k in design["kinds"])
            print(f"study in {dest}: {count_units(design)} runs ({done} done), {len(design['kinds'])} kinds x "
                  f"{len(design['seeds'])} seeds, ratios {design['ratios']}, steps per net {steps}, "
                  f"{args.jobs} job(s)", flush=True)
            # longest chains first, so that the two workers finish together
            chains = sorted(((kind, seed) for seed in design["seeds"] for kind in design["kinds"]),
                            key=lambda chain: -design["steps"][chain[0]])
            if args.jobs <= 1:
                for kind, seed in chains:
                    run_chain(design, kind, seed, str(dest), start, done)
            else:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
                    futures = [pool.submit(run_chain, design, kind, seed, str(dest), start, done)
                               for kind, seed in chains]
                    for future in futures:
                        future.result()
            wall, cpu = time.time() - start, cpu_seconds() - cpu_start
            cost = record_cost(dest, {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                                      "runs": count_finished(design, dest) - done, "jobs": args.jobs, "code": code,
                                      "load_average_at_end": [round(x, 2) for x in os.getloadavg()]})
            results = {**collect(design, dest, command), "code": code, "cost": cost}
            write_json_atomic(results_path, results)
            print(f"all runs finished: {wall / 60:.1f} min wall, {cpu / 60:.1f} CPU-minutes in this invocation "
                  f"(study total {cost['wall_seconds'] / 60:.1f} min wall, {cost['cpu_seconds'] / 60:.1f} CPU-min); "
                  f"wrote {results_path}", flush=True)
        if not results_path.is_file():
            raise StudyError(f"{results_path} not found: run the study first (without --report-only)")
        results = read_json(results_path, "study results", dict)
        if args.compare:
            problems = compare_results(results, read_json(args.compare, "--compare reference", dict), args.tolerance)
            for line in problems[:40]:
                print(f"differs: {line}")
            print(f"compared {len(results['runs'])} runs and {len(results['iou'])} IoU analyses with {args.compare}: "
                  + (f"{len(problems)} difference(s) beyond relative tolerance {args.tolerance:g}" if problems
                     else f"all equal within relative tolerance {args.tolerance:g}"))
            return 1 if problems else 0
        path = study_report.write_report(results, report_dir)
        print(f"wrote {path}")
        return 0
    except (StudyError, ValueError, FileNotFoundError) as exc:      # read_json's errors are one line too
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
