"""Inference latency: dense vs channel-pruned nets, PyTorch eager vs onnxruntime, 1 and 2 threads.

The full-width NYUv2 net (seg: 40, sn: 3) at batch 1 and each `--sizes` input, against the same net
channel-pruned by `--method` to each `--ratios` % of its MACs removed (MACs counted at 321x321). Every net of
one (size, threads) setting is timed in alternation, round by round, in both runtimes, so the speedups
(dense time / pruned time, paired per round) are measured under the same machine load. Also: the MACs and
parameters removed, the files written (checkpoint `.pth` with the architecture spec, `.onnx`), and the peak
resident memory of one inference, each net and runtime in its own process (load the file, run once).

The channel scores come from one random batch (`--score-crop`): latency depends only on the widths the
method picks, not on how good they are. Targets (docs/BENCHMARKS.md, 2 CPU cores, 2 threads): at least 1.8x
faster at 50 % MACs removed and 3x at 70 %.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch loads OpenMP, and puts the repository on sys.path
from common import (base_parser, child_args, fake_batch, interleaved_samples, machine_line, paired_ratio,  # isort: skip
                    peak_rss_of, print_table, report_child, reset_peak_rss, current_rss_mib, spread, start,
                    thread_settings, workload)
import torch

from engine.cli import image_size
from fileio import atomic_save, make_checkpoint
from models import MultiTaskNet, architecture_of
from models.onnx_export import export_onnx, onnx_session
from prune_utils.channel_groups import channel_groups
from prune_utils.channel_pruning import CHANNEL_METHODS, prune_channels, score_for_method

TARGETS = {50: 1.8, 70: 3.0}            # speedup at that % MACs removed, 2 threads
MAC_SIZE = (321, 321)
DENSE = "dense"


def label_of(ratio: int) -> str:
    return DENSE if ratio == 0 else f"-{ratio}% MACs"


def load_net(path: Path) -> MultiTaskNet:
    """A checkpoint written by `build_nets`, rebuilt from its architecture spec (weights_only=True)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    net = MultiTaskNet(dict(zip(data["tasks"], data["num_classes"])), architecture=data["architecture"])
    net.load_state_dict(data["model"])
    return net.eval()


def build_nets(args: argparse.Namespace, out: Path) -> list[dict]:
    """The dense net and one pruned net per ratio, written as .pth and .onnx under `out`; one row each."""
    work = workload("nyuv2", args)
    dense = work.model().eval()
    tasks = list(work.tasks)
    start_time = time.perf_counter()
    groups = channel_groups(dense)
    batch = fake_batch(work.tasks, 1, (args.score_crop, args.score_crop), seed=args.seed)
    weights = dict(zip(tasks, work.config["loss_weights"]))
    scores = score_for_method(dense, groups, args.method, [batch], work.loss(), tasks, generator=args.seed,
                              loss_weights=weights, progress=False)
    print(f"channel groups and {args.method} scores: {time.perf_counter() - start_time:.1f} s", flush=True)
    rows = []
    for ratio in [0, *args.ratios]:
        start_time = time.perf_counter()
        if ratio == 0:
            net, fields = dense, {"architecture": architecture_of(dense)}
        else:
            result = prune_channels(dense, scores, method=args.method, arbiter=args.arbiter,
                                    macs_removed=ratio / 100, input_size=MAC_SIZE, groups=groups)
            net, fields = result.model.eval(), result.checkpoint_fields()
        name = "dense" if ratio == 0 else f"{args.method}_{ratio}"
        pth, onnx_file = out / f"nyuv2_{name}.pth", out / f"nyuv2_{name}.onnx"
        atomic_save(make_checkpoint(net.state_dict(), work.config, name, **fields), pth)
        onnx_file.write_bytes(export_onnx(net, input_size=MAC_SIZE))
        rows.append({"ratio": ratio, "label": label_of(ratio), "pth": pth, "onnx": onnx_file,
                     "macs_removed": fields.get("macs_removed", 0.0), "params_removed": fields.get("params_removed", 0.0),
                     "macs": fields["channels"]["macs"]["kept"] if ratio else None,
                     "params": sum(p.numel() for p in net.parameters()), "seconds": time.perf_counter() - start_time})
        if ratio:
            rows[0]["macs"] = fields["channels"]["macs"]["dense"]
        arch = architecture_of(net)
        heads = {t: [w for pair in arch["heads"][t] for w in pair] for t in tasks}
        print(f"{label_of(ratio)}: pruned, saved and exported in {rows[-1]['seconds']:.1f} s; stage widths "
              f"{arch['backbone']['stage_widths']}, block widths {arch['backbone']['block_widths']}, head widths "
              f"{heads}", flush=True)
    return rows


def run_child(args: argparse.Namespace) -> None:
    """`--child RUNTIME:HxW:FILE`: load one net, note the RSS, run one inference, report the peak (own process)."""
    runtime, size, path = args.child.split(":", 2)
    h, w = image_size(size)
    img = torch.randn(1, 3, h, w)
    torch.set_num_threads(1)
    if runtime == "torch":
        net = load_net(Path(path))
        reset_peak_rss()
        before = current_rss_mib()
        with torch.inference_mode():
            net(img)
    else:
        session = onnx_session(path, threads=1)
        reset_peak_rss()
        before = current_rss_mib()
        session.run(None, {"img": img.numpy()})
    report_child(base_rss_mib=before)


def time_setting(rows: list[dict], size: tuple[int, int], threads: int, args: argparse.Namespace) -> list[list]:
    """One table row per net: both runtimes timed in alternation with every other net, at `threads`."""
    torch.set_num_threads(threads)
    img = torch.randn(1, 3, *size)
    array = img.numpy()
    fns = {}
    for row in rows:
        net = load_net(row["pth"])
        session = onnx_session(row["onnx"], threads=threads, spin=False)

        def eager(net=net):
            with torch.inference_mode():
                net(img)
        fns[f"torch:{row['label']}"] = eager
        fns[f"ort:{row['label']}"] = lambda session=session: session.run(None, {"img": array})
    samples = interleaved_samples(fns, torch.device("cpu"), args.repeats, warmup=1)
    table = []
    for row in rows:
        label = row["label"]
        cells = [f"{size[0]}x{size[1]}", threads, label]
        for runtime in ("torch", "ort"):
            key = f"{runtime}:{label}"
            speedup = paired_ratio(samples, f"{runtime}:{DENSE}", key)
            target = TARGETS.get(row["ratio"])
            verdict = "-" if target is None or threads != 2 else f">= {target}x: {'met' if speedup >= target else 'MISSED'}"
            cells += [f"{statistics.median(samples[key]) * 1000:.0f}", f"{speedup:.2f}x", verdict]
        torch_key, ort_key = f"torch:{label}", f"ort:{label}"
        cells += [f"{paired_ratio(samples, torch_key, ort_key):.2f}x",
                  f"{max(spread(samples[torch_key]), spread(samples[ort_key])):.2f}"]
        table.append(cells)
    return table


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], width=1.0, crop=None, batch=None, repeats=3)
    parser.add_argument("--sizes", type=image_size, nargs="+", default=[(321, 321), (480, 640)],
                        help="input sizes HxW (default: 321x321 480x640)")
    parser.add_argument("--ratios", type=int, nargs="+", default=[30, 50, 70],
                        help="%% of MACs removed by the pruned nets (default: 30 50 70)")
    parser.add_argument("--method", choices=sorted(CHANNEL_METHODS), default="disparse_channel",
                        help="channel-pruning method (default: %(default)s)")
    parser.add_argument("--arbiter", default="unanimous", help="arbiter of disparse_channel (default: %(default)s)")
    parser.add_argument("--score-crop", type=int, default=161,
                        help="crop of the one random batch the channel scores come from (default: %(default)s)")
    parser.add_argument("--out-dir", default=None,
                        help="where the .pth/.onnx files go (default: a temporary folder, removed at the end)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = parser.parse_args()
    device = start(args)
    if args.child:
        run_child(args)
        return
    if device.type != "cpu":
        parser.error("this benchmark measures CPU inference (--device cpu)")
    if any(not 0 < r < 100 for r in args.ratios):
        parser.error("--ratios are percentages in (0, 100)")
    print(machine_line(device), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        out = Path(args.out_dir) if args.out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = build_nets(args, out)
        width = args.width if args.width is not None else 1.0
        print_table(f"Nets: NYUv2 net (seg 40, sn 3) at width {width:g}, {args.method} ({args.arbiter}), MACs at 321x321",
                    ["net", "MACs removed", "params removed", "GMACs", "params (M)", ".pth MB", ".onnx MB"],
                    [[r["label"], f"{r['macs_removed'] * 100:.1f} %", f"{r['params_removed'] * 100:.1f} %",
                      f"{r['macs'] / 1e9:.1f}", f"{r['params'] / 1e6:.1f}", f"{r['pth'].stat().st_size / 2**20:.1f}",
                      f"{r['onnx'].stat().st_size / 2**20:.1f}"] for r in rows])
        timings = []
        for size in args.sizes:
            for threads in thread_settings(args, device):
                print(f"timing {size[0]}x{size[1]}, {threads} thread(s) ...", flush=True)
                timings += time_setting(rows, size, threads, args)
        print_table(f"Latency, batch 1 (ms, median of {args.repeats}, interleaved; speedup = dense / pruned per round)",
                    ["input", "threads", "net", "torch ms", "torch speedup", "torch target", "ort ms", "ort speedup",
                     "ort target", "torch / ort", "spread"], timings)
        if not args.no_memory:
            memory = []
            for size in args.sizes:
                for row in rows:
                    cells = [f"{size[0]}x{size[1]}", row["label"]]
                    for runtime, path in (("torch", row["pth"]), ("ort", row["onnx"])):
                        variant = f"{runtime}:{size[0]}x{size[1]}:{path}"
                        peak, info = peak_rss_of(child_args(args, variant))
                        cells += [f"{peak:.0f}", f"{peak - info['base_rss_mib']:.0f}"]
                    memory.append(cells)
            print_table("Peak resident memory: load the file, run once, 1 thread, own process (MiB)",
                        ["input", "net", "torch peak", "torch: run above loaded", "ort peak", "ort: run above loaded"],
                        memory)


if __name__ == "__main__":
    main()
