"""create_pruned_net.py end to end on the full NYUv2 net: scoring with and without loader workers, the finish.

Every measurement is one real `create_pruned_net.py` run (disparse_static, --ratio 90, full width) in a fresh
process on real data (default: the NYUv2 samples in ../shared/data/nyuv2_samples, 3 training frames, so a
run of many batches restarts the training split many times). The child imports everything first, then
marks the start; small wrappers around `compute_scores`, `OneShotPruning.prune` and the pieces of
`write_pruned_net` mark the end of scoring, the end of mask making and the finish's steps; the parent notes
when the child process has ended. Variants, interleaved round by round (odd rounds in reverse order):

* `default`: the config as shipped (`data.num_workers: 4`);
* `num_workers=0`: `--set data.num_workers=0`, data loaded in the main process;
* with `--code DIR`, the same two for the checkout at DIR (e.g. `git worktree add /tmp/main main`), so an
  older revision runs side by side with this one.

Cases `BATCHES:CROP` (default 1:321 2:321 50:65): 1 and 2 batches at the paper's crop, as the issue's check;
50 batches at a small crop so a run takes minutes on a CPU (the fork penalty depends on the process's
memory, i.e. the net, not on the crop; a smaller crop only makes it weigh more against the compute).

Scoring = from the start of `create_pruned_net.py`'s `__main__` (config, data, net, probe copy, batches) to the return
of `compute_scores`; wall time, system time and minor page faults of the process and its reaped children
(the loader workers), per batch. Ratios `default / num_workers=0` are taken per round and summarised as
median [min-max]. Finish = from the return of `OneShotPruning.prune` (masks made) to the end of the
process: applying the masks, saving, the report, printing, interpreter exit. Beside it, `dense save` children
write only the dense checkpoint and exit: the I/O floor of the finish on this machine's disk, once written
as create_pruned_net.py writes its net (atomic, not fsynced: `durable=False`, see fileio/atomic.py) and once
fsynced as training checkpoints are.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch loads OpenMP, and puts the repository on sys.path
from common import ROOT, machine_line, print_table  # isort: skip

SAMPLES = ROOT.parent / "shared" / "data" / "nyuv2_samples"
FINISH_TARGET_S = 1.0


def usage() -> dict[str, float]:
    """System time and minor faults of this process plus its reaped children (the loader workers)."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"sys": me.ru_stime + kids.ru_stime, "minflt": me.ru_minflt + kids.ru_minflt}


def mark(marks: dict, name: str) -> None:
    marks[name] = {"t": time.time(), **usage()}


def timed(owner: object, attr: str, marks: dict, end_mark: str | None = None) -> None:
    """Wrap `owner.attr` so each call adds its duration to marks["steps"][attr] (and sets `end_mark` after it)."""
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        marks.setdefault("steps", {})[attr] = marks.get("steps", {}).get(attr, 0.0) + time.perf_counter() - start
        if end_mark:
            mark(marks, end_mark)
        return out
    setattr(owner, attr, wrapper)


def child_run(args: argparse.Namespace) -> None:
    """`python create_pruned_net.py ...` of the checkout under test, as its `__main__` runs it, instrumented;
    the marks are printed as one JSON line by an atexit handler (the last one to run, before the
    interpreter's own teardown, which the parent's exit time includes)."""
    import atexit
    import runpy
    sys.path.insert(0, args.code_dir)          # the checkout under test, ahead of this one
    import torch  # noqa: F401  (imports before the start mark: they are the same for every variant)
    import methods.oneshot as oneshot
    import methods.pipeline as pipeline
    marks: dict = {}
    timed(oneshot, "compute_scores", marks, "scored")
    timed(oneshot.OneShotPruning, "prune", marks, "pruned")
    for owner, attr in ((pipeline, "apply_masks"), (pipeline, "atomic_save"), (pipeline.report, "build_report")):
        timed(owner, attr, marks)

    def report_marks() -> None:
        mark(marks, "main_end")
        print(json.dumps(marks), flush=True)

    atexit.register(report_marks)
    sys.argv = ["create_pruned_net.py", "--dataset", "nyuv2", "--device", args.device, "--data-root", args.data_root,
                "--num_batches",
                str(args.batches), "--batch-size", "2", "--ratio", "90", "--dest", args.dest, "--progress", "off",
                "--set", f"data.crop_h={args.crop}", "--set", f"data.crop_w={args.crop}"]
    if args.workers != "default":
        sys.argv += ["--set", f"data.num_workers={args.workers}"]
    mark(marks, "start")
    runpy.run_path(str(Path(args.code_dir) / "create_pruned_net.py"), run_name="__main__")


def child_dense_save(args: argparse.Namespace) -> None:
    """Write the full net's dense checkpoint (fsynced when `--workers fsync`) and end the process as the tools
    do: the I/O floor of the finish."""
    from engine.cli import exit_process
    from engine.config import load_config
    from fileio import atomic_save, make_checkpoint
    from models import build_model
    config = load_config("nyuv2")
    state = build_model(config, "cpu").state_dict()
    marks: dict = {}
    mark(marks, "pruned")
    atomic_save(make_checkpoint(state, config, "baseline"), Path(args.dest) / "dense.pth",
                durable=args.workers == "fsync")
    mark(marks, "main_end")
    print(json.dumps(marks), flush=True)
    exit_process(0)


def launch(code: Path, child: list[str], threads: int) -> dict:
    """Run this script as a child against the checkout `code`; its marks plus `exit` (when it had ended)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads > 0 else {})}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--code-dir", str(code)], cwd=code,
                          capture_output=True, text=True, env=env)
    ended = time.time()
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"child {' '.join(child)} ({code}) failed: {tail}")
    marks = json.loads(proc.stdout.strip().splitlines()[-1])
    marks["exit"] = ended
    return marks


def summary(values: list[float], digits: int = 2) -> str:
    """median [min-max] of per-round values."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["1:321", "2:321", "50:65"], metavar="BATCHES:CROP",
                        help="scoring batches and square crop of each case (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default: %(default)s)")
    parser.add_argument("--data-root", default=str(SAMPLES), help="NYUv2-layout data (default: the NYUv2 samples)")
    parser.add_argument("--code", default=None, metavar="DIR", help="also run the checkout at DIR, side by side")
    parser.add_argument("--tmpdir", default=None, help="where the checkpoints are written (default: system temp)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="create_pruned_net.py --device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the runs (OMP_NUM_THREADS; default: 0 = torch's default)")
    parser.add_argument("--child", choices=("run", "dense_save"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, default=321, help=argparse.SUPPRESS)
    parser.add_argument("--dest", default=".", help=argparse.SUPPRESS)
    parser.add_argument("--code-dir", default=str(ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "run":
        return child_run(args)
    if args.child == "dense_save":
        return child_dense_save(args)
    if not (Path(args.data_root) / "nyu_v2_3task.json").is_file():
        raise SystemExit(f"error: no NYUv2-layout data at {args.data_root} (pass --data-root)")
    import torch
    print(machine_line(torch.device("cpu")), flush=True)
    codes = {"": ROOT} if args.code is None else {"": ROOT, f"{Path(args.code).name}: ": Path(args.code).resolve()}
    cases = [tuple(int(x) for x in case.split(":")) for case in args.cases]
    variants = [(prefix, workers) for prefix in codes for workers in ("default", "0")]
    runs: dict[tuple, list[dict]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="disparse-bench-", dir=args.tmpdir) as folder:
        for r in range(args.repeats):
            jobs = ([(case, variant) for case in cases for variant in variants]
                    + [(None, ("", "dense")), (None, ("", "dense_fsync"))])
            for case, (prefix, workers) in (jobs if r % 2 == 0 else jobs[::-1]):
                dest = Path(folder) / f"{prefix.strip(': ')}{workers}"     # fresh for every run, as in the
                dest.mkdir()                                                # issue's check: no file is replaced
                if case is None:
                    marks = launch(ROOT, ["--child", "dense_save", "--dest", str(dest), "--workers",
                                          "fsync" if workers == "dense_fsync" else "default"], args.threads)
                    sizes["dense"] = (dest / "dense.pth").stat().st_size
                else:
                    batches, crop = case
                    marks = launch(codes[prefix], ["--child", "run", "--workers", workers, "--batches",
                                                   str(batches), "--crop", str(crop), "--dest", str(dest),
                                                   "--device", args.device, "--data-root", args.data_root],
                                   args.threads)
                    sizes[prefix] = (dest / "nyuv2_disparse_static_90.pth").stat().st_size
                runs.setdefault((case, prefix, workers), []).append(marks)
                shutil.rmtree(dest)
                print(f"round {r + 1}: {case} {prefix}{workers} done", file=sys.stderr, flush=True)
    print_report(cases, variants, runs, sizes)


def label(prefix: str, workers: str) -> str:
    return prefix + ("default config" if workers == "default" else "num_workers=0")


def print_report(cases, variants, runs, sizes) -> None:
    rows = []
    for batches, crop in cases:
        for prefix, workers in variants:
            own = runs[((batches, crop), prefix, workers)]
            base = runs[((batches, crop), prefix, "0")]
            per = {k: [(m["scored"][k] - m["start"][k]) / batches for m in own] for k in ("t", "sys", "minflt")}
            ratio = {k: [(a["scored"][k] - a["start"][k]) / max(b["scored"][k] - b["start"][k], 1e-9)
                         for a, b in zip(own, base)] for k in ("t", "sys", "minflt")}
            rows.append([f"{batches} x crop {crop}", label(prefix, workers), summary(per["t"]), summary(per["sys"]),
                         f"{statistics.median(per['minflt']) / 1e3:.0f} k",
                         "-" if workers == "0" else summary(ratio["t"]),
                         "-" if workers == "0" else summary(ratio["sys"]),
                         "-" if workers == "0" else summary(ratio["minflt"])])
    print_table("Scoring per batch (start of create_pruned_net.py to the end of compute_scores), batch 2",
                ["case", "variant", "wall s", "system s", "minor faults", "wall / num_workers=0",
                 "system / num_workers=0", "faults / num_workers=0"], rows)
    rows = []
    for kind, what in (("dense", "dense save only, not fsynced"), ("dense_fsync", "dense save only, fsynced")):
        floor = [m["exit"] - m["pruned"]["t"] for m in runs[(None, "", kind)]]
        rows.append([what, "-", summary(floor), "-", "-", "-", "-", "-"])
    for batches, crop in cases:
        for prefix, workers in variants:
            own = runs[((batches, crop), prefix, workers)]
            finish = [m["exit"] - m["pruned"]["t"] for m in own]
            steps = {k: [m.get("steps", {}).get(k, 0.0) for m in own] for k in ("apply_masks", "atomic_save",
                                                                               "build_report")}
            exit_s = [m["exit"] - m["main_end"]["t"] for m in own]
            met = "met" if statistics.median(finish) <= FINISH_TARGET_S else "MISSED"
            rows.append([f"{label(prefix, workers)}, {batches} x crop {crop}",
                         summary([m["pruned"]["t"] - m["scored"]["t"] for m in own]), summary(finish),
                         summary(steps["apply_masks"]), summary(steps["atomic_save"]), summary(steps["build_report"]),
                         summary(exit_s), f"<= {FINISH_TARGET_S:g} s: {met}"])
    print_table("Finish: end of mask making (OneShotPruning.prune) to the end of the process, seconds",
                ["run", "masks (after scoring)", "finish", "apply masks", "atomic saves", "report",
                 "interpreter exit", "target"], rows)
    rows = [["dense (ours, no masks)", f"{sizes['dense'] / 2 ** 20:.1f}", "100.0 %", "-"]]
    for prefix in dict.fromkeys(p for p, _ in variants):
        share = sizes[prefix] / sizes["dense"]
        rows.append([f"{prefix}pruned, 90 % (create_pruned_net.py)", f"{sizes[prefix] / 2 ** 20:.1f}",
                     f"{100 * share:.1f} %", f"<= 105 %: {'met' if share <= 1.05 else 'MISSED'}"])
    print_table("Files written by these runs", ["file", "MiB", "of dense", "target"], rows)


if __name__ == "__main__":
    main()
