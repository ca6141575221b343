#!/usr/bin/env python3
"""Export any of our nets to ONNX (one input `img`, one output per task) and check it against PyTorch.

  python export_onnx.py --dataset nyuv2 --checkpoint /data/nyuv2_disparse_channel_50.pth
  python export_onnx.py --dataset synthetic --checkpoint runs/syn/best_synthetic_baseline.pth --out baseline.onnx

The net is built as every tool builds it (methods/pipeline.py, `open_net`): from the file's architecture
spec for a channel-pruned or extracted net, else the config's net; a masked (unstructured) net exports with
its zeros, which makes it no faster (docs/CHANNELS.md). The graph has one input `img` (N x 3 x H x W float32,
N, H and W dynamic) and one output per task, named by the task, in task order, at 1/8 of the input size
(opset 17). Unless --no-check, onnxruntime runs the file on random images (batch 1 at --input-size, batch 2
at a second size) and every output must match PyTorch's (eval mode) within --atol.

Writes --out (default: the checkpoint's path with .onnx). Running it:

  import numpy as np, onnxruntime as ort
  session = ort.InferenceSession("net.onnx", providers=["CPUExecutionProvider"])
  outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"img": image})))
  # image: float32 N x 3 x H x W, normalised as the data loaders do; outputs: task -> N x C x H/8 x W/8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from engine.cli import base_parser, image_size, run_main
from engine.config import config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="the net to export (ours, channel-pruned, extracted, compact or original-format)")
    parser.add_argument("--out", default=None, metavar="PATH", help="ONNX file to write (default: the checkpoint path with .onnx)")
    parser.add_argument("--input-size", type=image_size, default=None, metavar="HxW",
                        help="image size of the tracing and the first check (default: the config's crop)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest |onnxruntime - PyTorch| accepted per output value (fp32)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    return parser


def run(args) -> dict:
    import torch

    from fileio import atomic_write_bytes
    from methods.pipeline import open_net
    from models.onnx_export import check_onnx, export_onnx

    config = config_from_args(args)
    if args.atol <= 0:
        raise ValueError(f"--atol must be positive, got {args.atol}")
    path = Path(args.checkpoint)
    out = Path(args.out) if args.out else path.with_suffix(".onnx")
    size = args.input_size or (int(config["data"]["crop_h"]), int(config["data"]["crop_w"]))
    opened = open_net(path, config, "cpu")
    model = opened.model.float()
    tasks = list(opened.config["tasks"])
    onnx_bytes = export_onnx(model, size, opset=args.opset)
    atomic_write_bytes(out, onnx_bytes)
    params = sum(p.numel() for p in model.parameters())
    print(f"exported {path} ({params:,} parameters; outputs {', '.join(tasks)}) -> {out} "
          f"({len(onnx_bytes) / 2**20:.1f} MiB)")
    result = {"onnx": str(out), "tasks": tasks, "bytes": len(onnx_bytes)}
    if not args.no_check:
        gen = torch.Generator().manual_seed(args.seed)
        second = (size[0] // 2 + 5, size[1] // 2 + 3)
        inputs = [torch.randn(1, 3, *size, generator=gen), torch.randn(2, 3, *second, generator=gen)]
        scales: dict[str, float] = {}
        worst = check_onnx(model, onnx_bytes, inputs, atol=args.atol, scales=scales)
        print("onnxruntime vs PyTorch over batch 1 at {} and batch 2 at {}: max |difference| {} (<= {:g}; "
              "max |output| {})".format("x".join(map(str, size)), "x".join(map(str, second)),
                                        ", ".join(f"{t} {d:.2e}" for t, d in worst.items()), args.atol,
                                        ", ".join(f"{t} {v:.3g}" for t, v in scales.items())))
        result.update(max_abs_diff=worst, max_abs_output=scales)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
