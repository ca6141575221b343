"""Sparsity report: per-layer rows, per-part summaries, parameter and multiply-accumulate (MAC) counts.

* `layer_rows(masks, model=None)`: one row per prunable weight: `name`, `owner` (`backbone` or the task),
  `shape`, `total`, `kept`, `sparsity` (fraction pruned).
* `summarize(rows)`: the same totals per part (`backbone`, then each head in order) and `overall`.
* `param_counts(model, masks)`: all learnable parameters, dense and after pruning (biases and BN stay).
* `mac_counts(model, masks, input_size)`: MACs of every Conv2d / Linear for one input of `input_size`
  (batch 1), found with forward hooks: conv MACs = output elements × (in_channels / groups × kH × kW),
  linear MACs = output elements × in_features. The "kept" MACs multiply each layer's dense count by its
  density (kept / total): this assumes the unstructured sparsity is exploited by the kernel, which dense
  PyTorch kernels do not do. Bias additions, BN, activations and pooling are not counted.
  FLOPs ≈ 2 × MACs. By default the forward runs on an empty batch (`input_size` with 0 samples) on the
  model's own device: the kernels work out every output shape and compute nothing. (The `meta` device
  would do the same through Python decompositions, whose first use imports torch._dynamo: seconds.)
* `build_report`, `format_table`, `write_csv`, `write_json` put it together.
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fileio import atomic_write_json, atomic_write_text

from .masks import PRUNABLE_TYPES, check_masks, prunable_parameters, unwrap
from .structure import SHARED, TaskStructure

OVERALL = "overall"


def _sparsity(kept: int, total: int) -> float:
    return 1.0 - kept / total if total else 0.0


def layer_rows(masks: Mapping[str, torch.Tensor], model: nn.Module | None = None,
               structure: TaskStructure | None = None) -> list[dict[str, Any]]:
    """One row per prunable weight (in the model's order when `model` is given, else the mask set's).

    The owner column comes from `structure` (default: the model's, or the masks' parameter paths)."""
    if model is not None:
        check_masks(model, masks)
        names = list(prunable_parameters(model))
        structure = structure or TaskStructure.from_model(model)
    else:
        names = list(masks)
        structure = structure or TaskStructure.from_names(names)
    rows = []
    for name in names:
        total, kept = _total_and_kept(masks[name])
        rows.append({"name": name, "owner": structure.part(name), "shape": list(masks[name].shape), "total": total,
                     "kept": kept, "sparsity": _sparsity(kept, total)})
    return rows


def _total_and_kept(mask: torch.Tensor) -> tuple[int, int]:
    """(total, kept) of one mask: the one pass over its elements a report makes."""
    return mask.numel(), int(mask.count_nonzero())


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{part: {total, kept, sparsity, layers}} for `backbone`, each head (first-seen order) and `overall`."""
    parts: dict[str, dict[str, Any]] = {}
    for row in rows:
        part = parts.setdefault(row["owner"], {"total": 0, "kept": 0, "layers": 0})
        part["total"] += row["total"]
        part["kept"] += row["kept"]
        part["layers"] += 1
    ordered = {SHARED: parts.pop(SHARED)} if SHARED in parts else {}
    ordered.update(parts)
    ordered[OVERALL] = {"total": sum(p["total"] for p in ordered.values()),
                        "kept": sum(p["kept"] for p in ordered.values()),
                        "layers": sum(p["layers"] for p in ordered.values())}
    for part in ordered.values():
        part["sparsity"] = _sparsity(part["kept"], part["total"])
    return ordered


def param_counts(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Learnable parameter counts: total, prunable (Conv/Linear weights), other (biases, BN), and kept."""
    kept = {n: _total_and_kept(m)[1] for n, m in masks.items()} if masks is not None else None
    return _param_counts(model, kept)


def _param_counts(model: nn.Module, kept: Mapping[str, int] | None) -> dict[str, int]:
    """`param_counts` from the kept count of each masked weight (a weight without one counts as dense)."""
    model = unwrap(model)
    prunable = prunable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    n_prunable = sum(w.numel() for w in prunable.values())
    kept_prunable = (sum(kept.get(n, w.numel()) for n, w in prunable.items()) if kept is not None else n_prunable)
    return {"total": total, "prunable": n_prunable, "other": total - n_prunable,
            "prunable_kept": kept_prunable, "kept": total - n_prunable + kept_prunable}


def _layer_macs(model: nn.Module, input_size: Sequence[int], device: str | torch.device | None) -> dict[str, int]:
    """Dense MACs per sample per Conv2d/Linear module (by weight name) for a forward of `input_size`.

    `device=None`: an empty batch on the model's device (shapes only); "meta": the meta device; else a
    real forward there."""
    macs: dict[str, int] = {}
    handles = []

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            per_sample = math.prod(output.shape[1:]) if output.dim() > 1 else output.numel()
            if isinstance(module, nn.Conv2d):
                fan = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            else:
                fan = module.in_features
            macs[f"{name}.weight"] = macs.get(f"{name}.weight", 0) + per_sample * fan
        return record

    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if device is None:
                model(torch.zeros((0, *input_size[1:]), device=next(model.parameters()).device))
            elif torch.device(device).type == "meta":
                x = torch.zeros(tuple(input_size), device=device)
                state = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict(keep_vars=True).items()}
                torch.func.functional_call(model, state, (x,))
            else:
                model(torch.zeros(tuple(input_size), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return macs


def mac_counts(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
               input_size: Sequence[int] = (1, 3, 321, 321), device: str | torch.device | None = None,
               structure: TaskStructure | None = None) -> dict[str, Any]:
    """{"layers": {name: {dense, kept}}, "parts": {part: {dense, kept}}, "dense", "kept", "input_size"}.

    Counted for a batch of one (`input_size[0]` only sets the batch of a real forward). `device=None`
    runs an empty batch on the model's device (no arithmetic), falling back to the meta device for a
    model that refuses empty batches; "meta" or a real device runs there.
    """
    fractions = None
    if masks is not None:
        fractions = {n: _total_and_kept(m) for n, m in masks.items()}
    return _mac_counts(model, fractions, input_size, device, structure)


def _mac_counts(model: nn.Module, fractions: Mapping[str, tuple[int, int]] | None, input_size: Sequence[int],
                device: str | torch.device | None, structure: TaskStructure | None) -> dict[str, Any]:
    """`mac_counts` from (total, kept) per masked weight."""
    model = unwrap(model)
    structure = structure or TaskStructure.from_model(model)
    try:
        dense = _layer_macs(model, input_size, device)
    except (NotImplementedError, RuntimeError):
        if device is not None:
            raise
        dense = _layer_macs(model, input_size, "meta")
    layers: dict[str, dict[str, float]] = {}
    parts: dict[str, dict[str, float]] = {}
    for name, count in dense.items():
        if fractions is not None and name in fractions:
            total, kept_weights = fractions[name]
            density = kept_weights / total if total else 0.0
        else:
            density = 1.0
        kept = count * density
        layers[name] = {"dense": count, "kept": kept}
        part = parts.setdefault(structure.part(name), {"dense": 0, "kept": 0.0})
        part["dense"] += count
        part["kept"] += kept
    total_dense = sum(v["dense"] for v in layers.values())
    total_kept = sum(v["kept"] for v in layers.values())
    return {"input_size": list(input_size), "layers": layers, "parts": parts, "dense": total_dense,
            "kept": total_kept}


def build_report(model: nn.Module, masks: Mapping[str, torch.Tensor],
                 input_size: Sequence[int] | None = (1, 3, 321, 321),
                 structure: TaskStructure | None = None) -> dict[str, Any]:
    """Everything at once: {"layers", "summary", "params", "macs"} (MACs skipped when input_size is None).

    Each mask is counted once (the rows); parameter and MAC totals reuse those counts."""
    structure = structure or TaskStructure.from_model(model)
    rows = layer_rows(masks, model, structure)
    params = _param_counts(model, {row["name"]: row["kept"] for row in rows})
    report: dict[str, Any] = {"layers": rows, "summary": summarize(rows), "params": params}
    if input_size is not None:
        macs = _mac_counts(model, {row["name"]: (row["total"], row["kept"]) for row in rows}, input_size, None,
                           structure)
        for row in rows:
            layer = macs["layers"].get(row["name"], {"dense": 0, "kept": 0.0})
            row["macs_dense"] = layer["dense"]
            row["macs_kept"] = layer["kept"]
        report["macs"] = {k: v for k, v in macs.items() if k != "layers"}
    return report


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_table(report_or_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """A printable table: one line per layer, then the per-part summary (and params/MACs when present)."""
    if isinstance(report_or_rows, Mapping):
        report = report_or_rows
        rows = report["layers"]
    else:
        rows = list(report_or_rows)
        report = {"layers": rows, "summary": summarize(rows)}
    width = max([len("layer")] + [len(r["name"]) for r in rows])
    owner_w = max([len("owner")] + [len(r["owner"]) for r in rows])
    with_macs = bool(rows) and "macs_dense" in rows[0]
    head = f"{'layer':<{width}}  {'owner':<{owner_w}}  {'shape':<18} {'total':>12} {'kept':>12} {'sparsity':>9}"
    if with_macs:
        head += f" {'MACs':>9} {'kept MACs':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])
        line = (f"{r['name']:<{width}}  {r['owner']:<{owner_w}}  {shape:<18} {r['total']:>12,} {r['kept']:>12,} "
                f"{100 * r['sparsity']:>8.2f}%")
        if with_macs:
            line += f" {_human(r['macs_dense']):>9} {_human(r['macs_kept']):>9}"
        lines.append(line)
    lines.append("-" * len(head))
    for part, s in report["summary"].items():
        lines.append(f"{part:<{width}}  {'':<{owner_w}}  {str(s['layers']) + ' layers':<18} {s['total']:>12,} "
                     f"{s['kept']:>12,} {100 * s['sparsity']:>8.2f}%")
    if "params" in report:
        p = report["params"]
        lines.append(f"parameters: {p['total']:,} dense, {p['kept']:,} kept "
                     f"({p['prunable']:,} prunable of which {p['prunable_kept']:,} kept; {p['other']:,} biases/BN)")
    if "macs" in report:
        m = report["macs"]
        ratio = m["kept"] / m["dense"] if m["dense"] else 0.0
        lines.append(f"MACs for input {'x'.join(map(str, m['input_size']))}: {_human(m['dense'])} dense, "
                     f"{_human(m['kept'])} with the sparsity exploited ({100 * ratio:.2f}%)")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """One CSV line per layer (shape written as e.g. 64x3x7x7), written atomically."""
    fields = ["name", "owner", "shape", "total", "kept", "sparsity"]
    if rows and "macs_dense" in rows[0]:
        fields += ["macs_dense", "macs_kept"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "shape": "x".join(str(s) for s in row["shape"])})
    atomic_write_text(path, buffer.getvalue())


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    atomic_write_json(path, report)
