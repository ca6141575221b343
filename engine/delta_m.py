"""Multitask performance relative to a baseline, Δm, in two precisely stated definitions.

Both average signed relative changes r_m = (−1)^{l_m} · (M_m − B_m) / B_m (l_m = 1 when lower is
better; positive = better than the baseline) over the counted metrics (`DELTA_M_METRICS`), in percent.
They differ only in how metrics are grouped:

* `task_mean` (default): Δm = 100 · (1/T) Σ_t (1/|M_t|) Σ_{m ∈ M_t} r_m. Each task weighs the same,
  whatever its number of metrics (NYUv2: seg counts 2 metrics, sn 6, and both tasks weigh ½). This is
  LibMTL's `count_improvement` (the mean over a task's metrics, then over tasks).
* `metric_mean`: Δm = 100 · (1/K) Σ_{all K counted metrics of all tasks} r_m, the flat mean most NYUv2
  multitask papers report (e.g. Navon et al., ICML 2022, Nash-MTL: its `delta_fn` over the 9 NYUv2
  metrics). A task with more metrics weighs more here (NYUv2 with our keys: sn 6 of 8).

Maninis et al. (CVPR 2019) and Vandenhende et al. (TPAMI 2021) define Δ over tasks with one metric per
task, where the two definitions coincide.

The metrics that count per task (`DELTA_M_METRICS`):

* seg: mIoU, Pixel Acc (the cross-entropy `err` is a loss, not a quality measure, and is left out);
* sn: all six (Angle Mean, Angle Median ↓; Angle 11.25, 22.5, 30, 45 ↑);
* depth: abs_err, rel_err ↓; sigma_1.25, sigma_1.25^2, sigma_1.25^3 ↑;
* keypoint, edge: err ↓.

Units cancel in the ratio, so fractions vs percentages do not matter as long as both dicts come
from the same code (same `compat`). A metric whose baseline value is 0 has no relative change (an
untrained or degenerate baseline, e.g. δ < 1.25 = 0 %): it is left out of the mean with a warning;
a task left with no metric at all is an error. The metrics JSON records the definition used
(`delta_m_definition`).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

from .metrics import metric_tasks

HIGHER, LOWER = "higher", "lower"
METRIC_DIRECTIONS: dict[str, dict[str, str]] = {
    "seg": {"mIoU": HIGHER, "Pixel Acc": HIGHER, "err": LOWER},
    "sn": {"Angle Mean": LOWER, "Angle Median": LOWER, "Angle 11.25": HIGHER, "Angle 22.5": HIGHER,
           "Angle 30": HIGHER, "Angle 45": HIGHER},
    "depth": {"abs_err": LOWER, "rel_err": LOWER, "sigma_1.25": HIGHER, "sigma_1.25^2": HIGHER,
              "sigma_1.25^3": HIGHER},
    "keypoint": {"err": LOWER},
    "edge": {"err": LOWER},
}
DELTA_M_METRICS: dict[str, tuple[str, ...]] = {
    "seg": ("mIoU", "Pixel Acc"),
    "sn": ("Angle Mean", "Angle Median", "Angle 11.25", "Angle 22.5", "Angle 30", "Angle 45"),
    "depth": ("abs_err", "rel_err", "sigma_1.25", "sigma_1.25^2", "sigma_1.25^3"),
    "keypoint": ("err",),
    "edge": ("err",),
}


def _number(value: Any) -> float:
    """A metric value as a float; null (how metrics files store an undefined metric) reads as NaN."""
    return math.nan if value is None else float(value)


def lower_is_better(task: str, metric: str) -> bool:
    try:
        return METRIC_DIRECTIONS[task][metric] == LOWER
    except KeyError:
        raise ValueError(f"no direction known for metric {task}/{metric}") from None


DELTA_M_DEFINITIONS = ("task_mean", "metric_mean")


def delta_m(metrics: Mapping[str, Any], baseline: Mapping[str, Any], definition: str = "task_mean") -> float:
    """Δm in percent of `metrics` against `baseline` (both metrics dicts as `MetricAccumulator.compute`
    or a metrics JSON gives them; top-level scalars such as `delta_m` and `sparsity` are ignored),
    under `definition` (`task_mean` or `metric_mean`, see the module docstring).

    Raises a one-line ValueError when the task sets differ, a metric is missing or not finite, or every
    baseline value of a task is 0 (single zero baselines are skipped with a warning).
    """
    if definition not in DELTA_M_DEFINITIONS:
        raise ValueError(f"delta_m: unknown definition {definition!r} (expected one of {', '.join(DELTA_M_DEFINITIONS)})")
    tasks, base_tasks = metric_tasks(metrics), metric_tasks(baseline)
    if set(tasks) != set(base_tasks):
        raise ValueError(f"delta_m: tasks differ from the baseline's ({', '.join(tasks)} vs {', '.join(base_tasks)})")
    if not tasks:
        raise ValueError("delta_m: no task metrics to compare")
    per_task: list[list[float]] = []
    for task in tasks:
        terms = []
        for name in DELTA_M_METRICS[task]:
            if name not in metrics[task] or name not in baseline[task]:
                raise ValueError(f"delta_m: metric {task}/{name} is missing from the metrics or the baseline")
            value, base = _number(metrics[task][name]), _number(baseline[task][name])
            if not (math.isfinite(value) and math.isfinite(base)):
                raise ValueError(f"delta_m: metric {task}/{name} is not finite ({value} vs baseline {base})")
            if base == 0:
                warnings.warn(f"delta_m: baseline value of {task}/{name} is 0; left out of the mean", RuntimeWarning,
                              stacklevel=2)
                continue
            sign = -1.0 if lower_is_better(task, name) else 1.0
            terms.append(sign * (value - base) / base)
        if not terms:
            raise ValueError(f"delta_m: every baseline metric of task {task} is 0, so no relative change exists")
        per_task.append(terms)
    if definition == "metric_mean":
        flat = [r for terms in per_task for r in terms]
        return 100.0 * sum(flat) / len(flat)
    return 100.0 * sum(sum(terms) / len(terms) for terms in per_task) / len(per_task)
