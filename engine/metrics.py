"""Evaluation metrics (docs/ORIGINAL.md §4), accumulated as sufficient statistics.

`MetricAccumulator` keeps only sums and counts (a confusion matrix, error sums, pixel counts, a fixed
histogram of normal angles), so partial results from several batches, processes or DDP ranks add up:
`merge()` adds another accumulator's state and `all_reduce()` sums over a `torch.distributed` group.
`compute()` turns the statistics into the metrics dict with the original keys (docs/ARCHITECTURE.md contract 8).

Two definitions (`compat`), documented in docs/METRICS.md:

* `standard` (default): predictions bilinearly resized to the ground-truth size (normals
  renormalised), pixel-pooled means, mIoU over classes present in GT or prediction (union > 0),
  ignore pixels excluded everywhere, a non-positive depth prediction never within δ.
* `adashare`: the original's quirks, to match published numbers: nearest resize, mIoU over classes
  with TP > 0 only, per-batch pixel accuracy / seg err / depth abs & rel err / keypoint & edge err
  averaged with batch-size weights, Cityscapes −1 pixels counted in pixel accuracy (valid = gt < C),
  a negative depth prediction counted within δ, (with `normals_encoded=True`) normal angles
  measured in the PNG-encoded space (a pixel with any channel at 255 invalid, the original's rule there),
  cosines in float32 and the exact Angle Median of all pooled
  angles (the original's float32 pipeline).

`normals_space="encoded"` says the predictions are the original's (a direction in encoded B, G, R
space: an imported original NYUv2 net, or one trained with `loss.normals_space: encoded`); their
angles are measured in that space in both definitions, since no decoded normal can be recovered from
such a direction (docs/METRICS.md).

Units as the original: mIoU and Pixel Acc are fractions in [0, 1]; the Angle thresholds and the
sigma (δ) values are percentages in [0, 100]; angles in degrees; errors in the target's units.
In `standard`, Angle Median comes from a histogram with `angle_bin_deg` (0.01°) bins, bin centres, so
it is within half a bin (0.005°) of the exact median and the state stays small; `adashare` keeps every
valid pixel's cosine (as the original did) and reports the exact median.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from fileio.normals import ENCODED_NORMALS_DATASETS, normals_space_of

from .losses import DEFAULT_IGNORE_INDEX
from .targets import NORMALS_SPACES, TARGET_KEY, encode_normals, encoded_normals_target, get_target, valid_mask

COMPAT_MODES = ("standard", "adashare")
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0, 45.0)
DELTA_THRESHOLDS = (1.25, 1.25 ** 2, 1.25 ** 3)
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "seg": ("mIoU", "Pixel Acc", "err"),
    "sn": ("Angle Mean", "Angle Median", "Angle 11.25", "Angle 22.5", "Angle 30", "Angle 45"),
    "depth": ("abs_err", "rel_err", "sigma_1.25", "sigma_1.25^2", "sigma_1.25^3"),
    "keypoint": ("err",),
    "edge": ("err",),
}
# Display units for format_table: "frac" = a fraction shown ×100 as %, "%" = already a percentage.
METRIC_UNITS: dict[str, dict[str, str]] = {
    "seg": {"mIoU": "frac", "Pixel Acc": "frac", "err": ""},
    "sn": {"Angle Mean": "deg", "Angle Median": "deg", "Angle 11.25": "%", "Angle 22.5": "%",
           "Angle 30": "%", "Angle 45": "%"},
    "depth": {"abs_err": "", "rel_err": "", "sigma_1.25": "%", "sigma_1.25^2": "%", "sigma_1.25^3": "%"},
    "keypoint": {"err": ""},
    "edge": {"err": ""},
}
POOLED_KEYS = ("sn.cos",)      # variable-length states (concatenated, not summed)

_I64, _F64 = torch.int64, torch.float64


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


class MetricAccumulator:
    """Accumulate the metrics of `tasks` over a test set.

    `num_classes`: a dict task -> channels or a list aligned with `tasks` (only `seg` uses it).
    `class_weights`: per-class weights for the seg `err` (cross-entropy), as in the loss.
    `normals_encoded`: the dataset's normals were encoded PNGs in the original (nyuv2 / synthetic;
    `build_metrics` sets it): with `compat="adashare"`, angles are measured in that encoded space.
    `normals_space`: how the sn predictions are to be read, "decoded" (ours) or "encoded" (the
    original's output convention; needs `normals_encoded`; measured in encoded space in both modes).
    """

    def __init__(self, tasks: Sequence[str], num_classes: Mapping[str, int] | Sequence[int],
                 ignore_index: int = 255, compat: str = "standard", class_weights: Any = None,
                 normals_encoded: bool = False, angle_bin_deg: float = 0.01,
                 device: torch.device | str = "cpu", normals_space: str = "decoded") -> None:
        self.tasks = list(tasks)
        for task in self.tasks:
            if task not in METRIC_KEYS:
                raise ValueError(f"unknown task {task!r} (expected one of {', '.join(METRIC_KEYS)})")
        if compat not in COMPAT_MODES:
            raise ValueError(f"unknown metrics compat {compat!r} (expected one of {', '.join(COMPAT_MODES)})")
        if isinstance(num_classes, Mapping):
            self.num_classes = {t: int(num_classes[t]) for t in self.tasks if t in num_classes}
        else:
            if len(num_classes) != len(self.tasks):
                raise ValueError(f"num_classes has {len(num_classes)} entries for {len(self.tasks)} tasks")
            self.num_classes = {t: int(c) for t, c in zip(self.tasks, num_classes)}
        if "seg" in self.tasks and self.num_classes.get("seg", 0) < 1:
            raise ValueError("num_classes must give the number of segmentation classes")
        self.ignore_index = int(ignore_index)
        self.compat = compat
        self.normals_encoded = bool(normals_encoded)
        if normals_space not in NORMALS_SPACES:
            raise ValueError(f"unknown normals space {normals_space!r} (expected one of {', '.join(NORMALS_SPACES)})")
        if normals_space == "encoded" and "sn" in self.tasks and not self.normals_encoded:
            raise ValueError("normals_space 'encoded' needs a dataset whose original normals were encoded PNGs "
                             "(nyuv2, synthetic)")
        self.normals_space = normals_space
        self.class_weights = None if class_weights is None else \
            torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        if self.class_weights is not None and "seg" in self.tasks and \
                self.class_weights.numel() < self.num_classes["seg"]:
            raise ValueError(f"class_weights has {self.class_weights.numel()} entries, "
                             f"fewer than the {self.num_classes['seg']} segmentation classes")
        self.angle_bin_deg = float(angle_bin_deg)
        self.angle_bins = int(math.ceil(180.0 / self.angle_bin_deg))
        self.device = torch.device(device)
        self._stats: dict[str, torch.Tensor] = {}
        self.reset()

    # ------------------------------------------------------------------ state
    def _spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        spec: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for task in self.tasks:
            if task == "seg":
                c = self.num_classes["seg"]
                spec.update({"seg.confusion": ((c, c), _I64), "seg.correct": ((), _I64), "seg.pixels": ((), _I64),
                             "seg.ce_sum": ((), _F64), "seg.ce_weight": ((), _F64),
                             "seg.acc_bsum": ((), _F64), "seg.acc_bweight": ((), _F64),
                             "seg.err_bsum": ((), _F64), "seg.err_bweight": ((), _F64)})
            elif task == "sn":
                spec.update({"sn.hist": ((self.angle_bins,), _I64), "sn.count": ((), _I64),
                             "sn.angle_sum": ((), _F64), "sn.within": ((len(ANGLE_THRESHOLDS),), _I64)})
                if self.compat == "adashare":
                    spec["sn.cos"] = ((0,), torch.float32)
            elif task == "depth":
                spec.update({"depth.count": ((), _I64), "depth.abs_sum": ((), _F64), "depth.rel_sum": ((), _F64),
                             "depth.within": ((len(DELTA_THRESHOLDS),), _I64),
                             "depth.abs_bsum": ((), _F64), "depth.rel_bsum": ((), _F64),
                             "depth.bweight": ((), _F64)})
            else:
                spec.update({f"{task}.count": ((), _I64), f"{task}.abs_sum": ((), _F64),
                             f"{task}.abs_bsum": ((), _F64), f"{task}.bweight": ((), _F64)})
        return spec

    def reset(self) -> "MetricAccumulator":
        self._stats = {k: torch.zeros(shape, dtype=dt, device=self.device) for k, (shape, dt) in self._spec().items()}
        return self

    def to(self, device: torch.device | str) -> "MetricAccumulator":
        self.device = torch.device(device)
        self._stats = {k: v.to(self.device) for k, v in self._stats.items()}
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """The sufficient statistics as CPU tensors (plain types: saves with torch.save, loads weights_only)."""
        return {k: v.detach().cpu().clone() for k, v in self._stats.items()}

    def _check_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self._stats):
            raise ValueError(f"metric state keys {sorted(state)} do not match this accumulator's {sorted(self._stats)}")
        for k, v in state.items():
            if k in POOLED_KEYS and v.ndim == 1:
                continue
            if tuple(v.shape) != tuple(self._stats[k].shape):
                raise ValueError(f"metric state {k!r} has shape {tuple(v.shape)}, expected {tuple(self._stats[k].shape)}")

    def load_state(self, state: Mapping[str, torch.Tensor]) -> "MetricAccumulator":
        self._check_state(state)
        self._stats = {k: torch.as_tensor(state[k]).to(self.device, self._stats[k].dtype).clone() for k in self._stats}
        return self

    def merge(self, other: "MetricAccumulator | Mapping[str, torch.Tensor]") -> "MetricAccumulator":
        """Add another accumulator's (or state dict's) statistics to this one."""
        state = other.state() if isinstance(other, MetricAccumulator) else other
        self._check_state(state)
        for k in self._stats:
            self._add(k, torch.as_tensor(state[k]).to(self.device))
        return self

    def all_reduce(self, group: Any = None) -> "MetricAccumulator":
        """Sum the statistics over all ranks (a no-op unless torch.distributed is initialised).

        Every rank must call it, once, after its last `update` and before `compute`. Statistics are
        packed into one int64 and one float64 buffer (two collectives); NCCL gets CUDA buffers, gloo
        CPU buffers, whatever device the statistics live on. The pooled cosines of `adashare` are
        gathered from every rank (in rank order).
        """
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return self
        from .distributed import all_gather_object
        for key in POOLED_KEYS:
            if key in self._stats:
                parts = all_gather_object(self._stats[key].cpu())
                self._stats[key] = torch.cat(parts).to(self.device)
        backend = str(dist.get_backend(group))
        if backend == "nccl":
            comm = torch.device("cuda", torch.cuda.current_device())
        elif self.device.type == "cuda" and backend != "gloo":
            comm = self.device
        else:
            comm = torch.device("cpu")
        for dtype in (_I64, _F64):
            keys = [k for k in sorted(self._stats) if self._stats[k].dtype == dtype and k not in POOLED_KEYS]
            if not keys:
                continue
            flat = torch.cat([self._stats[k].reshape(-1) for k in keys]).to(comm)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat = flat.to(self.device)
            offset = 0
            for k in keys:
                n = self._stats[k].numel()
                self._stats[k] = flat[offset:offset + n].reshape(self._stats[k].shape).clone()
                offset += n
        return self

    # ----------------------------------------------------------------- update
    def _resize(self, pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        pred = pred.float()
        if tuple(pred.shape[-2:]) == tuple(size):
            return pred
        if self.compat == "adashare":
            return F.interpolate(pred, size=tuple(size), mode="nearest")
        return F.interpolate(pred, size=tuple(size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def update(self, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: `preds` task -> network output (any resolution), `batch` with the full-size GT."""
        for task in self.tasks:
            if task not in preds:
                raise ValueError(f"no prediction for task {task!r} (got {', '.join(preds)})")
            pred = preds[task].detach()
            if pred.ndim != 4:
                raise ValueError(f"task {task!r}: expected a B×C×H×W prediction, got shape {tuple(pred.shape)}")
            if pred.device != self.device:
                self.to(pred.device)
            target = get_target(task, batch).to(pred.device, non_blocking=True)
            if target.shape[0] != pred.shape[0]:
                raise ValueError(f"task {task!r}: {pred.shape[0]} predictions for {target.shape[0]} targets")
            pred = self._resize(pred, target.shape[-2:])
            getattr(self, f"_update_{'dense' if task in ('keypoint', 'edge') else task}")(task, pred, target)

    def _add(self, key: str, value: torch.Tensor) -> None:
        if key in POOLED_KEYS:
            self._stats[key] = torch.cat([self._stats[key], value.reshape(-1).to(self._stats[key].dtype)])
        else:
            self._stats[key] += value.to(self._stats[key].dtype)

    def _add_batch_mean(self, keys: Sequence[str], weight_key: str, totals: Sequence[torch.Tensor],
                        count: torch.Tensor, batch_size: int) -> None:
        """Original per-batch means (one per key), weighted by batch size; a batch with no valid pixel
        is skipped (the original would produce NaN there). No host-device synchronisation."""
        has = count > 0
        den = torch.where(has, count, torch.ones_like(count)).double()
        for key, total in zip(keys, totals):
            mean = total.double() / den
            self._add(key, torch.where(has, mean, torch.zeros_like(mean)) * batch_size)
        self._add(weight_key, has.double() * batch_size)

    def _update_seg(self, task: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes["seg"]
        if logits.shape[1] != c:
            raise ValueError(f"task 'seg': prediction has {logits.shape[1]} channels, expected {c} classes")
        b = logits.shape[0]
        labels = target[:, 0].long()
        pred = logits.argmax(dim=1)
        valid = valid_mask("seg", target, self.ignore_index)[:, 0] & (labels >= 0) & (labels < c)
        # confusion matrix (both definitions): labels in 0..C-1, ignore excluded
        idx = labels[valid] * c + pred[valid]
        self._add("seg.confusion", torch.bincount(idx, minlength=c * c).reshape(c, c))
        hit = (pred == labels)
        correct, pixels = (hit & valid).sum(), valid.sum()
        self._add("seg.correct", correct)
        self._add("seg.pixels", pixels)
        # cross-entropy of the resized logits at valid pixels, class-weighted as F.cross_entropy
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        nll = -torch.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1))[:, 0].double()
        if self.class_weights is not None:
            w = self.class_weights[:c].to(logits.device).double()[safe]
        else:
            w = torch.ones_like(nll)
        w = torch.where(valid, w, torch.zeros_like(w))
        ce_sum, ce_weight = (w * nll).sum(), w.sum()
        self._add("seg.ce_sum", ce_sum)
        self._add("seg.ce_weight", ce_weight)
        self._add_batch_mean(["seg.err_bsum"], "seg.err_bweight", [ce_sum], ce_weight, b)
        # original per-batch pixel accuracy: valid = gt < C (so Cityscapes -1 pixels count as errors)
        quirk_valid = labels < c
        self._add_batch_mean(["seg.acc_bsum"], "seg.acc_bweight", [(hit & quirk_valid).sum()], quirk_valid.sum(), b)

    def measured_encoded(self) -> bool:
        """Whether normal angles are measured in the original's encoded space (see the class docstring)."""
        return self.normals_space == "encoded" or (self.compat == "adashare" and self.normals_encoded)

    def _update_sn(self, task: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = valid_mask("sn", target, self.ignore_index)[:, 0]
        compat = self.compat == "adashare"
        p, g = (pred.float(), target.float()) if compat else (pred.double(), target.double())
        if self.measured_encoded():
            if self.normals_space == "decoded":
                p = encode_normals(F.normalize(p, dim=1))
            g, valid = encoded_normals_target(g)
            valid = valid[:, 0]
        cos = (F.normalize(p, dim=1) * F.normalize(g, dim=1)).sum(dim=1)[valid]
        if compat:
            self._add("sn.cos", cos)
        angle = torch.rad2deg(torch.acos(cos.double().clamp(-1.0, 1.0)))
        self._add("sn.count", valid.sum())
        self._add("sn.angle_sum", angle.sum())
        self._add("sn.within", torch.stack([(angle <= t).sum() for t in ANGLE_THRESHOLDS]))
        bins = torch.floor(torch.nan_to_num(angle, nan=180.0) / self.angle_bin_deg).long().clamp(0, self.angle_bins - 1)
        self._add("sn.hist", torch.bincount(bins, minlength=self.angle_bins))

    def _update_depth(self, task: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = valid_mask("depth", target, self.ignore_index)[:, 0]
        p, g = pred[:, 0].double()[valid], target[:, 0].double()[valid]
        abs_err = (p - g).abs()
        rel_err = abs_err / g
        n = valid.sum()
        self._add("depth.count", n)
        self._add("depth.abs_sum", abs_err.sum())
        self._add("depth.rel_sum", rel_err.sum())
        self._add_batch_mean(["depth.abs_bsum", "depth.rel_bsum"], "depth.bweight",
                             [abs_err.sum(), rel_err.sum()], n, pred.shape[0])
        ratio = torch.maximum(p / g, g / p)
        if self.compat == "adashare":
            within = [(ratio <= t).sum() for t in DELTA_THRESHOLDS]       # negative p -> ratio < 0 -> "within"
        else:
            within = [((p > 0) & (ratio <= t)).sum() for t in DELTA_THRESHOLDS]
        self._add("depth.within", torch.stack(within))

    def _update_dense(self, task: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = valid_mask(task, target, self.ignore_index)[:, 0]
        err = (pred[:, 0].double() - target[:, 0].double())[valid].abs()
        n = valid.sum()
        self._add(f"{task}.count", n)
        self._add(f"{task}.abs_sum", err.sum())
        self._add_batch_mean([f"{task}.abs_bsum"], f"{task}.bweight", [err.sum()], n, pred.shape[0])

    # ---------------------------------------------------------------- compute
    @staticmethod
    def _exact_median(cos: torch.Tensor) -> float:
        """np.median of the pooled angles: the mean of the two middle ones for an even count."""
        if cos.numel() == 0:
            return math.nan
        angles = torch.sort(torch.rad2deg(torch.acos(cos.double().clamp(-1.0, 1.0)))).values
        n = angles.numel()
        return float((angles[(n - 1) // 2] + angles[n // 2]) / 2)

    def _median_from_hist(self, hist: torch.Tensor, count: int) -> float:
        if count <= 0:
            return math.nan
        cum = torch.cumsum(hist, 0)
        ranks = torch.tensor([(count - 1) // 2, count // 2], dtype=cum.dtype)
        bins = torch.searchsorted(cum, ranks, right=True).double()
        return float(((bins + 0.5) * self.angle_bin_deg).mean())

    def compute(self) -> dict[str, dict[str, float]]:
        """Metrics dict, task -> {metric: float}; NaN where the test set had no valid pixel for it."""
        s = {k: v.detach().cpu() for k, v in self._stats.items()}
        std = self.compat == "standard"
        out: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            if task == "seg":
                conf = s["seg.confusion"].double()
                tp = conf.diag()
                union = conf.sum(0) + conf.sum(1) - tp
                keep = union > 0 if std else tp > 0
                if keep.any():
                    miou = float((tp[keep] / union[keep]).mean())
                else:
                    miou = 0.0 if (not std and conf.sum() > 0) else math.nan
                out["seg"] = {
                    "mIoU": miou,
                    "Pixel Acc": _div(s["seg.correct"], s["seg.pixels"]) if std
                    else _div(s["seg.acc_bsum"], s["seg.acc_bweight"]),
                    "err": _div(s["seg.ce_sum"], s["seg.ce_weight"]) if std
                    else _div(s["seg.err_bsum"], s["seg.err_bweight"]),
                }
            elif task == "sn":
                n = int(s["sn.count"])
                res = {"Angle Mean": _div(s["sn.angle_sum"], n),
                       "Angle Median": self._median_from_hist(s["sn.hist"], n) if std
                       else self._exact_median(s["sn.cos"])}
                for t, w in zip(METRIC_KEYS["sn"][2:], s["sn.within"].tolist()):
                    res[t] = 100.0 * _div(w, n)
                out["sn"] = res
            elif task == "depth":
                n = int(s["depth.count"])
                res = {"abs_err": _div(s["depth.abs_sum"], n) if std else _div(s["depth.abs_bsum"], s["depth.bweight"]),
                       "rel_err": _div(s["depth.rel_sum"], n) if std else _div(s["depth.rel_bsum"], s["depth.bweight"])}
                for t, w in zip(METRIC_KEYS["depth"][2:], s["depth.within"].tolist()):
                    res[t] = 100.0 * _div(w, n)
                out["depth"] = res
            else:
                out[task] = {"err": _div(s[f"{task}.abs_sum"], s[f"{task}.count"]) if std
                             else _div(s[f"{task}.abs_bsum"], s[f"{task}.bweight"])}
        return out


def build_metrics(config: Mapping[str, Any], dataset: Any = None, device: torch.device | str = "cpu",
                  compat: str | None = None, normals_space: str | None = None) -> MetricAccumulator:
    """The accumulator for a resolved config; every evaluation builds it here.

    tasks / num_classes from the config; `compat` defaults to `eval.metrics_compat`, `normals_space`
    to `loss.normals_space` (pass the checkpoint's when it differs: an imported original net predicts
    encoded normals); ignore_index / class_weights from the dataset object (Cityscapes −1 / 255
    without one); normals_encoded for nyuv2 and synthetic.
    """
    name = config.get("dataset")
    default_ignore = DEFAULT_IGNORE_INDEX.get(name, 255)
    ignore_index = getattr(dataset, "ignore_index", default_ignore) if dataset is not None else default_ignore
    class_weights = getattr(dataset, "class_weights", None) if dataset is not None else None
    compat = compat or (config.get("eval") or {}).get("metrics_compat", "standard")
    return MetricAccumulator(list(config["tasks"]), list(config["num_classes"]), ignore_index, compat, class_weights,
                             normals_encoded=name in ENCODED_NORMALS_DATASETS, device=device,
                             normals_space=normals_space or normals_space_of(config))


def _fmt(value: Any, unit: str) -> tuple[str, str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value), ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value), ""
    if isinstance(value, int) and unit == "":
        return f"{value:,}", ""                       # counts (a net's parameters, MACs)
    if unit == "frac":
        return f"{100.0 * value:.2f}", "%"
    if unit in ("%", "deg"):
        return f"{value:.2f}", unit
    return f"{value:.4f}", ""


def format_table(metrics: Mapping[str, Any]) -> str:
    """A readable aligned table of a metrics dict (fractions shown as %, for display only).

    Top-level scalars (`delta_m` in %, `sparsity` as a fraction shown in %) are listed after the tasks.
    """
    rows: list[tuple[str, str, str, str]] = []
    for task, values in metrics.items():
        if isinstance(values, Mapping):
            units = METRIC_UNITS.get(task, {})
            for name, value in values.items():
                rows.append((task, str(name), *_fmt(value, units.get(name, ""))))
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            continue
        text, unit = _fmt(value, {"delta_m": "%", "sparsity": "frac"}.get(key, ""))
        if key == "delta_m" and isinstance(value, (int, float)) and math.isfinite(value):
            text = f"{value:+.2f}"
        rows.append((key, "", text, unit))
    header = ("task", "metric", "value", "unit")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:>{widths[2]}}  {header[3]}".rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())
    return "\n".join(lines)


def metric_tasks(metrics: Mapping[str, Any]) -> list[str]:
    """The task entries of a metrics dict (skipping top-level scalars like `delta_m`, `sparsity`)."""
    return [t for t, v in metrics.items() if isinstance(v, Mapping) and t in METRIC_KEYS]


__all__: Iterable[str] = ["ANGLE_THRESHOLDS", "COMPAT_MODES", "DELTA_THRESHOLDS", "METRIC_KEYS", "METRIC_UNITS",
                          "MetricAccumulator", "build_metrics", "format_table", "metric_tasks", "TARGET_KEY"]
