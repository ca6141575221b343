"""Meta-Sparse task similarity from per-task sparse masks (docs/ORIGINAL.md §9).

For each task the static DiSparse saliency (SNIP on a fresh net, docs/ORIGINAL.md §5.1) gives scores
over the task's pool (backbone + own head); the task's keep mask at keep ratio k is its exact top-k over
that pool. No arbiter: the masks stay per task. Two tasks are compared over the **backbone layers**, all
of them (the 33 chain convs in forward order, then the 3 shortcuts, i.e. `TaskStructure.shared` in layer
order, as the original), layer by layer:

| `sim_method` | report name | per-layer value |
|---|---|---|
| `epi` | EPI-Sim | 1 − \\|n_a − n_b\\| / max(n_a + n_b, 1e-9), n = kept weights in the layer (counts only) |
| `iou` | IoU | \\|K_a ∧ K_b\\| / \\|K_a ∨ K_b\\| (1.0 when both are empty) |
| `sals` | CSS | cosine of the two flattened saliency tensors (independent of k) |
| `masked_sals` | MCSS | cosine of K_a ⊙ sal_a and K_b ⊙ sal_b |

Cosines are scale-invariant, so normalising a task's scores by their pool sum (as the original does)
changes nothing; two all-zero vectors have cosine 1, one all-zero vector gives 0.

Layer weights w_l (l = 0-based layer index in the order above; of the *whole* layer, n = the number of
weights a task keeps, s = its sparsity, the fraction it prunes):

| `layer_method` | w_l |
|---|---|
| `equal` | 1 |
| `linear` | l (the stem gets 0) |
| `linear_plus_one` | l + 1 |
| `five_zeros` | 0 for l < 5, else 1 ("step like" in the report) |
| `av_sparsity` | s_a + s_b ("sparsity" in the report) |
| `min_sparsity` | min(s_a, s_b) |
| `epi_like` | 1 − \\|n_a − n_b\\| / max(n_a + n_b, 1e-9): the EPI formula on kept counts, as Meta-Sparse |

Pair score = Σ w_l·sim_l / Σ w_l (NaN when Σ w_l = 0), then the unweighted mean over the keep ratios
of the requested sparsities, then the mean over seeds.

**The original's bug** (§9.1, §11.9): its last three weightings index the already-selected layer
tensor by the layer number, so they measure the sparsity (and kept count) of *output-channel row l of
layer l* instead of the whole layer. This module computes the whole layer. The buggy variant exists only as
an explicit compatibility switch (`compat_row_slice=True`, CLI `--compat_row_slice`), stored in
`table.json` under a separate `{layer_method}-rowslice` key so the two never mix.

Saliency cache: `npz` files (loaded with `allow_pickle=False`; never pickle) named by, and holding a
JSON record of, everything the scores depend on: dataset, tasks and classes, num_batches, batch size,
seed, width, saliency method and mode, crop and data root. The original keyed its cache by seed only, so
changing `num_batches` or the task set silently reused stale scores (§11.10).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fileio import atomic_write, atomic_write_json, read_json

from .iou import PAIR_SEP, iou as _iou

SIM_METHODS = ("iou", "epi", "sals", "masked_sals")
LAYER_METHODS = ("equal", "linear", "linear_plus_one", "five_zeros", "av_sparsity", "min_sparsity", "epi_like")
SPARSITY_WEIGHTINGS = ("av_sparsity", "min_sparsity", "epi_like")
KEEP_RATIO_MODES = ("paper", "exact")
CACHE_VERSION = 1
EPS = 1e-9


# --------------------------------------------------------------------------------------------------
# Per-layer measures


def _flat64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1).to(torch.float64)


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """Cosine of two flattened tensors in float64; 1.0 if both are zero, 0.0 if exactly one is."""
    x, y = _flat64(x), _flat64(y)
    if x.numel() != y.numel():
        raise ValueError(f"cosine of tensors of different sizes: {x.numel()} vs {y.numel()}")
    nx, ny = float(torch.linalg.vector_norm(x)), float(torch.linalg.vector_norm(y))
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float(torch.dot(x, y)) / (nx * ny)))


def epi(n_a: float, n_b: float) -> float:
    """The EPI formula: 1 − |a − b| / max(a + b, 1e-9)."""
    return 1.0 - abs(n_a - n_b) / max(n_a + n_b, EPS)


def layer_similarity(method: str, mask_a: torch.Tensor, mask_b: torch.Tensor,
                     sal_a: torch.Tensor | None = None, sal_b: torch.Tensor | None = None) -> float:
    """One layer's similarity of two tasks under `method` (see the module docstring)."""
    if method == "epi":
        return epi(float(torch.count_nonzero(mask_a)), float(torch.count_nonzero(mask_b)))
    if method == "iou":
        return _iou([mask_a, mask_b])
    if sal_a is None or sal_b is None:
        raise ValueError(f"similarity {method!r} needs the saliency tensors")
    if method == "sals":
        return cosine(sal_a, sal_b)
    if method == "masked_sals":
        return cosine(sal_a * mask_a.to(sal_a.dtype), sal_b * mask_b.to(sal_b.dtype))
    raise ValueError(f"unknown similarity method {method!r} (expected one of {', '.join(SIM_METHODS)})")


def layer_weights(method: str, kept_a: Sequence[float], kept_b: Sequence[float], sizes: Sequence[float]) -> np.ndarray:
    """w_l for every layer given the two tasks' kept counts per layer and the layers' sizes (the sparsity
    is 1 − kept/size; the index weightings ignore all three)."""
    n = len(kept_a)
    idx = np.arange(n, dtype=np.float64)
    na, nb = np.asarray(kept_a, dtype=np.float64), np.asarray(kept_b, dtype=np.float64)
    size = np.asarray(sizes, dtype=np.float64)
    sa, sb = 1.0 - na / size, 1.0 - nb / size
    if method == "equal":
        return np.ones(n)
    if method == "linear":
        return idx
    if method == "linear_plus_one":
        return idx + 1.0
    if method == "five_zeros":
        return (idx >= 5).astype(np.float64)
    if method == "av_sparsity":
        return sa + sb
    if method == "min_sparsity":
        return np.minimum(sa, sb)
    if method == "epi_like":
        return 1.0 - np.abs(na - nb) / np.maximum(na + nb, EPS)
    raise ValueError(f"unknown layer method {method!r} (expected one of {', '.join(LAYER_METHODS)})")


def weighted_score(values: Sequence[float], weights: Sequence[float]) -> float:
    """Σ w·v / Σ w; NaN when the weights sum to 0 (the score is undefined then)."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    return float(np.dot(w, v) / total) if total != 0.0 else float("nan")


# --------------------------------------------------------------------------------------------------
# Per-(seed, keep ratio) statistics: everything a weighting needs, so all 28 cells come from one pass


@dataclass
class LayerStats:
    """Per-layer similarities of every task pair (self-pairs included) and per-task kept counts, of the
    whole layer and of the original's row slice (output-channel row l of layer l; NaN = no such row)."""
    tasks: list[str]
    layers: list[str]
    keep_ratio: float
    sims: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_kept: dict[str, np.ndarray] = field(default_factory=dict)
    row_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def sparsity(self) -> dict[str, np.ndarray]:
        """Per task, the fraction of each layer's weights it prunes."""
        return {t: 1.0 - k / self.sizes for t, k in self.kept.items()}

    @property
    def row_sparsity(self) -> dict[str, np.ndarray]:
        """Per task, the original's buggy "layer sparsity" (of row l of layer l)."""
        return {t: 1.0 - k / self.row_sizes for t, k in self.row_kept.items()}

    def pair(self, a: str, b: str) -> dict[str, np.ndarray]:
        return self.sims[(a, b)] if (a, b) in self.sims else self.sims[(b, a)]

    def weights(self, a: str, b: str, layer_method: str, compat_row_slice: bool = False) -> np.ndarray:
        """w_l of the pair (see `layer_weights`); `compat_row_slice` reads the original's row slices."""
        if compat_row_slice and layer_method in SPARSITY_WEIGHTINGS:
            if np.isnan(self.row_sizes).any():
                bad = self.layers[int(np.flatnonzero(np.isnan(self.row_sizes))[0])]
                raise ValueError(f"--compat_row_slice: layer {bad} has fewer output channels than its index, so the "
                                 f"original's row slice does not exist (it would crash too)")
            return layer_weights(layer_method, self.row_kept[a], self.row_kept[b], self.row_sizes)
        return layer_weights(layer_method, self.kept[a], self.kept[b], self.sizes)

    def score(self, a: str, b: str, sim_method: str, layer_method: str, compat_row_slice: bool = False) -> float:
        return weighted_score(self.pair(a, b)[sim_method], self.weights(a, b, layer_method, compat_row_slice))


def _gram_cosine(x: torch.Tensor) -> torch.Tensor:
    """Pairwise cosines of the rows of `x` (float64), with the zero-vector conventions of `cosine`."""
    gram = x @ x.T
    norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0.0))
    denom = norms[:, None] * norms[None, :]
    cos = torch.where(denom > 0, gram / torch.where(denom > 0, denom, torch.ones_like(denom)),
                      torch.zeros_like(gram)).clamp(-1.0, 1.0)
    both_zero = (norms[:, None] == 0) & (norms[None, :] == 0)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def layer_values(masks: Sequence[torch.Tensor], sals: Sequence[torch.Tensor] | None,
                 sim_methods: Sequence[str] = SIM_METHODS) -> dict[str, torch.Tensor]:
    """All T×T per-layer similarities of one layer at once (Gram matrices; same values as
    `layer_similarity` pair by pair)."""
    m = torch.stack([_flat64(mask.to(torch.bool)) for mask in masks])
    out: dict[str, torch.Tensor] = {}
    counts = m.sum(dim=1)
    if "iou" in sim_methods:
        inter = m @ m.T
        union = counts[:, None] + counts[None, :] - inter
        out["iou"] = torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)),
                                 torch.ones_like(union))
    if "epi" in sim_methods:
        out["epi"] = 1.0 - (counts[:, None] - counts[None, :]).abs() / torch.clamp(counts[:, None] + counts[None, :],
                                                                                   min=EPS)
    if "sals" in sim_methods or "masked_sals" in sim_methods:
        if sals is None:
            raise ValueError("similarities sals / masked_sals need the saliency tensors")
        x = torch.stack([_flat64(sal) for sal in sals])
        if "sals" in sim_methods:
            out["sals"] = _gram_cosine(x)
        if "masked_sals" in sim_methods:
            out["masked_sals"] = _gram_cosine(x * m)
    unknown = [s for s in sim_methods if s not in SIM_METHODS]
    if unknown:
        raise ValueError(f"unknown similarity method {unknown[0]!r} (expected one of {', '.join(SIM_METHODS)})")
    return out


def layer_stats(task_masks: Mapping[str, Mapping[str, torch.Tensor]], scores: Mapping[str, Mapping[str, torch.Tensor]],
                layers: Sequence[str], keep_ratio: float = float("nan"),
                sim_methods: Sequence[str] = SIM_METHODS) -> LayerStats:
    """Per-layer similarity values for all task pairs (a <= b in task order) and the per-task kept counts."""
    tasks = list(task_masks)
    first = [task_masks[tasks[0]][name] for name in layers]
    has_row = [l < m.shape[0] for l, m in enumerate(first)]
    stats = LayerStats(tasks=tasks, layers=list(layers), keep_ratio=keep_ratio,
                       sizes=np.array([m.numel() for m in first], dtype=np.float64),
                       row_sizes=np.array([m[l].numel() if ok else np.nan for l, (m, ok) in enumerate(zip(first, has_row))],
                                          dtype=np.float64))
    for t in tasks:
        masks = [task_masks[t][name] for name in layers]
        stats.kept[t] = np.array([int(torch.count_nonzero(m)) for m in masks], dtype=np.float64)
        stats.row_kept[t] = np.array([int(torch.count_nonzero(m[l])) if ok else np.nan
                                      for l, (m, ok) in enumerate(zip(masks, has_row))], dtype=np.float64)
    need_sals = any(m in ("sals", "masked_sals") for m in sim_methods)
    per_layer = [layer_values([task_masks[t][name] for t in tasks],
                              [scores[t][name] for t in tasks] if need_sals else None, sim_methods)
                 for name in layers]
    for i, a in enumerate(tasks):
        for j in range(i, len(tasks)):
            stats.sims[(a, tasks[j])] = {method: np.array([float(v[method][i, j]) for v in per_layer])
                                         for method in sim_methods}
    return stats


def similarity_matrix(stats_grid: Sequence[Sequence[LayerStats]], sim_method: str, layer_method: str,
                      compat_row_slice: bool = False) -> np.ndarray:
    """T×T matrix: per seed, the mean over keep ratios of the pair score; then the mean over seeds.

    `stats_grid[seed][ratio]`. Symmetric by construction.
    """
    if not stats_grid or not stats_grid[0]:
        raise ValueError("no statistics to average")
    tasks = stats_grid[0][0].tasks
    n = len(tasks)
    per_seed = np.zeros((len(stats_grid), n, n))
    for s, per_ratio in enumerate(stats_grid):
        for i in range(n):
            for j in range(i, n):
                value = float(np.mean([st.score(tasks[i], tasks[j], sim_method, layer_method, compat_row_slice)
                                       for st in per_ratio]))
                per_seed[s, i, j] = per_seed[s, j, i] = value
    return per_seed.mean(axis=0)


# --------------------------------------------------------------------------------------------------
# Keep ratios and sparsity labels


def parse_sparsities(text: str) -> list[float]:
    """"30,50,70,90" -> [30.0, 50.0, 70.0, 90.0]; each strictly inside (0, 100)."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--sparsities: {part!r} is not a number") from None
        if not 0 < value < 100:
            raise ValueError(f"--sparsities: {part} is not strictly between 0 and 100")
        values.append(value)
    if not values:
        raise ValueError("--sparsities lists no sparsity")
    return values


def _label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def sparsity_label(sparsities: Sequence[float]) -> str:
    """"s30,50,70,90": the original's table-entry prefix."""
    return "s" + ",".join(_label(s) for s in sparsities)


def keep_ratio_for(sparsity: float, config: Mapping, mode: str = "paper") -> float:
    """Per-task keep ratio for a sparsity label.

    `paper`: the config's `pruning.paper_keep_ratios.disparse_static` table (the original's hand-tuned
    values, what Meta-Sparse used), falling back to (100 − r)/100 for a level the table lacks, as the
    original does. `exact`: (100 − r)/100, i.e. each task's own mask has exactly r % sparsity over its
    pool. Neither is the whole-model sparsity after an arbiter: there is no arbiter here.
    """
    if mode == "exact":
        return (100.0 - sparsity) / 100.0
    if mode != "paper":
        raise ValueError(f"unknown keep-ratio mode {mode!r} (expected paper or exact)")
    table = (config.get("pruning", {}).get("paper_keep_ratios", {}) or {}).get("disparse_static", {}) or {}
    for key, value in table.items():
        if float(key) == float(sparsity):
            return float(value)
    return (100.0 - sparsity) / 100.0


# --------------------------------------------------------------------------------------------------
# Saliency cache (npz, no pickle)


def cache_key(config: Mapping, *, seed: int, num_batches: int, method: str, batch_size: int,
              mode: str = "batch_stats") -> dict[str, Any]:
    """Everything the cached scores depend on."""
    return {
        "version": CACHE_VERSION,
        "dataset": config["dataset"],
        "tasks": list(config["tasks"]),
        "num_classes": list(config["num_classes"]),
        "num_batches": int(num_batches),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "width_mult": float(config["model"]["width_mult"]),
        "method": str(method),
        "mode": str(mode),
        "crop": [int(config["data"]["crop_h"]), int(config["data"]["crop_w"])],
        "data_root": config.get("data_root"),
    }


def cache_path(cache_dir: str | os.PathLike, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = (f"scores_{key['method']}_{'-'.join(key['tasks'])}_nb{key['num_batches']}_bs{key['batch_size']}"
            f"_s{key['seed']}_w{key['width_mult']:g}_{digest}.npz")
    return Path(cache_dir) / str(key["dataset"]) / name


def save_scores(path: str | os.PathLike, scores: Mapping[str, Mapping[str, torch.Tensor]],
                key: Mapping[str, Any]) -> None:
    """Atomic npz of float32 arrays `"<task>|<param>"` plus a JSON record (`__meta__`) of key and order."""
    order = {t: list(per_task) for t, per_task in scores.items()}
    arrays = {f"{t}|{name}": v.detach().to("cpu", torch.float32).numpy()
              for t, per_task in scores.items() for name, v in per_task.items()}
    arrays["__meta__"] = np.array(json.dumps({"key": dict(key), "order": order}))
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def load_scores(path: str | os.PathLike, key: Mapping[str, Any] | None = None) -> dict[str, dict[str, torch.Tensor]] | None:
    """The cached scores, or None when the file is absent, unreadable or was made for another key."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if key is not None and meta.get("key") != json.loads(json.dumps(dict(key))):
                return None
            return {t: {name: torch.from_numpy(np.array(data[f"{t}|{name}"])) for name in names}
                    for t, names in meta["order"].items()}
    except (OSError, ValueError, KeyError, json.JSONDecodeError, EOFError, zipfile.BadZipFile):
        return None                      # a truncated or foreign file (BadZipFile) is recomputed like a missing one


def cached_scores(config: Mapping, *, seed: int, num_batches: int, method: str, batch_size: int,
                  cache_dir: str | os.PathLike, scorer: Callable[..., Mapping[str, Mapping[str, torch.Tensor]]],
                  force: bool = False, device: Any = "cpu", mode: str = "batch_stats",
                  progress: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], bool]:
    """(scores, computed): the cached scores for this key, else computed (and cached) by `scorer`.

    `force` recomputes and overwrites. `scorer(config, seed=, num_batches=, method=, batch_size=,
    device=, progress=, mode=)` scores a fresh net (the tools pass `methods.scoring.score_fresh_net`).
    """
    key = cache_key(config, seed=seed, num_batches=num_batches, method=method, batch_size=batch_size, mode=mode)
    path = cache_path(cache_dir, key)
    if not force:
        cached = load_scores(path, key)
        if cached is not None:
            return cached, False
    scores = scorer(config, seed=seed, num_batches=num_batches, method=method, batch_size=batch_size,
                    device=device, progress=progress, mode=mode)
    scores = {t: {n: v.detach().to("cpu", torch.float32) for n, v in per.items()} for t, per in scores.items()}
    save_scores(path, scores, key)
    return scores, True


# --------------------------------------------------------------------------------------------------
# table.json and its printed forms


def table_key(layer_method: str, sim_method: str, compat_row_slice: bool = False) -> str:
    lm = f"{layer_method}-rowslice" if compat_row_slice and layer_method in SPARSITY_WEIGHTINGS else layer_method
    return f"{lm}{PAIR_SEP}{sim_method}"


def entry_key(sparsities: Sequence[float], a: str, b: str) -> str:
    return f"{sparsity_label(sparsities)}{PAIR_SEP}{a}{PAIR_SEP}{b}"


def update_table(path: str | os.PathLike, cell: str, entries: Mapping[str, float]) -> dict:
    """Read `path` (created if missing), set `table[cell][entry] = value`, write it back atomically."""
    path = Path(path)
    table = read_json(path, "table file", dict) if path.is_file() and path.stat().st_size else {}
    table.setdefault(cell, {})
    table[cell].update({k: float(v) for k, v in entries.items()})
    write_json(path, table)
    return table


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Standard JSON written atomically; an undefined (NaN) score is written as null."""
    atomic_write_json(path, obj, nonfinite="null")


def _split_entry(entry: str) -> tuple[str, str] | None:
    parts = entry.split(PAIR_SEP)
    if len(parts) != 3 or not parts[0].startswith("s"):
        return None
    return parts[0], f"{parts[1]}/{parts[2]}"


def _group_order(label: str) -> tuple:
    try:
        values = [float(v) for v in label[1:].split(",")]
    except ValueError:
        return (99, [], label)
    return (len(values), values, label)


def _row_order(cell: str) -> tuple:
    parts = cell.split(PAIR_SEP)
    lm, sm = (parts + [""])[:2]
    base = lm.replace("-rowslice", "")
    return (LAYER_METHODS.index(base) if base in LAYER_METHODS else 99, lm != base,
            SIM_METHODS.index(sm) if sm in SIM_METHODS else 99, cell)


def table_layout(table: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(row keys, [(sparsity group, [pair labels])]) in a stable reading order."""
    rows = sorted(table, key=_row_order)
    groups: dict[str, list[str]] = {}
    for cell in rows:
        for entry in table[cell]:
            split = _split_entry(entry)
            if split and split[1] not in groups.setdefault(split[0], []):
                groups[split[0]].append(split[1])
    ordered = sorted(groups, key=_group_order)
    return rows, [(g, groups[g]) for g in ordered]


def _value_of(table: Mapping, cell: str, group: str, pair: str) -> float | None:
    a, b = pair.split("/")
    value = table[cell].get(f"{group}{PAIR_SEP}{a}{PAIR_SEP}{b}")
    return None if value is None else float(value)


def _group_title(group: str) -> str:
    values = group[1:].split(",")
    return f"{values[0]}%" if len(values) == 1 else f"mean {','.join(values)}%"


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text


def format_table(table: Mapping[str, Mapping[str, Any]], fmt: str = "tsv", digits: int = 3) -> str:
    """`tsv`, `markdown` or well-formed `latex` (a tabular, one `&` between cells, `\\\\` per row)."""
    rows, groups = table_layout(table)
    columns = [(g, p) for g, pairs in groups for p in pairs]

    def num(value: float | None, missing: str) -> str:
        return missing if value is None else f"{value:.{digits}f}"

    def split_cell(cell: str) -> tuple[str, str]:
        parts = cell.split(PAIR_SEP)
        return (parts[0], parts[1]) if len(parts) == 2 else (cell, "")

    if fmt == "tsv":
        lines = ["\t".join(["layer_method", "sim_method"] + [f"{g}:{p}" for g, p in columns])]
        for cell in rows:
            lines.append("\t".join(list(split_cell(cell)) + [num(_value_of(table, cell, g, p), "")
                                                            for g, p in columns]))
        return "\n".join(lines)
    if fmt == "markdown":
        header = ["weighting", "measure"] + [f"{_group_title(g)} {p}" for g, p in columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(columns)]
        for cell in rows:
            lines.append("| " + " | ".join(list(split_cell(cell)) + [num(_value_of(table, cell, g, p), "–")
                                                                    for g, p in columns]) + " |")
        return "\n".join(lines)
    if fmt == "latex":
        spec = "ll" + "".join("|" + "c" * len(pairs) for _, pairs in groups)
        lines = [r"\begin{tabular}{" + spec + "}", r"\hline"]
        lines.append(" & ".join(["", ""] + [r"\multicolumn{%d}{c%s}{%s}" % (len(pairs), "" if k == len(groups) - 1 else "|",
                                                                          _latex_escape(_group_title(g)))
                                          for k, (g, pairs) in enumerate(groups)]) + r" \\")
        lines.append(" & ".join(["weighting", "measure"] + [_latex_escape(p) for _, p in columns]) + r" \\")
        lines.append(r"\hline")
        for cell in rows:
            lm, sm = split_cell(cell)
            lines.append(" & ".join([_latex_escape(lm), _latex_escape(sm)]
                                    + [num(_value_of(table, cell, g, p), "--") for g, p in columns]) + r" \\")
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines)
    raise ValueError(f"unknown table format {fmt!r} (expected tsv, latex or markdown)")


def format_matrix(matrix: np.ndarray, tasks: Sequence[str], digits: int = 3) -> str:
    width = max(max(len(t) for t in tasks), digits + 3)
    lines = [" " * width + "  " + "  ".join(t.rjust(width) for t in tasks)]
    for t, row in zip(tasks, matrix):
        lines.append(t.rjust(width) + "  " + "  ".join(
            ("nan" if not np.isfinite(v) else f"{v:.{digits}f}").rjust(width) for v in row))
    return "\n".join(lines)
