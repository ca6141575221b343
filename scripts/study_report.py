#!/usr/bin/env python3
"""Statistics, Markdown tables and PNG plots of the DiSparse study, from its results JSON alone.

    python scripts/study_report.py runs/study/results.json --out runs/study/report

(`scripts/study.py` calls this after its runs, and `scripts/study.py --report-only` calls it again.)

The study is paired: for a given scene kind and seed every method starts from the same initial
weights and sees the same batches in the same order, and every net is evaluated on the same test
images. So methods are compared through per-seed differences d_s = x_A,s - x_B,s of one metric:

    mean d, sd of d, 95 % interval  mean d ± t(0.975, n-1) · sd / sqrt(n)    (Student t over n seeds)

signed so that a positive difference means A is better (for metrics where lower is better, such as
the normal angle error, the sign is flipped; Δm is already "positive = better", docs/METRICS.md).
A difference is significant at 95 % when its interval excludes 0; the intervals are per comparison
(no multiplicity correction); the Δm table also gives Holm-adjusted p-values over all its rows.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from scipy import stats


@dataclass(frozen=True)
class Metric:
    """One reported number of a run: `task`/`key` in the metrics JSON (task None: top level)."""

    task: str | None
    key: str
    scale: float
    label: str
    higher_is_better: bool

    def value(self, metrics: Mapping[str, Any]) -> float:
        raw = metrics[self.task][self.key] if self.task else metrics[self.key]
        return self.scale * float(raw)


# Δm first (the multitask summary), then the main metric of each task (docs/METRICS.md).
METRICS = (Metric(None, "delta_m", 1, "Δm%", True),
           Metric("seg", "mIoU", 100, "mIoU%", True), Metric("seg", "Pixel Acc", 100, "PixAcc%", True),
           Metric("sn", "Angle Mean", 1, "SN mean°", False), Metric("sn", "Angle 22.5", 1, "SN ≤22.5°%", True),
           Metric("depth", "abs_err", 1, "Depth abs", False), Metric("depth", "sigma_1.25", 1, "δ<1.25%", True))
SPARSITY = Metric(None, "sparsity", 100, "sparsity%", True)
BASELINE = "baseline"
REFERENCES = ("snip", "random", BASELINE)
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its two-sided t-interval and the t-test p-value against 0."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    p: float

    @property
    def significant(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean ± t(1 - (1 - level)/2, n - 1) · sd / sqrt(n); for n = 1 the interval is unbounded."""
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(1, mean, math.nan, -math.inf, math.inf, math.nan)
    sd = statistics.stdev(values)
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * sd / math.sqrt(n)
    if sd == 0:
        p = 0.0 if mean != 0 else 1.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Interval(n, mean, sd, mean - half, mean + half, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


# --------------------------------------------------------------------------- selecting runs

def variants(results: Mapping[str, Any]) -> list[str]:
    """The pruned variants in the design's order (baseline excluded)."""
    return list(results["design"]["variants"])


def disparse_variants(results: Mapping[str, Any]) -> list[str]:
    return [v for v in variants(results) if v.startswith("disparse")]


def values_by_seed(results: Mapping[str, Any], kind: str, variant: str, ratio: float,
                   metric: Metric) -> dict[int, float]:
    """seed -> metric value of the run (kind, variant, ratio); the baseline has ratio 0 and Δm 0."""
    out = {}
    for run in results["runs"]:
        if run["kind"] != kind or run["variant"] != variant:
            continue
        if variant != BASELINE and float(run["ratio"]) != float(ratio):
            continue
        if variant == BASELINE and metric.key == "delta_m":
            out[int(run["seed"])] = 0.0
        else:
            out[int(run["seed"])] = metric.value(run["metrics"])
    return out


def paired_difference(results: Mapping[str, Any], kind: str, ratio: float, better: str, worse: str,
                      metric: Metric) -> tuple[list[int], list[float]]:
    """Seeds run by both, and per seed `better` minus `worse`, signed so that positive = `better` is better."""
    a = values_by_seed(results, kind, better, ratio, metric)
    b = values_by_seed(results, kind, worse, ratio, metric)
    seeds = sorted(set(a) & set(b))
    sign = 1.0 if metric.higher_is_better else -1.0
    return seeds, [sign * (a[s] - b[s]) for s in seeds]


def contrasts(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every DiSparse variant minus SNIP, random and the dense baseline, per kind, ratio and metric."""
    rows = []
    for kind in results["design"]["kinds"]:
        for ratio in results["design"]["ratios"]:
            for variant in disparse_variants(results):
                for reference in REFERENCES:
                    for metric in METRICS:
                        seeds, diffs = paired_difference(results, kind, ratio, variant, reference, metric)
                        if not diffs:
                            continue
                        rows.append({"kind": kind, "ratio": ratio, "variant": variant, "reference": reference,
                                     "metric": metric.label, "seeds": seeds, "differences": diffs,
                                     "interval": t_interval(diffs)})
    p_adjusted = holm([row["interval"].p for row in rows if row["metric"] == METRICS[0].label])
    for row, p in zip([row for row in rows if row["metric"] == METRICS[0].label], p_adjusted):
        row["p_holm"] = p
    return rows


def interaction(results: Mapping[str, Any], variant: str, reference: str, ratio: float
                ) -> tuple[list[int], list[float]] | None:
    """Per seed: (variant - reference) Δm on disentangled scenes minus the same on shared scenes."""
    kinds = results["design"]["kinds"]
    if not {"shared", "disentangled"} <= set(kinds):
        return None
    s_seeds, shared = paired_difference(results, "shared", ratio, variant, reference, METRICS[0])
    d_seeds, dis = paired_difference(results, "disentangled", ratio, variant, reference, METRICS[0])
    seeds = sorted(set(s_seeds) & set(d_seeds))
    if not seeds:
        return None
    s_map, d_map = dict(zip(s_seeds, shared)), dict(zip(d_seeds, dis))
    return seeds, [d_map[s] - s_map[s] for s in seeds]


def mean_iou(record: Mapping[str, Any]) -> float:
    """Mean IoU (all tasks) over the backbone's conv layers of one IoU analysis."""
    layers = [layer["all"] for layer in record["layers"] if layer["kind"] == "conv"]
    return statistics.fmean(layers)


# --------------------------------------------------------------------------- Markdown

def _fmt(value: float, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(interval: Interval, digits: int = 2) -> str:
    if interval.n < 2:
        return f"{_fmt(interval.mean, digits)} (n=1)"
    return f"{_fmt(interval.mean, digits)} [{_fmt(interval.low, digits)}, {_fmt(interval.high, digits)}]"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(interval: Interval) -> str:
    if interval.n < 2:
        return "n<2"
    if not interval.significant:
        return "ns"
    return "**better**" if interval.mean > 0 else "**worse**"


def summary_table(results: Mapping[str, Any], kind: str) -> str:
    """Per method and ratio: mean [95 % CI] over seeds of every metric, and the achieved sparsity."""
    header = ["ratio", "method", "seeds"] + [m.label for m in METRICS] + [SPARSITY.label]
    rows = []
    groups = [(0, BASELINE)] + [(r, v) for r in results["design"]["ratios"] for v in variants(results)]
    for ratio, variant in groups:
        cells = []
        seeds = set()
        for metric in METRICS + (SPARSITY,):
            by_seed = values_by_seed(results, kind, variant, ratio, metric)
            seeds |= set(by_seed)
            cells.append(_ci(t_interval(list(by_seed.values()))) if by_seed else "–")
        if seeds:
            rows.append([f"{ratio:g}", variant, str(len(seeds))] + cells)
    return _table(header, rows)


def delta_m_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Paired Δm differences with p-values (positive = the DiSparse variant is better)."""
    header = ["kind", "ratio", "DiSparse variant", "minus", "mean diff [95 % CI]", "p", "p (Holm)",
              "seeds better", "verdict"]
    out = []
    for row in rows:
        if row["metric"] != METRICS[0].label:
            continue
        interval = row["interval"]
        wins = sum(d > 0 for d in row["differences"])
        out.append([row["kind"], f"{row['ratio']:g}", row["variant"], row["reference"], _ci(interval),
                    _fmt(interval.p, 3), _fmt(row.get("p_holm", math.nan), 3),
                    f"{wins}/{interval.n}", _verdict(interval)])
    return _table(header, out)


def metric_matrix(rows: Sequence[Mapping[str, Any]]) -> str:
    """Paired differences of every task metric, one row per comparison: mean [95 % CI], with ▲ / ▼ where
    the DiSparse variant is significantly better / worse."""
    labels = [m.label for m in METRICS[1:]]
    cells: dict[tuple, dict[str, str]] = {}
    for row in rows:
        if row["metric"] in labels:
            interval = row["interval"]
            mark = {"**better**": " ▲", "**worse**": " ▼"}.get(_verdict(interval), "")
            key = (row["kind"], row["ratio"], row["variant"], row["reference"])
            cells.setdefault(key, {})[row["metric"]] = _ci(interval) + mark
    header = ["kind", "ratio", "DiSparse variant", "minus"] + labels
    return _table(header, [[k[0], f"{k[1]:g}", k[2], k[3]] + [v.get(label, "–") for label in labels]
                           for k, v in cells.items()])


def significant_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per significant difference (95 %, per comparison), wins and losses alike."""
    lines = []
    for row in rows:
        interval = row["interval"]
        if interval.significant:
            word = "better" if interval.mean > 0 else "WORSE"
            lines.append(f"- {row['kind']}, {row['ratio']:g} %: {row['variant']} is {word} than {row['reference']} "
                         f"on {row['metric']} by {_ci(interval)}")
    return lines


def iou_table(results: Mapping[str, Any]) -> str:
    """Mean backbone IoU of the tasks' masks per kind and ratio, next to DiSparse static's Δm gain on SNIP."""
    header = ["kind", "ratio", "mean backbone IoU [95 % CI]", "Δm: disparse_static[unanimous] − snip [95 % CI]"]
    rows = []
    for kind in results["design"]["kinds"]:
        for ratio in results["design"]["ratios"]:
            ious = [mean_iou(r) for r in results["iou"] if r["kind"] == kind and float(r["ratio"]) == float(ratio)]
            _, diffs = paired_difference(results, kind, ratio, "disparse_static[unanimous]", "snip", METRICS[0])
            rows.append([kind, f"{ratio:g}", _ci(t_interval(ious), 3) if ious else "–",
                         _ci(t_interval(diffs)) if diffs else "–"])
    return _table(header, rows)


def interaction_table(results: Mapping[str, Any]) -> str:
    header = ["ratio", "DiSparse variant", "minus", "(disentangled − shared) Δm gain [95 % CI]", "verdict"]
    rows = []
    for ratio in results["design"]["ratios"]:
        for variant in disparse_variants(results):
            for reference in ("snip", "random"):
                found = interaction(results, variant, reference, ratio)
                if found:
                    interval = t_interval(found[1])
                    rows.append([f"{ratio:g}", variant, reference, _ci(interval), _verdict(interval)])
    return _table(header, rows)


def plateau_table(results: Mapping[str, Any]) -> str:
    """Dense baselines: validation loss (weighted sum and per task) at 3/4 of the steps and at the end, mean
    over seeds, with the relative change over the last quarter."""
    header = ["kind", "seeds", "loss", "at 1st validation", "at 3/4 steps", "at the end",
              "change over the last quarter"]
    rows = []
    for kind in results["design"]["kinds"]:
        series: dict[str, list[tuple[float, float, float]]] = {}
        for curve in results["curves"]:
            if curve["kind"] != kind or not curve["val"]:
                continue
            points = {int(p[0]): {"weighted sum": p[1], **(p[2] if len(p) > 2 else {})} for p in curve["val"]}
            last = max(points)
            mark = min(points, key=lambda it: abs(it - 0.75 * last))
            for name in points[last]:
                series.setdefault(name, []).append((points[min(points)][name], points[mark][name], points[last][name]))
        for name, triples in series.items():
            first, quarter, end = (statistics.fmean(t[i] for t in triples) for i in range(3))
            rows.append([kind, str(len(triples)), name, _fmt(first, 4), _fmt(quarter, 4), _fmt(end, 4),
                         f"{100 * (end - quarter) / quarter:+.1f} %" if quarter else "–"])
    return _table(header, rows)


def timing_line(results: Mapping[str, Any]) -> str:
    seconds = [sum(run.get("seconds", {}).values()) for run in results["runs"]]
    return (f"{len(results['runs'])} training runs, {len(results['iou'])} IoU analyses; "
            f"summed run time {sum(seconds) / 60:.1f} min (per run: median {statistics.median(seconds):.1f} s)"
            if seconds else "no runs")


def markdown(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], figures: Sequence[str]) -> str:
    design = results["design"]
    parts = [f"# DiSparse study: {', '.join(design['kinds'])} scenes, ratios {design['ratios']}, "
             f"seeds {design['seeds']}", "", f"Command: `{results.get('command', '')}`", "",
             timing_line(results), "", "## Significant differences at 95 % (paired t over seeds, per comparison)", ""]
    parts += significant_lines(rows) or ["- none"]
    for kind in design["kinds"]:
        parts += ["", f"## {kind} scenes: mean [95 % CI] over seeds", "", summary_table(results, kind)]
    parts += ["", "## Paired differences of Δm (positive = the DiSparse variant is better)", "", delta_m_table(rows),
              "", "## Paired differences of each metric (signed so that positive = the DiSparse variant is better; "
              "▲ / ▼ significantly better / worse)", "", metric_matrix(rows)]
    parts += ["", "## Task overlap (per-layer IoU of the tasks' masks) and DiSparse's gain", "", iou_table(results),
              "", "## Does the gain grow when the tasks share less? (per seed, disentangled minus shared)", "",
              interaction_table(results), "", "## Dense baselines: has the validation loss plateaued?", "",
              plateau_table(results), ""]
    parts += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- plots

def _band(ax, xs, intervals, label, **style) -> None:
    means = [i.mean for i in intervals]
    line, = ax.plot(xs, means, marker="o", label=label, **style)
    lows = [i.low if i.n > 1 else i.mean for i in intervals]
    highs = [i.high if i.n > 1 else i.mean for i in intervals]
    ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)


def _panels(count: int, height: float, sharey: bool = False):
    """A figure with one row of `count` panels (matplotlib is imported only when plotting)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, count, figsize=(7 * count, height), squeeze=False, sharey=sharey)
    return fig, list(axes[0])


def _finish(fig, axes, ylabel: str, path: Path) -> None:
    """Label and legend on the first panel, then write the PNG and free the figure."""
    import matplotlib.pyplot as plt
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_metrics(results: Mapping[str, Any], kind: str, path: Path) -> None:
    """Each metric against sparsity, one line per method, 95 % t-interval bands; baseline dashed."""
    import matplotlib.pyplot as plt
    ratios = list(results["design"]["ratios"])
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, metric in zip(axes.flat, METRICS):
        for variant in variants(results):
            intervals = [t_interval(list(values_by_seed(results, kind, variant, r, metric).values()) or [math.nan])
                         for r in ratios]
            _band(ax, ratios, intervals, variant)
        base = list(values_by_seed(results, kind, BASELINE, 0, metric).values())
        if base:
            ax.axhline(statistics.fmean(base), color="black", linestyle="--", label="dense baseline")
        ax.set_title(f"{metric.label} ({'higher' if metric.higher_is_better else 'lower'} is better)")
        ax.set_xlabel("sparsity %")
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center")
    fig.suptitle(f"{kind} scenes: mean over seeds with 95 % t-intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_gains(results: Mapping[str, Any], path: Path) -> None:
    """Δm of every DiSparse variant minus SNIP against sparsity, per kind, with 95 % t-interval bands."""
    kinds, ratios = results["design"]["kinds"], list(results["design"]["ratios"])
    fig, axes = _panels(len(kinds), 5, sharey=True)
    for ax, kind in zip(axes, kinds):
        for variant in disparse_variants(results):
            intervals = [t_interval(paired_difference(results, kind, r, variant, "snip", METRICS[0])[1] or [math.nan])
                         for r in ratios]
            _band(ax, ratios, intervals, variant)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{kind}: Δm gain over SNIP (paired, 95 % CI)")
        ax.set_xlabel("sparsity %")
    _finish(fig, axes, "Δm(DiSparse) − Δm(SNIP), points", path)


def plot_iou(results: Mapping[str, Any], path: Path) -> None:
    """Per-layer IoU of the tasks' masks (all tasks) over the backbone, both kinds, one panel per ratio."""
    ratios = list(results["design"]["ratios"])
    fig, axes = _panels(len(ratios), 4.5, sharey=True)
    for ax, ratio in zip(axes, ratios):
        for kind in results["design"]["kinds"]:
            records = [r for r in results["iou"] if r["kind"] == kind and float(r["ratio"]) == float(ratio)]
            if not records:
                continue
            per_layer = list(zip(*[[layer["all"] for layer in r["layers"] if layer["kind"] == "conv"]
                                   for r in records]))
            _band(ax, list(range(len(per_layer))), [t_interval(list(v)) for v in per_layer], kind)
        ax.set_title(f"{ratio:g} % sparsity: tasks' mask IoU per backbone conv layer")
        ax.set_xlabel("backbone conv layer (forward order)")
    _finish(fig, axes, "IoU of the tasks' keep masks", path)


def plot_curves(results: Mapping[str, Any], path: Path) -> None:
    """Dense baselines' validation loss (test split) and training loss against steps, every seed."""
    kinds = results["design"]["kinds"]
    fig, axes = _panels(len(kinds), 4.5)
    for ax, kind in zip(axes, kinds):
        for curve in results["curves"]:
            if curve["kind"] != kind:
                continue
            line, = ax.plot([p[0] for p in curve["val"]], [p[1] for p in curve["val"]], marker=".",
                            label=f"seed {curve['seed']} validation")
            ax.plot([p[0] for p in curve["train"]], [p[1] for p in curve["train"]], color=line.get_color(),
                    alpha=0.35, linewidth=0.8)
        ax.set_title(f"{kind}: dense baseline loss (dots: validation, faint: training)")
        ax.set_xlabel("step")
    _finish(fig, axes, "weighted multitask loss", path)


def write_report(results: Mapping[str, Any], out_dir: str | Path, plots: bool = True) -> Path:
    """STUDY.md (+ contrasts.json and PNGs) in `out_dir` from the results alone; returns the Markdown path."""
    import matplotlib
    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = contrasts(results)
    figures = []
    if plots:
        for kind in results["design"]["kinds"]:
            figures.append(out / f"metrics_{kind}.png")
            plot_metrics(results, kind, figures[-1])
        for name, plot in (("gain_over_snip", plot_gains), ("iou_layers", plot_iou), ("baseline_curves", plot_curves)):
            figures.append(out / f"{name}.png")
            plot(results, figures[-1])
    serialisable = [{**{k: v for k, v in row.items() if k != "interval"}, **vars(row["interval"]),
                     "significant": row["interval"].significant} for row in rows]
    (out / "contrasts.json").write_text(json.dumps(serialisable, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    path = out / "STUDY.md"
    path.write_text(markdown(results, rows, [str(f) for f in figures]), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="results JSON written by scripts/study.py")
    parser.add_argument("--out", default=None, help="report folder (default: beside the JSON, report/)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    source = Path(args.results)
    try:
        results = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {source}: {str(exc).splitlines()[0]}")
        return 2
    path = write_report(results, args.out or source.parent / "report", plots=not args.no_plots)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
