#!/usr/bin/env python3
"""Evaluate a checkpoint on the test split: the paper's metrics as a table and `{dest}/metrics_{name}.json`.

  python eval_pruned_net.py --dataset nyuv2 --method disparse_static --ratio 90 --dest /data
  python eval_pruned_net.py --dataset nyuv2 --method baseline --dest /data
  python eval_pruned_net.py --dataset nyuv2 --checkpoint runs/best_nyuv2_snip_90.pth --compat adashare --baseline-metrics runs/metrics_nyuv2_baseline.json

Which file: --checkpoint PATH, or the original naming {dest}/best_{dataset}_{method}_{ratio}.pth
(best_{dataset}_baseline.pth for --method baseline). Dense or sparse, in our checkpoint format or a
state dict saved by the original code (task<k> heads map to the config's k-th task).

The JSON holds the metrics with the original keys (DESIGN.md contract 8), `sparsity` (fraction of
pruned prunable weights: from the masks when the file has them, else the exact zeros of the weights)
and `delta_m` (percent, against --baseline-metrics) with `delta_m_definition` (the config's
eval.delta_m_definition: task_mean or metric_mean, docs/METRICS.md) when a baseline is given. The name is the
network name ({dataset}_{method}_{ratio}, {dataset}_baseline) or, for --checkpoint, the file name
without `.pth` and without a leading `best_`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from engine.cli import base_parser, config_from_args, percent, ratio_label, run_main

METHODS = ("baseline", "disparse_static", "disparse_pt", "disparse_dynamic", "snip", "random", "magnitude",
           "rigl", "lth")
DEFAULT_RATIO = 90.0


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__)
    parser.formatter_class = HelpFormatter
    parser.add_argument("--checkpoint", default=None, metavar="PATH", help="the checkpoint file to evaluate")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="with --ratio and --dest: evaluate {dest}/best_{dataset}_{method}_{ratio}.pth")
    parser.add_argument("--ratio", type=percent, default=DEFAULT_RATIO,
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
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="tqdm progress bar: auto = only when stderr is a terminal")
    return parser


def resolve_checkpoint(args: argparse.Namespace, dataset: str) -> tuple[Path, str, Path]:
    """(checkpoint path, network name, output folder)."""
    if args.checkpoint:
        path = Path(args.checkpoint)
        stem = path.name[:-4] if path.name.endswith(".pth") else path.stem
        name = stem[len("best_"):] if stem.startswith("best_") else stem
        return path, name, Path(args.dest) if args.dest else path.parent
    if args.method is None:
        raise ValueError("give --checkpoint PATH, or --method METHOD [--ratio R] --dest DIR")
    dest = Path(args.dest) if args.dest else Path(".")
    if args.method == "baseline":
        name = f"{dataset}_baseline"
    else:
        name = f"{dataset}_{args.method}_{ratio_label(args.ratio)}"
    return dest / f"best_{name}.pth", name, dest


def read_baseline(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"baseline metrics file not found: {file}")
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f"baseline metrics file {file} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"baseline metrics file {file} must hold a JSON object")
    return data


def weight_sparsity(model: torch.nn.Module) -> float:
    """Fraction of exact zeros over the prunable weights (for files without masks)."""
    from prune_utils.masks import prunable_parameters
    params = prunable_parameters(model)
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return zeros / total if total else 0.0


def run(args: argparse.Namespace) -> dict:
    from dataloaders import build_loader
    from engine.checkpoint import load_model_file
    from engine.evaluate import evaluate, write_metrics
    from engine.metrics import format_table
    from engine.runtime import seed_everything, select_device
    from models import build_model
    from prune_utils.masks import apply_masks, check_masks, sparsity as mask_sparsity

    config = config_from_args(args)
    path, name, out_dir = resolve_checkpoint(args, config["dataset"])
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    baseline = read_baseline(args.baseline_metrics) if args.baseline_metrics else None
    device = select_device(args.device)
    seed_everything(args.seed)
    model = build_model(config, "cpu")
    loaded = load_model_file(path, model, config)
    masks = loaded["masks"]
    if masks:
        check_masks(model, masks)
        apply_masks(model, masks)
        sparsity = float(mask_sparsity(masks))
    else:
        sparsity = weight_sparsity(model)
    model = model.to(device)
    if config["model"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    kind = "original-format" if loaded["original"] else (loaded["meta"].get("method") or "our")
    print(f"evaluating {path} ({kind} checkpoint, sparsity {100 * sparsity:.2f}%) on the {args.split} split")
    loader = build_loader(config, args.split, shuffle=False, distributed=False, train=False)
    progress = {"auto": sys.stderr.isatty(), "on": True, "off": False}[args.progress]
    if "sn" in config["tasks"]:
        print(f"normal predictions read in the {loaded['normals_space']} space")
    metrics = evaluate(model, loader, config, loader.dataset, device, compat=args.compat, progress=progress,
                       normals_space=loaded["normals_space"])
    metrics["sparsity"] = sparsity
    if baseline is not None:
        from engine.delta_m import delta_m
        definition = config["eval"]["delta_m_definition"]
        value = delta_m(metrics, baseline, definition)
        metrics["delta_m"] = value if math.isfinite(value) else float("nan")
        metrics["delta_m_definition"] = definition
    print(format_table(metrics))
    out = out_dir / f"metrics_{name}.json"
    write_metrics(out, metrics)
    print(f"wrote {out}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: run(args))


if __name__ == "__main__":
    main()
