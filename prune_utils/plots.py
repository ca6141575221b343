"""Figures for the analysis tools: the per-layer IoU bar plot and task-similarity heatmaps.

Matplotlib runs with the non-interactive Agg backend, so these work on a headless machine.
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fileio import atomic_write  # noqa: E402

from .iou import IoUReport, pair_key, task_pairs  # noqa: E402


def _atomic_savefig(fig, path: str | os.PathLike, dpi: int) -> None:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight"))


def iou_bar_plot(report: IoUReport, path: str | os.PathLike, title: str | None = None, dpi: int = 110) -> None:
    """The paper's "IoU on Tasks Across Backbone Layers" density plot, one panel per measure.

    One bar per backbone conv layer in forward order (x = layer index, as in the paper), the three
    shortcut layers after a gap (hatched, labelled ds1..), the value above each bar (2 d.p.), the pooled
    "Total IoU" (x100) in the corner and the watershed layer marked with a dashed line. With two tasks
    there is one panel (the pair = all tasks); with more, an all-tasks panel then one per pair.
    """
    pairs = [pair_key(a, b) for a, b in task_pairs(report.tasks)]
    if len(report.tasks) == 2:
        panels = [("all", f"{report.tasks[0]} & {report.tasks[1]}", report.overall["all"], report.watershed)]
    else:
        panels = [("all", f"all {len(report.tasks)} tasks ({', '.join(report.tasks)})", report.overall["all"],
                   report.watershed)]
        panels += [(p, p.replace("_X_", " & "), report.overall["pairs"][p], report.pair_watersheds.get(p))
                   for p in pairs]

    convs, shortcuts = report.conv_layers, report.shortcut_layers
    n_conv = len(convs)
    x_conv = np.arange(n_conv)
    x_short = n_conv + 1 + np.arange(len(shortcuts))
    width_in = max(8.0, 0.32 * (n_conv + len(shortcuts) + 2) + 1.5)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, 2.6 * len(panels) + 0.6), squeeze=False,
                             sharex=True)
    cmap = plt.get_cmap("viridis")
    for ax, (which, label, total, shed) in zip(axes[:, 0], panels):
        def values(layers):
            return np.array([layer.all if which == "all" else layer.pairs[which] for layer in layers], dtype=float)
        v_conv, v_short = values(convs), values(shortcuts)
        ax.bar(x_conv, v_conv, color=cmap(0.15 + 0.75 * v_conv), edgecolor="black", linewidth=0.4)
        if len(shortcuts):
            ax.bar(x_short, v_short, color=cmap(0.15 + 0.75 * v_short), edgecolor="black", linewidth=0.4,
                   hatch="//", alpha=0.75)
        for x, v in list(zip(x_conv, v_conv)) + list(zip(x_short, v_short)):
            ax.text(x, v + 0.015, f"{v:.2f}", ha="center", va="bottom", fontsize=6.5, rotation=90)
        if shed is not None:
            ax.axvline(shed["index"] - 0.5, color="crimson", linestyle="--", linewidth=1.2)
            ax.text(shed["index"] - 0.4, 1.13, f"watershed: {shed['layer'].removeprefix('backbone.').removesuffix('.weight')}",
                    color="crimson", fontsize=8, ha="left", va="top")
        ax.text(0.995, 0.97, f"Total IoU: {100 * total:.2f}", transform=ax.transAxes, ha="right", va="top",
                fontsize=9, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
        ax.set_ylim(0, 1.18)
        ax.set_ylabel("IoU")
        ax.set_title(label, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
    ticks = list(x_conv) + list(x_short)
    labels = [str(i) for i in range(n_conv)] + [f"ds{i + 1}" for i in range(len(shortcuts))]
    axes[-1, 0].set_xticks(ticks)
    axes[-1, 0].set_xticklabels(labels, fontsize=7)
    axes[-1, 0].set_xlabel("backbone conv layer (forward order); ds = projection shortcuts, not in the order")
    fig.suptitle(title or "IoU on Tasks Across Backbone Layers", fontsize=12)
    fig.tight_layout()
    _atomic_savefig(fig, path, dpi)
    plt.close(fig)


def similarity_heatmap(matrix: np.ndarray, tasks: Sequence[str], path: str | os.PathLike, title: str = "",
                       dpi: int = 110) -> None:
    """A T×T task-similarity heatmap with the values written in the cells (NaN cells left blank)."""
    matrix = np.asarray(matrix, dtype=float)
    n = len(tasks)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.2, 1.1 * n + 1.4))
    finite = matrix[np.isfinite(matrix)]
    vmin = float(finite.min()) if finite.size else 0.0
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="magma", vmin=min(vmin, 1.0), vmax=1.0)
    for i in range(n):
        for j in range(n):
            if np.isfinite(matrix[i, j]):
                dark = (matrix[i, j] - vmin) / max(1e-12, 1.0 - vmin) < 0.55
                ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(tasks)
    ax.set_yticklabels(tasks)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _atomic_savefig(fig, path, dpi)
    plt.close(fig)
