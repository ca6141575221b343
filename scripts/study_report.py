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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the repository, when run as a script
from fileio import atomic_write, atomic_write_text  # noqa: E402


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


IOU_SOURCES = {"init": "at initialisation (SNIP on a fresh net)", "trained": "of the trained dense baseline"}


def iou_records(results: Mapping[str, Any], kind: str, ratio: float, source: str = "init") -> list[Mapping]:
    """The IoU analyses of one kind, ratio and source (`init` when a record names none)."""
    return [r for r in results["iou"] if r["kind"] == kind and float(r["ratio"]) == float(ratio)
            and r.get("source", "init") == source]


def iou_sources(results: Mapping[str, Any]) -> list[str]:
    found = {r.get("source", "init") for r in results["iou"]}
    return [source for source in IOU_SOURCES if source in found]


def overlap_and_gain(results: Mapping[str, Any], ratio: float, source: str,
                     variant: str = "disparse_static[unanimous]") -> list[tuple[str, int, float, float]]:
    """(kind, seed, mean backbone IoU, Δm of `variant` minus SNIP) for every kind and seed with both."""
    points = []
    for kind in results["design"]["kinds"]:
        seeds, gains = paired_difference(results, kind, ratio, variant, "snip", METRICS[0])
        ious = {int(r["seed"]): mean_iou(r) for r in iou_records(results, kind, ratio, source)}
        points += [(kind, seed, ious[seed], gain) for seed, gain in zip(seeds, gains) if seed in ious]
    return points


def correlation(points: Sequence[tuple[str, int, float, float]]) -> tuple[float, float]:
    """Pearson r of IoU against gain over the points, and its two-sided p (NaN with fewer than 3 points)."""
    if len(points) < 3 or len({p[2] for p in points}) < 2 or len({p[3] for p in points}) < 2:
        return math.nan, math.nan
    result = stats.pearsonr([p[2] for p in points], [p[3] for p in points])
    return float(result[0]), float(result[1])


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
    """Mean backbone IoU of the tasks' masks per kind, ratio and source, next to DiSparse static's Δm gain on
    SNIP, and the correlation of the two over kinds and seeds."""
    header = ["ratio", "kind"] + [f"mean backbone IoU {IOU_SOURCES[s]} [95 % CI]" for s in iou_sources(results)] + [
        "Δm: disparse_static[unanimous] − snip [95 % CI]"]
    rows = []
    for ratio in results["design"]["ratios"]:
        for kind in results["design"]["kinds"]:
            cells = []
            for source in iou_sources(results):
                ious = [mean_iou(r) for r in iou_records(results, kind, ratio, source)]
                cells.append(_ci(t_interval(ious), 3) if ious else "–")
            _, diffs = paired_difference(results, kind, ratio, "disparse_static[unanimous]", "snip", METRICS[0])
            rows.append([f"{ratio:g}", kind] + cells + [_ci(t_interval(diffs)) if diffs else "–"])
    lines = [_table(header, rows), ""]
    for source in iou_sources(results):
        for ratio in results["design"]["ratios"]:
            points = overlap_and_gain(results, ratio, source)
            r, p = correlation(points)
            lines.append(f"- {ratio:g} %, IoU {IOU_SOURCES[source]}: Pearson r(IoU, Δm gain over SNIP) = {_fmt(r)} "
                         f"(p = {_fmt(p, 3)}, {len(points)} kind × seed points)")
    return "\n".join(lines)


def overlap_per_seed_table(results: Mapping[str, Any]) -> str:
    """Per kind and seed: mean backbone IoU (each source) and DiSparse static's Δm gain over SNIP, per ratio."""
    sources = iou_sources(results)
    header = ["ratio", "kind", "seed"] + [f"IoU {s}" for s in sources] + ["Δm gain over SNIP"]
    rows = []
    for ratio in results["design"]["ratios"]:
        by_source = {s: {(k, seed): iou for k, seed, iou, _ in overlap_and_gain(results, ratio, s)} for s in sources}
        for kind, seed, _, gain in overlap_and_gain(results, ratio, sources[0]) if sources else []:
            rows.append([f"{ratio:g}", kind, str(seed)] + [_fmt(by_source[s].get((kind, seed)), 3) for s in sources]
                        + [_fmt(gain)])
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


PLATEAU_TOLERANCE = 0.02     # a dense baseline has plateaued when no loss fell by 2 % or more over the last quarter


def plateau_rows(results: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """Per loss (weighted sum and each task) of one kind's dense baselines: the validation loss at the first
    validation, at 3/4 of the steps and at the end (means over seeds), and the relative change over the
    last quarter, (end − 3/4) / 3/4, per seed; `plateaued` when every seed's change is above −2 %."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for curve in results["curves"]:
        if curve["kind"] != kind or not curve["val"]:
            continue
        points = {int(p[0]): {"weighted sum": p[1], **(p[2] if len(p) > 2 else {})} for p in curve["val"]}
        last = max(points)
        mark = min(points, key=lambda it: abs(it - 0.75 * last))
        for name in points[last]:
            series.setdefault(name, []).append((points[min(points)][name], points[mark][name], points[last][name]))
    rows = []
    for name, triples in series.items():
        changes = [(end - quarter) / quarter for _, quarter, end in triples if quarter]
        rows.append({"loss": name, "seeds": len(triples),
                     **{key: statistics.fmean(t[i] for t in triples) for i, key in enumerate(("first", "quarter", "end"))},
                     "changes": changes, "worst": min(changes) if changes else math.nan,
                     "plateaued": bool(changes) and min(changes) > -PLATEAU_TOLERANCE})
    return rows


def plateau_table(results: Mapping[str, Any]) -> str:
    """Dense baselines: has the validation loss plateaued (criterion: `plateau_rows`)?"""
    header = ["kind", "seeds", "loss", "at 1st validation", "at 3/4 steps", "at the end",
              "change over the last quarter (mean)", "largest fall (worst seed)", "plateaued (< 2 % fall)"]
    rows = []
    for kind in results["design"]["kinds"]:
        for row in plateau_rows(results, kind):
            mean_change = (row["end"] - row["quarter"]) / row["quarter"] if row["quarter"] else math.nan
            rows.append([kind, str(row["seeds"]), row["loss"], _fmt(row["first"], 4), _fmt(row["quarter"], 4),
                         _fmt(row["end"], 4), f"{100 * mean_change:+.1f} %", f"{100 * row['worst']:+.1f} %",
                         "yes" if row["plateaued"] else "**no**"])
    return _table(header, rows)


def longer_training_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plateau check: a cosine schedule flattens the loss at its end by construction, so a flat end
    says little. One dense baseline per kind trained `factor` times longer (same seed, same data order)
    shows how much lower the loss still goes: per loss (weighted sum and each task) and per main metric,
    the design's value, the longer run's, and the relative change (long − design) / design."""
    rows = []
    for record in results.get("plateau", []):
        (short,) = [c for c in results["curves"] if c["kind"] == record["kind"] and c["seed"] == record["seed"]]
        (run,) = [r for r in results["runs"] if r["kind"] == record["kind"] and r["seed"] == record["seed"]
                  and r["variant"] == BASELINE]
        ends = {"short": short["val"][-1], "long": record["val"][-1]}
        values = {which: {"val loss (weighted sum)": end[1], **{f"val loss {t}": v for t, v in end[2].items()}}
                  for which, end in ends.items()}
        for metric in METRICS[1:]:
            values["short"][metric.label] = metric.value(run["metrics"])
            values["long"][metric.label] = metric.value(record["metrics"])
        for name, value in values["short"].items():
            long_value = values["long"][name]
            rows.append({"kind": record["kind"], "seed": record["seed"], "name": name, "steps": ends["short"][0],
                         "long_steps": ends["long"][0], "value": value, "long_value": long_value,
                         "change": (long_value - value) / value if value else math.nan})
    return rows


def longer_training_table(results: Mapping[str, Any]) -> str:
    header = ["kind", "seed", "quantity", "steps", "value", "steps (longer run)", "value (longer run)",
              "relative change"]
    rows = [[r["kind"], str(r["seed"]), r["name"], str(r["steps"]), _fmt(r["value"], 4), str(r["long_steps"]),
             _fmt(r["long_value"], 4), f"{100 * r['change']:+.1f} %"] for r in longer_training_rows(results)]
    return _table(header, rows) if rows else "no longer baseline in this study"


def timing_line(results: Mapping[str, Any]) -> str:
    seconds = [sum(run.get("seconds", {}).values()) for run in results["runs"]]
    if not seconds:
        return "no runs"
    line = (f"{len(results['runs'])} training runs, {len(results['iou'])} IoU analyses; summed wall time of the runs "
            f"{sum(seconds) / 60:.1f} min (per run: median {statistics.median(seconds):.1f} s)")
    cost = results.get("cost")
    if cost:
        line += (f"; the study took {cost['wall_seconds'] / 60:.1f} min wall and {cost['cpu_seconds'] / 60:.1f} "
                 f"CPU-minutes (user + system of all its processes; / 2 = "
                 f"{cost['cpu_seconds'] / 120:.1f} min on two free cores)")
    code = results.get("code")
    if code and code.get("commit"):
        line += f"; code {code['commit'][:12]}{' (with uncommitted changes)' if code.get('dirty') else ''}"
    return line


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
              "", "Per seed:", "", overlap_per_seed_table(results),
              "", "## Does the gain grow when the tasks share less? (per seed, disentangled minus shared)", "",
              interaction_table(results), "", "## Dense baselines: has the validation loss plateaued?", "",
              plateau_table(results), "", "## How far from a true plateau? The same dense baseline trained longer", "",
              longer_training_table(results), ""]
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
    _finish_row(axes, ylabel)
    _save(fig, path)


def _finish_row(axes, ylabel: str) -> None:
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7)


def _save(fig, path: Path) -> None:
    """Write the PNG (atomically, as every file of the project) and free the figure."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=90))
    plt.close(fig)


def _source_ratio_grid(results: Mapping[str, Any], width: float, height: float, sharey: bool = False):
    """A figure with one row per IoU source and one panel per ratio: (fig, [(row, source, [(ax, ratio)])])."""
    import matplotlib.pyplot as plt
    ratios, sources = list(results["design"]["ratios"]), iou_sources(results)
    fig, axes = plt.subplots(len(sources), len(ratios), figsize=(width * len(ratios), height * len(sources)),
                             squeeze=False, sharey=sharey)
    return fig, [(list(row), source, list(zip(row, ratios))) for row, source in zip(axes, sources)]


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
    _save(fig, path)


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
    """Per-layer IoU of the tasks' masks (all tasks) over the backbone, both kinds: one row per source (fresh
    net, trained baseline), one panel per ratio, 95 % t-interval bands over seeds."""
    fig, grid = _source_ratio_grid(results, 7, 4.5, sharey=True)
    for row, source, panels in grid:
        for ax, ratio in panels:
            for kind in results["design"]["kinds"]:
                records = iou_records(results, kind, ratio, source)
                if not records:
                    continue
                per_layer = list(zip(*[[layer["all"] for layer in r["layers"] if layer["kind"] == "conv"]
                                       for r in records]))
                _band(ax, list(range(len(per_layer))), [t_interval(list(v)) for v in per_layer], kind)
            ax.set_title(f"{ratio:g} %: mask IoU {IOU_SOURCES[source]}", fontsize=10)
            ax.set_xlabel("backbone conv layer (forward order)")
        _finish_row(row, "IoU of the tasks' keep masks")
    _save(fig, path)


def plot_overlap_gain(results: Mapping[str, Any], path: Path) -> None:
    """DiSparse static's Δm gain over SNIP against the mean backbone IoU, one point per kind and seed; one row
    per IoU source, one panel per ratio."""
    fig, grid = _source_ratio_grid(results, 5, 4)
    for row, source, panels in grid:
        for ax, ratio in panels:
            points = overlap_and_gain(results, ratio, source)
            for kind in results["design"]["kinds"]:
                mine = [p for p in points if p[0] == kind]
                ax.scatter([p[2] for p in mine], [p[3] for p in mine], label=kind)
            ax.axhline(0, color="black", linewidth=0.8)
            r, _ = correlation(points)
            ax.set_title(f"{ratio:g} %, IoU {source}: r = {_fmt(r)}", fontsize=10)
            ax.set_xlabel("mean backbone IoU of the tasks' masks")
        _finish_row(row, "Δm(DiSparse unanimous) − Δm(SNIP)")
    _save(fig, path)


def plot_curves(results: Mapping[str, Any], path: Path) -> None:
    """Dense baselines' validation losses (test split) against steps, every seed: the weighted sum (with the
    training loss, faint) and each task's loss, one row per kind; dashed black: the plateau check's longer
    baseline (its own cosine schedule over more steps)."""
    import matplotlib.pyplot as plt
    kinds = results["design"]["kinds"]
    tasks = sorted({t for c in results["curves"] for p in c["val"] if len(p) > 2 for t in p[2]})
    fig, axes = plt.subplots(len(kinds), 1 + len(tasks), figsize=(4.5 * (1 + len(tasks)), 3.8 * len(kinds)),
                             squeeze=False)
    for row, kind in zip(axes, kinds):
        for curve in (c for c in results["curves"] if c["kind"] == kind):
            steps = [p[0] for p in curve["val"]]
            line, = row[0].plot(steps, [p[1] for p in curve["val"]], marker=".", label=f"seed {curve['seed']}")
            row[0].plot([p[0] for p in curve["train"]], [p[1] for p in curve["train"]], color=line.get_color(),
                        alpha=0.3, linewidth=0.8)
            for ax, task in zip(row[1:], tasks):
                ax.plot(steps, [p[2].get(task, math.nan) for p in curve["val"]], marker=".", color=line.get_color())
        for record in (r for r in results.get("plateau", []) if r["kind"] == kind):
            steps = [p[0] for p in record["val"]]
            style = dict(color="black", linestyle="--", linewidth=1)
            row[0].plot(steps, [p[1] for p in record["val"]], label=f"seed {record['seed']}, {record['steps']} steps",
                        **style)
            for ax, task in zip(row[1:], tasks):
                ax.plot(steps, [p[2].get(task, math.nan) for p in record["val"]], **style)
        row[0].set_title(f"{kind}: weighted loss (faint: training)", fontsize=10)
        for ax, task in zip(row[1:], tasks):
            ax.set_title(f"{kind}: {task} validation loss", fontsize=10)
        for ax in row:
            ax.set_xlabel("step")
        row[0].legend(fontsize=7)
    _save(fig, path)


BULK_RUN_FIELDS = ("train_curve", "pruning")    # per-run training curves and per-layer kept counts: no table uses them


def per_seed_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """The results without the bulk per-run fields: every number a table, interval or plot of the report is
    computed from (per-seed metrics, IoU per layer, the baselines' curves, cost), small enough to keep
    beside the report, and enough to rebuild it (`study_report.py per_seed_results.json`)."""
    return {**results, "runs": [{k: v for k, v in run.items() if k not in BULK_RUN_FIELDS}
                                for run in results["runs"]]}


def write_report(results: Mapping[str, Any], out_dir: str | Path, plots: bool = True) -> Path:
    """STUDY.md (+ contrasts.json, per_seed_results.json and PNGs) in `out_dir` from the results alone;
    returns the Markdown path."""
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
        for name, plot in (("gain_over_snip", plot_gains), ("iou_layers", plot_iou),
                           ("overlap_vs_gain", plot_overlap_gain), ("baseline_curves", plot_curves)):
            figures.append(out / f"{name}.png")
            plot(results, figures[-1])
    serialisable = [{**{k: v for k, v in row.items() if k != "interval"}, **vars(row["interval"]),
                     "significant": row["interval"].significant} for row in rows]
    atomic_write_text(out / "contrasts.json", json.dumps(serialisable, indent=1, allow_nan=True) + "\n")
    atomic_write_text(out / "per_seed_results.json",
                      json.dumps(per_seed_results(results), indent=1, allow_nan=True) + "\n")
    return atomic_write_text(out / "STUDY.md", markdown(results, rows, [str(f) for f in figures]))


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
