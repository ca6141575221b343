"""Per-layer IoU of per-task keep masks (docs/ORIGINAL.md §8): how much of the backbone the tasks share.

Input: per-task mask sets, `dict[task, MaskSet]`, each covering at least the backbone's prunable
weights (True = the task keeps the weight). Before any arbiter runs, every task has its own mask.

Measures, per backbone layer l (K_{t,l} = task t's keep mask of layer l):

* **all-task IoU** ``|∩_t K_t| / |∪_t K_t|``: the true Jaccard index of the T sets, for any T. For
  two tasks it is the pairwise IoU.
* **pairwise IoU** for every unordered task pair (in config order), ``|K_a ∩ K_b| / |K_a ∪ K_b|``.
* **compat** (the original's number): with M = Σ_t K_t (how many tasks keep each weight),
  ``#{M = 2} / #{M ∈ {1, 2}}``. For two tasks it equals the IoU; for more tasks it silently drops
  every weight kept by 3 or more tasks from numerator and denominator, so it is *not* a multi-task
  IoU (docs/ORIGINAL.md §8 quirk, §11.18). Kept only to compare with the published Taskonomy row.

Convention: when the denominator is empty (no task keeps any weight of the layer) the sets are all
equal (empty), and the IoU is 1.0. `compat` stays the original's number there: 0/0 = NaN (written as
null in JSON), e.g. a 5-task layer whose every kept weight is kept by 3 or more tasks.

Overall ("Total IoU"): the same ratios pooled over the weights of *all* backbone layers (shortcuts
included), i.e. the IoU of the whole backbone masks. The unweighted mean over the conv layers is
also reported (`mean_conv`), since that is what averaging the plotted bars gives.

Layer order and shortcuts come from the model's `TaskStructure`: the shared chain layers in forward
order (stem, then the blocks' conv1 / conv2 stage by stage) numbered 0.. (0..32 for ResNet-34), which
is the x axis of the paper's density plot. The three 1×1 projection shortcuts (the structure's side
layers, the backbone's `ds` module list) sit beside that chain rather than in it; like the original
plot they are reported (index None, kind "shortcut") but excluded from the numbering and from the
watershed.

Watershed rule (documented, deterministic): over the conv layers in forward order, with v_i the
all-task IoU of layer i, the watershed is the layer i ≥ 1 with the largest drop ``v_{i-1} − v_i``
(the first one on ties; no watershed if the profile never falls). It is the layer from which the
tasks' masks part ways. On the original's shipped NYUv2, Cityscapes and Taskonomy profiles this rule
picks `backbone.blocks.2.0.conv2` (plot index 16), the layer the paper names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Mapping, Sequence

import torch

from .mask_builder import task_masks
from .structure import TaskStructure

PAIR_SEP = "_X_"


# --------------------------------------------------------------------------------------------------
# Task pairs


def pair_key(a: str, b: str) -> str:
    """`seg_X_sn`: the original's key for a task pair."""
    return f"{a}{PAIR_SEP}{b}"


def task_pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    """Unordered pairs in config order: (t0, t1), (t0, t2), ..., (t1, t2), ..."""
    return list(combinations(tasks, 2))


# --------------------------------------------------------------------------------------------------
# Pure measures on masks


def _flat_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask.detach().reshape(-1).to(torch.bool)


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def intersection_union(masks: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(|∩ masks|, |∪ masks|) of same-shaped boolean masks (any number ≥ 1)."""
    if not masks:
        raise ValueError("intersection_union needs at least one mask")
    shape = tuple(masks[0].shape)
    inter = _flat_bool(masks[0]).clone()
    union = inter.clone()
    for m in masks[1:]:
        if tuple(m.shape) != shape:
            raise ValueError(f"masks of different shapes: {shape} vs {tuple(m.shape)}")
        flat = _flat_bool(m)
        inter &= flat
        union |= flat
    return int(torch.count_nonzero(inter)), int(torch.count_nonzero(union))


def iou(masks: Sequence[torch.Tensor]) -> float:
    """True IoU |∩|/|∪| of any number of masks; 1.0 when all are empty."""
    return _ratio(*intersection_union(masks))


def keep_count_histogram(masks: Sequence[torch.Tensor]) -> list[int]:
    """h[m] = number of weights kept by exactly m of the masks, m = 0..len(masks)."""
    votes = torch.zeros(masks[0].numel(), dtype=torch.int64)
    for m in masks:
        votes += _flat_bool(m).to(torch.int64)
    return [int(c) for c in torch.bincount(votes, minlength=len(masks) + 1)]


def compat_counts(masks: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The original's (#{M=2}, #{M∈{1,2}}); see the module docstring."""
    h = keep_count_histogram(masks)
    two = h[2] if len(h) > 2 else 0
    return two, h[1] + two


def _compat_ratio(num: int, den: int) -> float:
    """The original's integer division: NaN for 0/0."""
    return num / den if den else math.nan


def compat_iou(masks: Sequence[torch.Tensor]) -> float:
    """#{M=2}/#{M∈{1,2}} (the original's metric, NaN when no weight is kept by 1 or 2 of the masks);
    equals `iou` for two masks, except that two empty masks give NaN here and 1.0 there."""
    return _compat_ratio(*compat_counts(masks))


def watershed(profile: Sequence[float]) -> dict[str, Any] | None:
    """Index i ≥ 1 with the largest drop profile[i-1] − profile[i] > 0 (first on ties).

    None when the profile never falls (fewer than 2 values, or monotone non-decreasing).
    """
    best, best_drop = None, 0.0
    for i in range(1, len(profile)):
        drop = float(profile[i - 1]) - float(profile[i])
        if drop > best_drop:
            best, best_drop = i, drop
    if best is None:
        return None
    return {"index": best, "drop": best_drop, "before": float(profile[best - 1]), "after": float(profile[best])}


WATERSHED_RULE = ("the conv layer (forward order, shortcuts excluded) with the largest drop of the "
                  "all-task IoU from the previous conv layer; first on ties; none if the IoU never falls")


# --------------------------------------------------------------------------------------------------
# The report


@dataclass
class LayerIoU:
    name: str
    index: int | None            # position in the forward conv chain; None for a shortcut
    kind: str                    # "conv" | "shortcut"
    numel: int
    kept: dict[str, int]         # task -> kept weights in this layer
    all: float                   # all-task IoU
    pairs: dict[str, float]      # "a_X_b" -> pairwise IoU
    compat: float                # #{M=2}/#{M in {1,2}}
    counts: dict[str, Any] = field(default_factory=dict)   # raw intersections/unions for pooling

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "kind": self.kind, "numel": self.numel,
                "kept": dict(self.kept), "all": self.all, "pairs": dict(self.pairs), "compat": _json_number(self.compat)}


@dataclass
class IoUReport:
    tasks: list[str]
    layers: list[LayerIoU]
    overall: dict[str, Any]
    watershed: dict[str, Any] | None
    pair_watersheds: dict[str, Any]

    @property
    def conv_layers(self) -> list[LayerIoU]:
        return [layer for layer in self.layers if layer.kind == "conv"]

    @property
    def shortcut_layers(self) -> list[LayerIoU]:
        return [layer for layer in self.layers if layer.kind == "shortcut"]

    def profile(self, which: str = "all") -> list[float]:
        """IoU over the conv layers in forward order: `all`, `compat` or a pair key."""
        return [_value(layer, which) for layer in self.conv_layers]

    def as_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "pairs": [pair_key(a, b) for a, b in task_pairs(self.tasks)],
                "layers": [layer.as_dict() for layer in self.layers],
                "overall": {**self.overall, "compat": _json_number(self.overall["compat"])},
                "watershed": self.watershed, "pair_watersheds": self.pair_watersheds,
                "watershed_rule": WATERSHED_RULE,
                "compat_note": "compat = #{M=2}/#{M in {1,2}} with M the number of tasks keeping a weight "
                               "(the original's metric; equals the IoU for two tasks only)",
                "empty_convention": "IoU of empty masks is 1.0"}


def _json_number(value: float) -> float | None:
    """NaN (the original's 0/0) as None, so the report stays valid JSON."""
    return None if math.isnan(value) else value


def _value(layer: LayerIoU, which: str) -> float:
    if which == "all":
        return layer.all
    if which == "compat":
        return layer.compat
    return layer.pairs[which]


def _check_task_masks(task_masks: Mapping[str, Mapping[str, torch.Tensor]], structure: TaskStructure) -> list[str]:
    tasks = list(task_masks)
    if len(tasks) < 2:
        raise ValueError(f"IoU analysis needs at least two tasks, got {tasks}")
    first = task_masks[tasks[0]]
    names = [n for n in structure.shared if n in first]
    if not names:
        raise ValueError(f"the mask set of task {tasks[0]!r} holds no backbone layer")
    for task in tasks[1:]:
        missing = [n for n in names if n not in task_masks[task]]
        if missing:
            raise ValueError(f"the mask set of task {task!r} lacks backbone layer {missing[0]!r}")
        for n in names:
            if tuple(task_masks[task][n].shape) != tuple(first[n].shape):
                raise ValueError(f"layer {n!r}: task {task!r} mask shape {tuple(task_masks[task][n].shape)} "
                                 f"differs from {tuple(first[n].shape)}")
    return names


def analyse(task_masks: Mapping[str, Mapping[str, torch.Tensor]], structure: TaskStructure | None = None) -> IoUReport:
    """Per-layer and pooled IoU of per-task mask sets over the backbone (see the module docstring).

    `task_masks`: task -> mask set (head entries, if any, are ignored); the task order is the dict
    order. `structure`: the model's `TaskStructure` (default: read from the masks' parameter paths,
    `TaskStructure.from_names`), which gives the layer order and the shortcuts.
    """
    if structure is None:
        structure = TaskStructure.from_names([n for per in task_masks.values() for n in per], list(task_masks))
    names = _check_task_masks(task_masks, structure)
    tasks = list(task_masks)
    convs = [n for n in names if n not in structure.side_layers]
    shortcuts = [n for n in names if n in structure.side_layers]
    pairs = task_pairs(tasks)
    pooled = {"all": [0, 0], "compat": [0, 0], **{pair_key(a, b): [0, 0] for a, b in pairs}}

    layers: list[LayerIoU] = []
    for kind, group in (("conv", convs), ("shortcut", shortcuts)):
        for position, name in enumerate(group):
            masks = [task_masks[t][name] for t in tasks]
            inter, union = intersection_union(masks)
            c_num, c_den = compat_counts(masks)
            pair_values, counts = {}, {"all": (inter, union), "compat": (c_num, c_den)}
            for a, b in pairs:
                key = pair_key(a, b)
                pi, pu = intersection_union([task_masks[a][name], task_masks[b][name]])
                pair_values[key] = _ratio(pi, pu)
                counts[key] = (pi, pu)
            for key, (num, den) in counts.items():
                pooled[key][0] += num
                pooled[key][1] += den
            layers.append(LayerIoU(
                name=name, index=position if kind == "conv" else None, kind=kind, numel=masks[0].numel(),
                kept={t: int(torch.count_nonzero(task_masks[t][name])) for t in tasks},
                all=_ratio(inter, union), pairs=pair_values, compat=_compat_ratio(c_num, c_den), counts=counts))

    conv_layers = [layer for layer in layers if layer.kind == "conv"]
    overall = {
        "all": _ratio(*pooled["all"]),
        "compat": _compat_ratio(*pooled["compat"]),
        "pairs": {pair_key(a, b): _ratio(*pooled[pair_key(a, b)]) for a, b in pairs},
        "mean_conv": (sum(layer.all for layer in conv_layers) / len(conv_layers)) if conv_layers else None,
        "pooled_over": "all backbone layers, shortcuts included",
    }
    report = IoUReport(tasks=tasks, layers=layers, overall=overall, watershed=None, pair_watersheds={})
    report.watershed = _named_watershed(report, "all")
    report.pair_watersheds = {pair_key(a, b): _named_watershed(report, pair_key(a, b)) for a, b in pairs}
    return report


def _named_watershed(report: IoUReport, which: str) -> dict[str, Any] | None:
    found = watershed(report.profile(which))
    if found is not None:
        found["layer"] = report.conv_layers[found["index"]].name
        found["rule"] = WATERSHED_RULE
    return found


def restricted_task_masks(scores: Mapping[str, Mapping[str, torch.Tensor]], kept: Mapping[str, torch.Tensor],
                          keep_ratio: float, structure: TaskStructure | None = None
                          ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """Per-task top-k restricted to a pruned net's kept weights: task t keeps `keep_ratio` of the weights
    `kept` keeps in its pool (its scores elsewhere are zeroed and its mask is ANDed with `kept`).

    Returns (task -> mask set over its pool, task -> the keep ratio of its whole pool that this is)."""
    out, ratios = {}, {}
    for task, per in scores.items():
        pool = sum(v.numel() for v in per.values())
        alive = sum(int(kept[n].sum()) for n in per)
        k = keep_ratio * alive / pool if pool else 0.0
        if alive == 0 or int(k * pool) < 1:
            raise ValueError(f"task {task!r}: the checkpoint keeps {alive} weights of its pool, too few for "
                             f"--keep-ratio {keep_ratio:g}")
        masked = {n: v.cpu() * kept[n].to(v.dtype).cpu() for n, v in per.items()}
        mask = task_masks({task: masked}, k, structure)[task]
        out[task] = {n: mask[n].cpu() & kept[n] for n in per}
        ratios[task] = k
    return out, ratios


# --------------------------------------------------------------------------------------------------
# Writers


def to_csv_rows(report: IoUReport) -> list[list[Any]]:
    """Header + one row per layer: index, layer, kind, numel, kept_<task>..., iou_all, iou_<pair>..., compat."""
    pairs = [pair_key(a, b) for a, b in task_pairs(report.tasks)]
    header = (["index", "layer", "kind", "numel"] + [f"kept_{t}" for t in report.tasks]
              + ["iou_all"] + [f"iou_{p}" for p in pairs] + ["compat"])
    rows: list[list[Any]] = [header]
    for layer in report.layers:
        rows.append([("" if layer.index is None else layer.index), layer.name, layer.kind, layer.numel]
                    + [layer.kept[t] for t in report.tasks]
                    + [f"{layer.all:.6f}"] + [f"{layer.pairs[p]:.6f}" for p in pairs] + [f"{layer.compat:.6f}"])
    overall = report.overall
    rows.append(["", "OVERALL (pooled)", "all", sum(layer.numel for layer in report.layers)]
                + [sum(layer.kept[t] for layer in report.layers) for t in report.tasks]
                + [f"{overall['all']:.6f}"] + [f"{overall['pairs'][p]:.6f}" for p in pairs]
                + [f"{overall['compat']:.6f}"])
    return rows


def summary_table(report: IoUReport, max_pairs: int = 6) -> str:
    """Fixed-width text table for the terminal."""
    pairs = [pair_key(a, b) for a, b in task_pairs(report.tasks)]
    multi = len(report.tasks) > 2
    shown = pairs[:max_pairs] if multi else []
    header = ["idx", "layer", "all-task IoU"] + shown + (["compat"] if multi else [])
    lines = []
    body = []
    for layer in report.layers:
        body.append([("-" if layer.index is None else str(layer.index)), layer.name, f"{layer.all:.4f}"]
                    + [f"{layer.pairs[p]:.4f}" for p in shown] + ([f"{layer.compat:.4f}"] if multi else []))
    body.append(["", "overall (pooled)", f"{report.overall['all']:.4f}"]
                + [f"{report.overall['pairs'][p]:.4f}" for p in shown]
                + ([f"{report.overall['compat']:.4f}"] if multi else []))
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) if i == 1 else str(c).rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(row) for row in body)
    if report.overall.get("mean_conv") is not None:
        lines.append(f"mean over conv layers (unweighted): {report.overall['mean_conv']:.4f}")
    if report.watershed is not None:
        w = report.watershed
        lines.append(f"watershed: layer {w['index']} {w['layer']} (all-task IoU {w['before']:.4f} -> "
                     f"{w['after']:.4f}, drop {w['drop']:.4f})")
    if len(pairs) > len(shown) and multi:
        lines.append(f"({len(pairs) - len(shown)} more pairs in the JSON/CSV)")
    return "\n".join(lines)
