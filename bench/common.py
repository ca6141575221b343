"""Shared benchmark helpers: repeated timing, peak memory of a variant in its own process, tables.

Benchmarks compare variants side by side in one run and report ratios: absolute times on shared
machines are noise, ratios measured back to back are not.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

# Idle OpenMP threads sleep instead of spin-waiting (set before torch loads OpenMP; an explicit
# OMP_WAIT_POLICY in the environment wins). On a machine shared with other jobs, spinning threads steal the
# cores their own sibling threads wait for: a 2-thread step measured 5-10x slower than a 1-thread one here.
if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    import warnings
    warnings.warn("bench/common.py was imported after torch: OMP_WAIT_POLICY=PASSIVE cannot take effect any more "
                  "(import common before torch)", RuntimeWarning, stacklevel=2)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the OpenMP setting)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_samples(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 5,
                        warmup: int = 1) -> dict[str, list[float]]:
    """All wall times (s) of several variants measured in alternation, so machine noise hits all alike.

    Odd rounds run the variants in reverse order, so none always follows the same neighbour (caches,
    allocator state, a co-tenant's burst that happens to line up with round starts).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(repeats):
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return samples


def paired_ratio(samples: Mapping[str, Sequence[float]], a: str, b: str) -> float:
    """Median over rounds of a's time / b's time in the same round: variants timed back to back share the
    machine's state of the moment, so their per-round ratio is steadier than a ratio of two medians."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b]))


def spread(values: Sequence[float]) -> float:
    """Interquartile range / median: how noisy a variant's timings were (0.05 = 5 %)."""
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / statistics.median(values)


def peak_rss_of(args: Sequence[str]) -> tuple[float, dict]:
    """Run `python <args>` in a fresh process; return (its peak RSS in MiB, the JSON it printed last)."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {proc.stderr.strip().splitlines()[-1:]}")
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    return payload.pop("peak_rss_mib"), payload


def _proc_status_mib(field: str) -> float | None:
    """A `VmHWM` / `VmRSS` line of /proc/self/status in MiB (None where there is no procfs)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def own_peak_rss_mib() -> float:
    """This process's peak resident set size (MiB) since start or since `reset_peak_rss`."""
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set size now (MiB)."""
    now = _proc_status_mib("VmRSS")
    return now if now is not None else own_peak_rss_mib()


def reset_peak_rss() -> bool:
    """Restart the peak-RSS watermark at the current RSS (Linux >= 4.0), so a measured step is not hidden
    under an earlier, higher peak (importing torch, building the net). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Print and return a Markdown table (so results paste straight into docs/BENCHMARKS.md)."""
    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


# ----------------------------------------------------------------------------------------------------------
# command line and workloads shared by every benchmark script

DATASETS = {"2 tasks (NYUv2)": "nyuv2", "5 tasks (Taskonomy)": "taskonomy"}


def base_parser(description: str, *, width: float, crop: int | None, batch: int | None,
                repeats: int | None) -> argparse.ArgumentParser:
    """The flags every benchmark shares, with that script's reduced CPU defaults.

    `--full` switches to the paper's net (width 1) at the paper's crop and batch from configs/*.yaml;
    `--width/--crop/--batch` given explicitly still win, so `--full --batch 2` is possible.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (default: auto = CUDA when available)")
    parser.add_argument("--full", action="store_true",
                        help="the paper's full-size net (width 1) at the paper's crop and batch where the script uses "
                             "them, from configs/*.yaml (meant for a GPU)")
    parser.add_argument("--width", type=float, default=None,
                        help=f"width multiplier of the net (default: {width:g}; 1.0 with --full)")
    if crop is not None:
        parser.add_argument("--crop", type=int, default=None,
                            help=f"square input crop in pixels (default: {crop}; the config's crop with --full)")
    if batch is not None:
        parser.add_argument("--batch", type=int, default=None,
                            help=f"batch size (default: {batch}; the config's batch with --full)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats,
                            help="timed repeats per variant, the median is reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default: 0 = torch's default, the number of cores)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the net, the data and the scores (default: %(default)s)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)   # internal: one variant, own process
    parser.set_defaults(_reduced=(width, crop, batch))
    return parser


def start(args: argparse.Namespace) -> torch.device:
    """Apply --threads and --seed, resolve --device (a one-line error when CUDA is asked for but absent)."""
    from engine.runtime import select_device
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        return select_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def thread_settings(args: argparse.Namespace, device: torch.device) -> list[int]:
    """Thread counts to measure under: one thread and torch's default on the CPU (on a shared machine a
    second thread can stall on a busy core, so both are worth seeing); just `--threads` when it is given;
    one setting on CUDA."""
    default = torch.get_num_threads()
    if device.type != "cpu" or args.threads > 0:
        return [default]
    return sorted({1, default})


def child_args(args: argparse.Namespace, variant: str) -> list[str]:
    """Arguments that rerun the calling script for one variant in a fresh process (for peak RSS)."""
    out = [os.path.abspath(sys.argv[0]), "--child", variant, "--device", args.device, "--threads", str(args.threads),
           "--seed", str(args.seed)]
    for flag in ("width", "crop", "batch"):
        if getattr(args, flag, None) is not None:
            out += [f"--{flag}", str(getattr(args, flag))]
    return out + (["--full"] if args.full else [])


def report_child(**payload: object) -> None:
    """Last line of a child process: what it measured plus its own peak RSS (read by `peak_rss_of`)."""
    print(json.dumps({"peak_rss_mib": own_peak_rss_mib(), **payload}), flush=True)


@dataclass
class Workload:
    """One net and one batch shape: what a benchmark builds, from a dataset config and the size flags."""

    dataset: str
    config: dict
    tasks: dict[str, int]
    width: float
    crop: tuple[int, int]
    batch: int

    def describe(self) -> str:
        return (f"{self.dataset}: {len(self.tasks)} tasks, width {self.width:g}, "
                f"crop {self.crop[0]}x{self.crop[1]}, batch {self.batch}")

    def model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        from models import MultiTaskNet
        return MultiTaskNet(self.tasks, self.width).to(device)

    def loss(self):
        from engine.losses import build_loss
        return build_loss(self.config)


def workload(dataset: str, args: argparse.Namespace, purpose: str = "train") -> Workload:
    """The workload of `dataset` under the size flags. `purpose` picks the config's batch with --full:
    "train" (`data.batch_size`) or "pruning" (`pruning.batch_size`, the batch the original scores with)."""
    from engine.config import load_config, task_classes
    config = load_config(dataset)
    width, crop, batch = args._reduced
    if args.full:
        width = 1.0
        crop = (config["data"]["crop_h"], config["data"]["crop_w"])
        batch = config["pruning" if purpose == "pruning" else "data"]["batch_size"]
    else:
        crop = (crop, crop) if crop is not None else None
    if args.width is not None:
        width = args.width
    if getattr(args, "crop", None) is not None:
        crop = (args.crop, args.crop)
    if getattr(args, "batch", None) is not None:
        batch = args.batch
    config["model"]["width_mult"] = width
    return Workload(dataset, config, task_classes(config), width, crop, batch)


def fake_batch(tasks: Mapping[str, int], batch: int, crop: tuple[int, int], device: torch.device | str = "cpu",
               seed: int = 0, ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Random tensors shaped and typed like a real batch (docs/CONVENTIONS.md): the cost of a step does
    not depend on the pixel values, so benchmarks need no dataset on disk."""
    from engine.targets import TARGET_KEY
    g = torch.Generator().manual_seed(seed)
    h, w = crop
    out: dict[str, torch.Tensor] = {"img": torch.randn(batch, 3, h, w, generator=g) * 60.0}   # Caffe-mean scale
    for task, classes in tasks.items():
        if task == "seg":
            labels = torch.randint(0, classes, (batch, 1, h, w), generator=g)
            labels[torch.rand(batch, 1, h, w, generator=g) < 0.1] = ignore_index           # some unlabelled pixels
            out["seg"] = labels
        elif task == "sn":
            out["normal"] = torch.nn.functional.normalize(torch.randn(batch, 3, h, w, generator=g), dim=1)
        elif task == "depth":
            out["depth"] = torch.rand(batch, 1, h, w, generator=g) * 10 + 0.1
        else:                                                                               # keypoint, edge
            out[TARGET_KEY[task]] = torch.rand(batch, 1, h, w, generator=g) * 2 - 1
    return {k: v.to(device) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------
# scores without a forward pass (mask building and file sizes do not care where scores came from)

SCORE_KINDS = ("uniform", "snip-like")


def random_scores(model: torch.nn.Module, kind: str = "uniform", seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Per-task scores over each task's pool (backbone + own head), laid out as `compute_scores` returns
    them: one flat float32 buffer per task, a view per weight. `model` may live on the meta device.

    `uniform`: independent U[0, 1) per task and weight (tasks disagree as much as they can).
    `snip-like`: |w| * |g_t| with one shared Xavier-scale |w| per backbone weight and per-task Gaussian |g_t| at a
    per-layer, per-task log-normal scale, so tasks agree on the backbone through |w| (as SNIP scores do) and
    scores span several orders of magnitude.
    """
    from prune_utils.masks import prunable_parameters
    from prune_utils.structure import TaskStructure
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r} (expected one of {', '.join(SCORE_KINDS)})")
    g = torch.Generator().manual_seed(seed)
    shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model).items()}
    structure = TaskStructure.from_model(model)
    pools = {t: list(structure.pool(t)) for t in structure.tasks}
    magnitude: dict[str, torch.Tensor] = {}
    if kind == "snip-like":
        for name, shape in shapes.items():
            receptive = math.prod(shape[2:])
            fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
            magnitude[name] = torch.randn(shape, generator=g).abs_().mul_((2.0 / (fan_in + fan_out)) ** 0.5)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for task, names in pools.items():
        flat = torch.empty(sum(math.prod(shapes[n]) for n in names), dtype=torch.float32)
        views, offset = {}, 0
        for name in names:
            view = flat[offset:offset + math.prod(shapes[name])].view(shapes[name])
            offset += view.numel()
            if kind == "uniform":
                view.uniform_(0.0, 1.0, generator=g)
            else:
                scale = float(torch.empty(()).log_normal_(0.0, 1.0, generator=g))
                view.normal_(0.0, scale, generator=g).abs_().mul_(magnitude[name])
            views[name] = view
        out[task] = views
    return out


# ----------------------------------------------------------------------------------------------------------
# memory and formatting


def cuda_peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Extra CUDA memory `fn` needs at its peak, above what was allocated before it (MiB)."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


def ratio(a: float, b: float) -> str:
    """`a / b` as `1.23x` (a table cell)."""
    return f"{a / b:.2f}x" if b else "n/a"


def machine_line(device: torch.device) -> str:
    """One line naming what ran the benchmark, printed above every table."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {os.cpu_count()} cores visible"
    load = os.getloadavg()[0]
    line = (f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average {load:.1f} at start")
    if device.type == "cpu" and load > (os.cpu_count() or 1) - 0.5:     # our own previous run lingers at ~1
        line += ("\nnote: other jobs are using this machine's cores; timings with more than one thread wait for "
                 "busy cores and are unreliable (ratios at --threads 1 hold up)")
    return line
