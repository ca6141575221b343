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
* per-layer IoU of the tasks' masks at each sparsity (iou_analysis.py --ratio).

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
import shlex
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

CONFIGS = {"shared": "configs/synthetic.yaml", "disentangled": "configs/synthetic_disentangled.yaml"}
DATASET = "synthetic"                      # the configs' dataset name: it names every file
ARBITERS = ("unanimous", "intersection", "majority", "mean_score")
VARIANTS = tuple(f"disparse_static[{a}]" for a in ARBITERS) + ("disparse_dynamic", "snip", "random")
# The full study (the choices are explained in docs/RESULTS.md) and the --quick smoke grid. `steps` is per
# scene kind: the step count at which that kind's dense baseline has plateaued in the pilot runs.
FULL = {"kinds": ["shared", "disentangled"], "seeds": [0, 1, 2, 3, 4], "ratios": [90, 95, 98],
        "variants": list(VARIANTS), "steps": {"shared": 600, "disentangled": 1200}, "width": 0.0625, "crop": 48,
        "batch": 8, "lr": 2.0e-3, "decay_at": 2 / 3, "decay_rate": 0.2, "n_train": 320, "n_test": 80,
        "size": [96, 128], "val_points": 12, "num_batches": 4}
QUICK = {**FULL, "seeds": [0, 1], "ratios": [90], "steps": {"shared": 12, "disentangled": 12}, "crop": 32,
         "n_train": 24, "n_test": 8, "size": [48, 64], "val_points": 3, "num_batches": 1}


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
    """Flags every CLI of a kind gets: config, data root, and the design's sizes and schedule."""
    steps = int(design["steps"][kind])
    h, w = design["size"]
    sets = {"model.width_mult": design["width"], "data.crop_h": design["crop"], "data.crop_w": design["crop"],
            "data.batch_size": design["batch"], "data.test_batch_size": 8, "data.num_workers": 0,
            "data.image_shape": f"[{h},{w}]", "synthetic.size": f"[{h},{w}]", "synthetic.n_train": design["n_train"],
            "synthetic.n_test": design["n_test"], "synthetic.seed": 0, "train.lr": design["lr"],
            "train.lr_decay_every": max(1, round(design["decay_at"] * steps)),
            "train.lr_decay_rate": design["decay_rate"],
            "train.save_every": max(1, steps // 4), "train.log_every": max(1, steps // 30),
            "dynamic.end": max(1, (3 * steps) // 4), "dynamic.interval": max(1, steps // 25),
            "pruning.num_batches": design["num_batches"]}
    flags = ["--config", str(ROOT / CONFIGS[kind]), "--data-root", str(dest / "data" / kind), "--device", "cpu"]
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

    def folder(self, variant: str) -> Path:
        return self.dir / variant.replace("[", "-").replace("]", "")

    def metrics_path(self, variant: str, ratio: float | None) -> Path:
        method, _ = parse_variant(variant)
        return self.folder(variant) / f"metrics_final_{run_name(method, ratio)}.json"

    def iou_path(self, ratio: float) -> Path:
        return self.dir / f"iou{ratio:g}" / f"{DATASET}_iou.json"

    def cli(self, module: str, label: str, *argv: str) -> float:
        start = time.perf_counter()
        run_cli(module, [*self.flags, *argv], self.dir / "cli_logs" / f"{label}.log")
        return time.perf_counter() - start

    def run(self) -> None:
        self.train_and_evaluate("baseline", None)
        for ratio in self.design["ratios"]:
            for variant in self.design["variants"]:
                self.train_and_evaluate(variant, ratio)
            if not self.iou_path(ratio).is_file():
                seconds = self.cli("iou_analysis", f"iou_{ratio:g}", "--ratio", f"{ratio:g}", "--dest",
                                   str(self.iou_path(ratio).parent), "--no-plot", "--no-progress")
                self.report(f"IoU at {ratio:g} %", {"iou": seconds})

    def train_and_evaluate(self, variant: str, ratio: float | None) -> None:
        result = self.metrics_path(variant, ratio)
        if result.is_file():
            return
        method, arbiter = parse_variant(variant)
        folder, name = self.folder(variant), run_name(method, ratio)
        label = variant + (f"_{ratio:g}" if ratio is not None else "")
        where = ["--dest", str(folder)] + (["--ratio", f"{ratio:g}"] if ratio is not None else [])
        seconds: dict[str, float] = {}
        if method not in ("baseline", "disparse_dynamic") and not (folder / f"{name}.pth").is_file():
            seconds["prune"] = self.cli("create_pruned_net", f"prune_{label}", "--method", method, *where,
                                        "--progress", "off", *(["--arbiter", arbiter] if arbiter else []))
        final = folder / f"final_{name}.pth"
        if not final.is_file():
            steps = int(self.design["steps"][self.kind])
            val_every = max(1, steps // int(self.design["val_points"])) if method == "baseline" else steps
            resume = ["--resume"] if (folder / f"last_{name}.pth").is_file() else []
            seconds["train"] = self.cli("launch_training", f"train_{label}", "--method", method, *where,
                                        "--max-iters", str(steps), "--no-final-eval", "--progress", "off",
                                        "--set", f"train.val_every={val_every}", *resume)
        baseline = [] if method == "baseline" else ["--baseline-metrics", str(self.metrics_path("baseline", None))]
        seconds["eval"] = self.cli("eval_pruned_net", f"eval_{label}", "--checkpoint", str(final), "--dest",
                                   str(folder), *baseline, "--progress", "off")
        for kind in ("last", "best"):                      # only the final weights are used from here on
            (folder / f"{kind}_{name}.pth").unlink(missing_ok=True)
        (folder / f"seconds_{name}.json").write_text(json.dumps(seconds), encoding="utf-8")
        self.report(f"{variant} {ratio:g} %" if ratio is not None else variant, seconds)

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
                files += [chain.metrics_path(v, ratio) for v in design["variants"]] + [chain.iou_path(ratio)]
    return files


def count_units(design: dict) -> int:
    return len(design["kinds"]) * len(design["seeds"]) * (1 + len(design["ratios"]) * (len(design["variants"]) + 1))


def count_finished(design: dict, dest: Path) -> int:
    return sum(path.is_file() for path in units(design, dest))


def run_chain(design: dict, kind: str, seed: int, dest: str, start: float, done_at_start: int) -> None:
    """Worker entry point: one thread, then every run of (kind, seed)."""
    import torch
    torch.set_num_threads(1)
    Chain(design, kind, seed, Path(dest), Progress(design, Path(dest), start, done_at_start)).run()


# --------------------------------------------------------------------------- collecting the results

def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


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
    runs, iou, curves = [], [], []
    for kind in design["kinds"]:
        for seed in design["seeds"]:
            chain = Chain(design, kind, seed, dest)
            for variant, ratio in [("baseline", None)] + [(v, r) for r in design["ratios"] for v in design["variants"]]:
                method, arbiter = parse_variant(variant)
                name = run_name(method, ratio)
                folder = chain.folder(variant)
                record = {"kind": kind, "seed": seed, "variant": variant, "method": method, "arbiter": arbiter,
                          "ratio": 0 if ratio is None else ratio,
                          "metrics": _read_json(chain.metrics_path(variant, ratio)),
                          "seconds": _read_json(folder / f"seconds_{name}.json"),
                          "train_curve": learning_curve(folder / "logs" / f"{name}.jsonl")["train"]}
                report = folder / f"{name}_report.json"
                if report.is_file():                        # the pruning report: per-layer kept counts
                    summary = _read_json(report)
                    record["pruning"] = summary.get("pruning", {})
                runs.append(record)
                if method == "baseline":
                    curves.append({"kind": kind, "seed": seed,
                                   **learning_curve(folder / "logs" / f"{name}.jsonl")})
            for ratio in design["ratios"]:
                data = _read_json(chain.iou_path(ratio))
                iou.append({"kind": kind, "seed": seed, "ratio": ratio, "keep_ratio": data.get("keep_ratio"),
                            "overall": data.get("overall"), "watershed": data.get("watershed"),
                            "layers": [{k: layer[k] for k in ("name", "index", "kind", "all", "pairs")}
                                       for layer in data["layers"]]})
    return {"design": design, "command": command, "runs": runs, "iou": iou,
            "curves": curves}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
    parser.add_argument("--steps", type=steps_per_kind, default=None, metavar="N|KIND=N,...",
                        help="training steps of every net: one number for both kinds, or per kind "
                             "(shared=600,disentangled=1200)")
    return parser.parse_args(argv)


def resolve_design(args: argparse.Namespace) -> dict:
    design = dict(QUICK if args.quick else FULL)
    for key in ("kinds", "seeds", "ratios", "variants"):
        if getattr(args, key) is not None:
            design[key] = getattr(args, key)
    if args.steps is not None:
        design["steps"] = {**design["steps"], **args.steps}
    design["ratios"] = [int(r) if float(r).is_integer() else float(r) for r in design["ratios"]]
    return design


def check_design(design: dict, dest: Path) -> None:
    """Refuse to mix two designs in one folder; record the design on first use."""
    path = dest / "design.json"
    if path.is_file():
        stored = _read_json(path)
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
            check_design(design, dest)
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            os.environ.setdefault("MKL_NUM_THREADS", "1")
            generate_data(design, dest)
            start, done = time.time(), count_finished(design, dest)
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
            write_json_atomic(results_path, collect(design, dest, command))
            print(f"all runs finished in {(time.time() - start) / 60:.1f} min; wrote {results_path}", flush=True)
        if not results_path.is_file():
            raise StudyError(f"{results_path} not found: run the study first (without --report-only)")
        path = study_report.write_report(_read_json(results_path), report_dir)
        print(f"wrote {path}")
        return 0
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
