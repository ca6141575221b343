#!/usr/bin/env python3
"""Evaluate a checkpoint on the test split: the paper's metrics as a table and `{dest}/metrics_{name}.json`.

  python eval_pruned_net.py --dataset nyuv2 --method disparse_static --ratio 90 --dest /data
  python eval_pruned_net.py --dataset nyuv2 --method baseline --dest /data
  python eval_pruned_net.py --dataset nyuv2 --checkpoint runs/best_nyuv2_snip_90.pth --compat adashare --baseline-metrics runs/metrics_nyuv2_baseline.json

Which file: --checkpoint PATH, or the original naming {dest}/best_{dataset}_{method}_{ratio}.pth
(best_{dataset}_baseline.pth for --method baseline). Dense or sparse, in our checkpoint format, the
compact export, or a state dict saved by the original code (task<k> heads map to the config's k-th task).

A channel-pruned or extracted net is built from the architecture spec in its file (an extracted net is
evaluated on its own tasks). The JSON holds the metrics with the original keys (docs/ARCHITECTURE.md
contract 8), `sparsity` (fraction of pruned prunable weights: from the masks when the file has them, else
the exact zeros of the weights), `cost` (parameters, MACs and the measured batch-1 latency at the
evaluation size; `macs_removed` / `params_removed` for a channel-pruned net) and, when a baseline is
given, `delta_m` (percent, against --baseline-metrics) with `delta_m_definition`
(the config's eval.delta_m_definition: task_mean or metric_mean, docs/METRICS.md); an undefined value is
written as null (with a warning). It also records what produced it: `split`, `metrics_compat` and
`checkpoint`. Normal predictions are read in the space the file records (docs/METRICS.md). The file is
`metrics_{name}[_{split}][_adashare].json` (the default, test split with standard metrics, is
`metrics_{name}.json`), so evaluations of other kinds never replace each other; the name is the network
name ({dataset}_{method}_{ratio}, {dataset}_baseline) or, for --checkpoint, the file name without `.pth`
and without a leading `best_`. --baseline-metrics must come from the same split and metric definitions.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from engine.cli import add_progress_argument, base_parser, percent, run_main
from engine.config import config_from_args
from methods.registry import method_names


def build_parser():
    parser = base_parser(__doc__)
    parser.add_argument("--checkpoint", default=None, metavar="PATH", help="the checkpoint file to evaluate")
    parser.add_argument("--method", choices=method_names(), default=None,
                        help="with --ratio and --dest: evaluate {dest}/best_{dataset}_{method}_{ratio}.pth")
    parser.add_argument("--ratio", type=percent, default=90.0,
                        help="sparsity in percent, as used in the file name (with --method)")
    parser.add_argument("--dest", "--model-path", dest="dest", default=None, metavar="DIR",
                        help="folder of the checkpoints, and where metrics_{name}.json goes (default: the "
                             "checkpoint's folder, or . with --method); --model-path is the original's name")
    parser.add_argument("--baseline-metrics", default=None, metavar="FILE",
                        help="metrics JSON of the dense baseline: adds delta_m (percent, positive = better)")
    parser.add_argument("--compat", choices=("standard", "adashare"), default=None,
                        help="metric definitions: standard, or the original's quirks; unset = the config's "
                             "eval.metrics_compat")
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--latency-runs", type=int, default=5, metavar="N",
                        help="timed batch-1 forward passes at the evaluation size for the latency in the metrics' "
                             "`cost` (median; 0 skips it)")
    add_progress_argument(parser)
    return parser


def resolve_checkpoint(args, dataset: str):
    """(checkpoint path, the RunFiles its metrics are named by)."""
    from methods.base import RunFiles
    from methods.registry import get_method

    if args.checkpoint:
        path = Path(args.checkpoint)
        stem = path.name[:-4] if path.name.endswith(".pth") else path.stem
        name = stem[len("best_"):] if stem.startswith("best_") else stem
        return path, RunFiles(Path(args.dest) if args.dest else path.parent, name)
    if args.method is None:
        raise ValueError("give --checkpoint PATH, or --method METHOD [--ratio R] --dest DIR")
    method = get_method(args.method)
    files = method.files(args.dest or ".", dataset, args.ratio if method.uses_ratio else None)
    return files.checkpoint("best"), files


def run(args) -> dict:
    from engine.delta_m import delta_m
    from engine.metrics import metric_tasks
    from engine.runtime import seed_everything, select_device
    from fileio import read_json
    from methods.outputs import claim_outputs
    from methods.pipeline import (check_baseline_kind, check_metrics_target, evaluate_split, metrics_provenance,
                                  net_cost, open_net, report_metrics)

    config = config_from_args(args)
    compat = args.compat or config["eval"]["metrics_compat"]
    path, files = resolve_checkpoint(args, config["dataset"])
    out = files.metrics_for(args.split, compat)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    baseline = read_json(args.baseline_metrics, "baseline metrics file", dict) if args.baseline_metrics else None
    if args.latency_runs < 0:
        raise ValueError(f"--latency-runs must be 0 or more, got {args.latency_runs}")
    if baseline is not None:
        check_baseline_kind(baseline, args.baseline_metrics, args.split, compat)
    with claim_outputs(files.dest, files.name, [out]):
        check_metrics_target(out, args.split, compat)
        device = select_device(args.device)
        seed_everything(args.seed)
        opened = open_net(path, config, "cpu")
        model, loaded, sparsity = opened.model, opened.weights, opened.sparsity
        kind = {"original": "original-format", "compact": "compact-export"}.get(loaded.kind) \
            or loaded.meta.get("method") or "our"
        shape = "channel-pruned, " if "architecture" in loaded.meta else ""
        subset = "" if opened.config["tasks"] == config["tasks"] else f", for {', '.join(opened.config['tasks'])} only"
        config = opened.config
        print(f"evaluating {path} ({kind} checkpoint, {shape}sparsity {100 * sparsity:.2f}%{subset}) on the "
              f"{args.split} split")
        progress = {"auto": sys.stderr.isatty(), "on": True, "off": False}[args.progress]
        if "sn" in config["tasks"]:
            print(f"normal predictions read in the {loaded.normals_space} space")
        metrics = evaluate_split(model, config, args.split, device, compat=compat, progress=progress,
                                 normals_space=loaded.normals_space)
        metrics["sparsity"] = sparsity
        metrics["cost"] = net_cost(model.to(device), config, loaded.meta, latency_runs=args.latency_runs)
        if baseline is not None:
            definition = config["eval"]["delta_m_definition"]
            # an extracted net is compared on its own tasks
            metrics["delta_m"] = delta_m(metrics, {k: v for k, v in baseline.items() if k not in
                                                   set(metric_tasks(baseline)) - set(config["tasks"])}, definition)
            metrics["delta_m_definition"] = definition
        report_metrics(metrics, out, metrics_provenance(args.split, compat, path))
    print(f"wrote {out}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
