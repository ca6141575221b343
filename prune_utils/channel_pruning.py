"""Structured DiSparse: channel-pruned multitask nets that are smaller dense nets (docs/CHANNELS.md).

The entry points, for a `models.MultiTaskNet`:

* `score_for_method(model, groups, method, batches, loss_fn, tasks, ...)`: the channel scores a method
  ranks by (per-task for `disparse_channel`, the summed loss for the task-agnostic baselines);
* `prune_channels(model, scores, method=..., arbiter=..., macs_removed=0.5)`: select, remove, rebuild;
  returns a `ChannelPruneResult` (the smaller dense net, its architecture spec, the fractions removed and
  a plain per-group report);
* `extract_tasks(model, tasks, report)`: a net for a subset of tasks with only the shared channels those
  tasks keep, plus their heads;
* `ChannelPruneResult.checkpoint_fields()`: the checkpoint keys of docs/ARCHITECTURE.md contract 11 (`architecture`,
  `macs_removed`, `params_removed`) plus `channels` (the report); the net reloads with
  `MultiTaskNet(tasks, architecture=ckpt["architecture"])` and `torch.load(..., weights_only=True)`.

| method | scores | selection |
|---|---|---|
| `disparse_channel` | per task, from each task's own loss (importance `snip` by default, or `taylor`, `magnitude`) | per task + arbiter |
| `channel_snip` / `channel_taylor` / `channel_magnitude` | the weighted summed loss | one global ranking |
| `uniform` | group L1 norm (which channels inside a group) | every width scaled alike |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from models import Architecture, MultiTaskNet, architecture_of

from .arbiters import ArbiterLike
from .channel_cost import ChannelCost
from .channel_groups import ChannelGroups, channel_groups, group_structure, remove_channels
from .channel_importance import GroupScores, score_channels
from .channel_selection import ChannelSelection, Target, at_least_one, select_channels
from .masks import unwrap
from .saliency import ALL
from .structure import SHARED, TaskStructure

REPORT_VERSION = 1
CHECKPOINT_KEYS = ("architecture", "macs_removed", "params_removed", "channels")
DEFAULT_IMPORTANCE = "snip"
DEFAULT_INPUT_SIZE = (321, 321)
Scorer = Callable[[nn.Module, ChannelGroups], GroupScores]


@dataclass(frozen=True)
class ChannelMethod:
    """A channel-pruning method: how it scores (`importance`: fixed, or None for the caller's choice) and selects."""

    name: str
    selection: str
    importance: str | None
    description: str


CHANNEL_METHODS: dict[str, ChannelMethod] = {m.name: m for m in (
    ChannelMethod("disparse_channel", "per_task", None, "per-task channel scores, per-task top-k, arbiter on the backbone"),
    ChannelMethod("channel_snip", "global", "snip", "SNIP group scores of the summed loss, one global ranking"),
    ChannelMethod("channel_taylor", "global", "taylor", "Taylor group scores of the summed loss, one global ranking"),
    ChannelMethod("channel_magnitude", "global", "magnitude", "group L1 norms, one global ranking"),
    ChannelMethod("uniform", "uniform", "magnitude", "every width scaled by the same factor"),
)}


def get_channel_method(method: str) -> ChannelMethod:
    if method not in CHANNEL_METHODS:
        raise ValueError(f"unknown channel-pruning method {method!r} (expected one of {', '.join(CHANNEL_METHODS)})")
    return CHANNEL_METHODS[method]


def method_importance(method: str, importance: str | None = None) -> str:
    """The importance a method scores with: its own for the baselines, `importance` (default snip) otherwise."""
    chosen = get_channel_method(method)
    if chosen.importance is not None:
        if importance not in (None, chosen.importance):
            raise ValueError(f"method {method!r} always scores with {chosen.importance!r}, not {importance!r}")
        return chosen.importance
    return importance or DEFAULT_IMPORTANCE


def score_for_method(model: nn.Module, groups: ChannelGroups, method: str, batches: Iterable | None, loss_fn: Any,
                     tasks: Sequence[str], *, importance: str | None = None,
                     loss_weights: Mapping[str, float] | None = None, **options: Any) -> GroupScores:
    """The channel scores `method` ranks by. `loss_weights` (task -> λ, default 1) weight the summed loss of
    the task-agnostic methods; `options` go to the weight saliency (num_batches, device, generator, mode, ...)."""
    chosen = get_channel_method(method)
    name = method_importance(method, importance)
    if chosen.selection != "per_task":
        options["task_agnostic_weights"] = dict(loss_weights) if loss_weights else {t: 1.0 for t in tasks}
    return score_channels(model, groups, batches, loss_fn, tasks, name, **options)


@dataclass
class ChannelPruneResult:
    """A channel-pruned net: dense, smaller, rebuilt from its architecture spec."""

    model: MultiTaskNet
    architecture: Architecture
    macs_removed: float
    params_removed: float
    report: dict[str, Any]

    def checkpoint_fields(self) -> dict[str, Any]:
        """The keys a channel-pruned checkpoint adds to the usual ones (`CHECKPOINT_KEYS`; plain types and
        tensors only)."""
        return dict(zip(CHECKPOINT_KEYS, (self.architecture, float(self.macs_removed), float(self.params_removed),
                                          self.report)))


def _dropout_of(model: MultiTaskNet) -> float:
    for module in model.heads.modules():
        if isinstance(module, nn.Dropout):
            return float(module.p)
    return 0.5


def _build_like(model: MultiTaskNet, tasks: Sequence[str], architecture: Architecture,
                state: Mapping[str, torch.Tensor]) -> MultiTaskNet:
    """A fresh `MultiTaskNet` for `tasks` from `architecture` holding `state`, on `model`'s device and dtype, in
    its train/eval mode (the path a checkpoint takes)."""
    param = next(model.parameters())
    net = MultiTaskNet({t: model.tasks[t] for t in tasks}, dropout=_dropout_of(model), architecture=architecture)
    net.load_state_dict(state)
    return net.to(device=param.device, dtype=param.dtype).train(model.training)


def rebuild(model: nn.Module) -> MultiTaskNet:
    """`model` (e.g. after Torch-Pruning changed its layers in place) rebuilt from its architecture spec."""
    model = unwrap(model)
    return _build_like(model, list(model.tasks), architecture_of(model), model.state_dict())


def _report(groups: ChannelGroups, selection: ChannelSelection, cost: ChannelCost, method: str,
            importance: str | None, dense: Mapping[str, int]) -> dict[str, Any]:
    """Plain per-group record of what was kept (original channel indices), by whom, and what it costs."""
    entries = []
    for group in groups:
        entry: dict[str, Any] = {
            "name": group.name, "owner": group.owner, "size": int(dense[group.name]),
            "members": [[m.layer, m.kind] for m in group.members], "kept": selection.keep[group.name].clone()}
        if selection.proposals is not None:
            entry["proposals"] = {task: masks[group.name].clone() for task, masks in selection.proposals.items()
                                  if group.name in masks}
        entries.append(entry)
    return {"version": REPORT_VERSION, "method": method, "importance": importance,
            "arbiter": selection.info.get("arbiter"), "target": selection.info.get("target"),
            "fraction": selection.fraction, "input_size": list(cost.input_size),
            "macs": {"dense": int(cost.macs(dense)), "kept": int(selection.macs)},
            "params": {"dense": int(cost.params(dense)), "kept": int(selection.params)},
            "groups": entries}


def prune_channels(model: nn.Module, scores: GroupScores | Scorer | None = None, *, method: str = "disparse_channel",
                   arbiter: ArbiterLike = "unanimous", macs_removed: float | None = None,
                   params_removed: float | None = None, tol: float = 0.01,
                   input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, importance: str | None = None,
                   groups: ChannelGroups | None = None) -> ChannelPruneResult:
    """Prune `model`'s channels with `method` so that it loses `macs_removed` of its MACs (or
    `params_removed` of its parameters) within `tol`; the model itself is not modified.

    `scores`: channel scores as `score_for_method` returns them, or a callable `(model, groups) -> scores`;
    `uniform` may pass None (it ranks channels inside a group by their L1 norm). `importance` only labels the
    report. MACs are counted for one image of `input_size`.
    """
    model = unwrap(model)
    chosen = get_channel_method(method)
    if (macs_removed is None) == (params_removed is None):
        raise ValueError("give exactly one of macs_removed and params_removed (a fraction, 0.5 for 50 %)")
    target = Target("macs", macs_removed, tol) if macs_removed is not None else Target("params", params_removed, tol)
    groups = channel_groups(model) if groups is None else groups
    if scores is None and chosen.selection == "uniform":
        scores = score_channels(model, groups, None, None, groups.tasks, "magnitude",
                                task_agnostic_weights={t: 1.0 for t in groups.tasks})
    elif scores is None:
        raise ValueError(f"method {method!r} needs channel scores (see score_for_method)")
    elif callable(scores):
        scores = scores(model, groups)
    cost = ChannelCost(model, groups, input_size)
    selection = select_channels(groups, scores, cost, target, chosen.selection, arbiter)
    net = rebuild(remove_channels(model, groups, selection.keep))
    report = _report(groups, selection, cost, method, method_importance(method, importance), groups.sizes())
    return ChannelPruneResult(net, architecture_of(net), selection.removed["macs"], selection.removed["params"],
                              report)


def channel_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without tensors, for people and JSON: per group its owner and dense / kept widths, the MACs
    and parameters dense / kept / fraction removed, and how they were chosen."""
    groups = [{"name": e["name"], "owner": e["owner"], "dense": int(e["size"]), "kept": int(e["kept"].sum())}
              for e in report["groups"]]
    totals = {kind: {**report[kind], "removed": 1.0 - report[kind]["kept"] / report[kind]["dense"]}
              for kind in ("macs", "params")}
    return {**{k: report.get(k) for k in ("method", "importance", "arbiter", "target", "input_size")},
            **totals, "groups": groups}


def format_channel_summary(summary: Mapping[str, Any]) -> str:
    """A printable table: one line per channel group (dense and kept widths), then MACs and parameters."""
    width = max([len("group")] + [len(g["name"]) for g in summary["groups"]])
    head = f"{'group':<{width}}  {'owner':<10} {'dense':>7} {'kept':>7} {'kept %':>7}"
    lines = [head, "-" * len(head)]
    for g in summary["groups"]:
        lines.append(f"{g['name']:<{width}}  {g['owner']:<10} {g['dense']:>7} {g['kept']:>7} "
                     f"{100 * g['kept'] / g['dense']:>6.1f}%")
    lines.append("-" * len(head))
    size = "x".join(str(s) for s in summary["input_size"])
    for kind, label in (("macs", f"MACs at {size}"), ("params", "parameters")):
        t = summary[kind]
        lines.append(f"{label}: {t['dense']:,} dense, {t['kept']:,} kept ({100 * t['removed']:.2f}% removed)")
    return "\n".join(lines)


def channel_task_masks(report: Mapping[str, Any]) -> tuple[dict[str, dict[str, torch.Tensor]], TaskStructure | None]:
    """Each task's own channel choice on the shared groups, `{task: {group: BoolTensor}}` (original indices),
    and the groups' task structure: the input `prune_utils.iou.analyse` takes for per-layer channel IoU across
    tasks. ({}, None) for methods without per-task choices."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for entry in report["groups"]:
        if entry["owner"] != SHARED:
            continue
        for task, mask in entry.get("proposals", {}).items():
            out.setdefault(task, {})[entry["name"]] = mask
    if not out:
        return {}, None
    owners = {e["name"]: e["owner"] for e in report["groups"] if e["owner"] == SHARED or e["owner"] in out}
    return out, group_structure(owners, list(out))


def _extracted_keep(entry: Mapping[str, Any], tasks: Sequence[str]) -> torch.Tensor:
    """Original-index channels of a shared group that the subset keeps: kept by the net and proposed by one of
    `tasks`; if none is, the kept channel most tasks proposed (the first on ties)."""
    kept = entry["kept"].to(torch.bool)
    proposals = entry.get("proposals")
    if not proposals:
        return kept.clone()
    wanted = torch.zeros_like(kept)
    for task in tasks:
        wanted |= proposals[task].to(torch.bool)
    votes = sum(p.to(torch.int64) for p in proposals.values()) + 1
    ranking = torch.where(kept, votes, torch.zeros_like(votes)).float()
    return at_least_one({"g": kept & wanted}, {"g": ranking})["g"]


def _without_other_heads(model: MultiTaskNet, tasks: Sequence[str]) -> MultiTaskNet:
    architecture = architecture_of(model)
    architecture["heads"] = {t: architecture["heads"][t] for t in tasks}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.") or k.split(".")[1] in tasks}
    return _build_like(model, tasks, architecture, state)


def _subset_keep(groups: ChannelGroups, report: Mapping[str, Any], tasks: Sequence[str]) -> tuple[dict, list]:
    """(keep in the pruned net's channel indices, the report's group entries for the subset)."""
    entries = {e["name"]: e for e in report["groups"]}
    stale = [g.name for g in groups if g.name not in entries or int(entries[g.name]["kept"].sum()) != g.size]
    if stale:
        raise ValueError(f"the report does not describe this net (group widths differ at {stale[:3]})")
    keep, subset = {}, []
    for group in groups:
        entry = entries[group.name]
        kept_before = entry["kept"].to(torch.bool)
        kept_after = _extracted_keep(entry, tasks) if group.owner == SHARED else kept_before.clone()
        keep[group.name] = kept_after[kept_before]
        subset.append(dict(entry, kept=kept_after))
        if "proposals" in entry:
            subset[-1]["proposals"] = {t: m for t, m in entry["proposals"].items() if t in tasks}
    return keep, subset


def extract_tasks(model: nn.Module, tasks: Sequence[str], report: Mapping[str, Any] | None = None,
                  input_size: tuple[int, int] | None = None) -> ChannelPruneResult:
    """A net for `tasks` only: their heads, and of the shared channels only those the tasks chose themselves.

    `report` is the `channels` record of a channel-pruned net (`ChannelPruneResult.report`); its fractions
    removed are then relative to the dense net of the same tasks. Without a report only the other heads go
    and the fractions are 0 (the original widths are unknown); a report of a method without per-task choices
    keeps the backbone whole. MACs are counted at `input_size` (default: the report's, else 321x321).
    """
    model = unwrap(model)
    tasks = list(tasks)
    if not tasks or any(t not in model.tasks for t in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"extract needs distinct tasks of the model ({', '.join(model.tasks)}), got {tasks}")
    sub = _without_other_heads(model, tasks)
    groups = channel_groups(sub)
    keep, entries = _subset_keep(groups, report, tasks) if report is not None else ({}, [])
    net = rebuild(remove_channels(sub, groups, keep))
    size = input_size or (tuple(report["input_size"]) if report is not None else DEFAULT_INPUT_SIZE)
    net_groups = channel_groups(net)
    cost = ChannelCost(net, net_groups, size)
    now = net_groups.sizes()
    dense = {e["name"]: int(e["size"]) for e in entries} if entries else now
    macs, params = (cost.macs(now), cost.macs(dense)), (cost.params(now), cost.params(dense))
    sub_report = dict(report) if report is not None else {"version": REPORT_VERSION, "method": None}
    sub_report.update(groups=entries, tasks=tasks, input_size=list(size),
                      macs={"dense": macs[1], "kept": macs[0]}, params={"dense": params[1], "kept": params[0]})
    return ChannelPruneResult(net, architecture_of(net), 1 - macs[0] / macs[1], 1 - params[0] / params[1],
                              sub_report)


__all__ = ["ALL", "CHANNEL_METHODS", "CHECKPOINT_KEYS", "ChannelMethod", "ChannelPruneResult", "channel_summary",
           "channel_task_masks", "extract_tasks", "format_channel_summary", "get_channel_method", "method_importance",
           "prune_channels", "rebuild", "score_for_method"]
