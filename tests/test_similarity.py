"""Meta-Sparse similarity: hand-computed measures and weightings, matrix invariants, cache, table output."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from engine.config import load_config
from prune_utils import similarity as S


def bools(*bits, shape=None):
    t = torch.tensor(bits, dtype=torch.bool)
    return t.reshape(shape) if shape else t


# ---------------------------------------------------------------------------------------------- measures


def test_hand_computed_layer_measures():
    a, b = bools(1, 1, 0, 0), bools(1, 0, 0, 1)
    sal_a, sal_b = torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([2.0, 4.0, 0.0, 0.0])
    assert S.layer_similarity("iou", a, b) == pytest.approx(1 / 3)
    assert S.layer_similarity("epi", a, b) == pytest.approx(1.0)                 # same counts, other places
    assert S.layer_similarity("epi", bools(1, 1, 1, 0), bools(1, 0, 0, 0)) == pytest.approx(1 - 2 / 4)
    assert S.layer_similarity("sals", a, b, sal_a, sal_b) == pytest.approx(1.0)  # parallel saliencies
    # masked: (1, 2, 0, 0) vs (2, 0, 0, 0) -> 2 / (sqrt(5) * 2)
    assert S.layer_similarity("masked_sals", a, b, sal_a, sal_b) == pytest.approx(1 / math.sqrt(5))
    # zero-vector conventions
    z = torch.zeros(4)
    assert S.cosine(z, z) == 1.0 and S.cosine(z, sal_a) == 0.0
    assert S.layer_similarity("epi", bools(0, 0), bools(0, 0)) == 1.0
    assert S.layer_similarity("iou", bools(0, 0), bools(0, 0)) == 1.0
    with pytest.raises(ValueError):
        S.layer_similarity("nope", a, b)
    with pytest.raises(ValueError):
        S.layer_similarity("sals", a, b)


# Three layers of 4 weights each (shape 4×1 so the original's row slice exists):
#   layer 0: a = 1100, b = 1000   iou 1/2, sparsity a 0.50, b 0.75, counts 2 / 1
#   layer 1: a = 1111, b = 1110   iou 3/4, sparsity a 0.00, b 0.25, counts 4 / 3
#   layer 2: a = 1000, b = 0100   iou 0,   sparsity a 0.75, b 0.75, counts 1 / 1
LAYERS = ["backbone.conv1.weight", "backbone.blocks.0.0.conv1.weight", "backbone.blocks.0.0.conv2.weight"]
MASK_A = [bools(1, 1, 0, 0, shape=(4, 1)), bools(1, 1, 1, 1, shape=(4, 1)), bools(1, 0, 0, 0, shape=(4, 1))]
MASK_B = [bools(1, 0, 0, 0, shape=(4, 1)), bools(1, 1, 1, 0, shape=(4, 1)), bools(0, 1, 0, 0, shape=(4, 1))]


def _stats():
    masks = {"a": dict(zip(LAYERS, MASK_A)), "b": dict(zip(LAYERS, MASK_B))}
    scores = {t: {n: m.float() + 0.5 for n, m in masks[t].items()} for t in masks}
    return S.layer_stats(masks, scores, LAYERS, keep_ratio=0.5)


@pytest.mark.parametrize("layer_method, expected", [
    ("equal", (0.5 + 0.75 + 0) / 3),
    ("linear", (0 * 0.5 + 1 * 0.75 + 2 * 0) / 3),
    ("linear_plus_one", (1 * 0.5 + 2 * 0.75 + 3 * 0) / 6),
    ("five_zeros", float("nan")),                                   # all three layers have l < 5: no weight
    ("av_sparsity", (1.25 * 0.5 + 0.25 * 0.75 + 1.5 * 0) / 3.0),
    ("min_sparsity", (0.5 * 0.5 + 0.0 * 0.75 + 0.75 * 0) / 1.25),
    ("epi_like", (2 / 3 * 0.5 + 6 / 7 * 0.75 + 1.0 * 0) / (2 / 3 + 6 / 7 + 1)),   # EPI of counts 2/1, 4/3, 1/1
])
def test_each_layer_weighting_on_three_layers(layer_method, expected):
    value = _stats().score("a", "b", "iou", layer_method)
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected)


def test_layer_weights_values_and_five_zeros():
    ka, kb, size = [2, 4, 1], [1, 3, 1], [4, 4, 4]          # sparsities a 0.5, 0, 0.75; b 0.75, 0.25, 0.75
    np.testing.assert_allclose(S.layer_weights("linear", ka, kb, size), [0, 1, 2])
    np.testing.assert_allclose(S.layer_weights("av_sparsity", ka, kb, size), [1.25, 0.25, 1.5])
    np.testing.assert_allclose(S.layer_weights("min_sparsity", ka, kb, size), [0.5, 0.0, 0.75])
    np.testing.assert_allclose(S.layer_weights("epi_like", ka, kb, size), [2 / 3, 6 / 7, 1.0])
    # Meta-Sparse's epi_like is the EPI formula on kept counts: a row of 100 with 10 vs 20 kept -> 1 - 10/30
    assert S.layer_weights("epi_like", [10], [20], [100])[0] == pytest.approx(2 / 3)
    # (on the sparsities 0.9 / 0.8 it would be 1 - 0.1/1.7 = 0.941: not the original)
    zeros = [0] * 7
    np.testing.assert_allclose(S.layer_weights("five_zeros", zeros, zeros, [1] * 7), [0, 0, 0, 0, 0, 1, 1])
    assert S.weighted_score([0.2, 0.4, 0.1, 0.1, 0.1, 0.6, 1.0], S.layer_weights("five_zeros", zeros, zeros, [1] * 7)) \
        == pytest.approx(0.8)
    with pytest.raises(ValueError):
        S.layer_weights("cubic", ka, kb, size)


def test_epi_and_sals_layer_values():
    stats = _stats()
    np.testing.assert_allclose(stats.pair("a", "b")["epi"], [1 - 1 / 3, 1 - 1 / 7, 1.0])
    np.testing.assert_allclose(stats.sparsity["a"], [0.5, 0.0, 0.75])
    np.testing.assert_allclose(stats.sparsity["b"], [0.75, 0.25, 0.75])


def test_row_slice_compat_differs_and_is_explicit():
    stats = _stats()
    # the original's bug reads row l of layer l: rows a = (1, 1, 0), b = (1, 1, 0) -> sparsities 0, 0, 1
    np.testing.assert_allclose(stats.row_sparsity["a"], [0.0, 0.0, 1.0])
    assert stats.score("a", "b", "iou", "av_sparsity", compat_row_slice=True) == pytest.approx(0.0)
    assert stats.score("a", "b", "iou", "av_sparsity") == pytest.approx(0.8125 / 3)
    assert S.table_key("av_sparsity", "iou", True) == "av_sparsity-rowslice_X_iou"
    assert S.table_key("equal", "iou", True) == "equal_X_iou"


def _random_grid(tasks=("seg", "sn", "depth"), seeds=2, ratios=(0.3, 0.6)):
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (8, 8, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3), (16, 8, 1, 1)]
    names = [f"backbone.blocks.0.{i}.conv1.weight" for i in range(len(shapes) - 1)] + ["backbone.ds.1.0.weight"]
    grid = []
    for _ in range(seeds):
        scores = {t: {n: torch.rand(s, generator=gen) for n, s in zip(names, shapes)} for t in tasks}
        per_ratio = []
        for keep in ratios:
            masks = {}
            for t in tasks:
                flat = torch.cat([v.flatten() for v in scores[t].values()])
                tau = flat.topk(int(keep * flat.numel())).values[-1]
                masks[t] = {n: v >= tau for n, v in scores[t].items()}
            per_ratio.append(S.layer_stats(masks, scores, names, keep))
        grid.append(per_ratio)
    return grid


@pytest.mark.parametrize("sim_method", S.SIM_METHODS)
@pytest.mark.parametrize("layer_method", S.LAYER_METHODS)
def test_matrices_symmetric_with_unit_diagonal(sim_method, layer_method):
    grid = _random_grid()
    m = S.similarity_matrix(grid, sim_method, layer_method)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    off = m[~np.eye(3, dtype=bool)]
    assert np.all((off >= 0) & (off <= 1 + 1e-12))
    assert np.all(off < 1.0) or sim_method == "epi"


def test_matrix_averages_ratios_then_seeds():
    grid = _random_grid(seeds=2, ratios=(0.3, 0.6))
    expected = np.mean([np.mean([st.score("seg", "sn", "iou", "equal") for st in per_ratio]) for per_ratio in grid])
    assert S.similarity_matrix(grid, "iou", "equal")[0, 1] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- keep ratios


def test_keep_ratios_and_labels():
    config = load_config("nyuv2")
    assert [S.keep_ratio_for(r, config, "paper") for r in (30, 50, 70, 90)] == [0.675, 0.46, 0.257, 0.08]
    assert S.keep_ratio_for(80, config, "paper") == pytest.approx(0.2)        # not in the table: (100-r)/100
    assert S.keep_ratio_for(90, config, "exact") == pytest.approx(0.1)
    assert S.parse_sparsities("30, 50,70,90") == [30, 50, 70, 90]
    assert S.sparsity_label([30.0, 50.0, 92.5]) == "s30,50,92.5"
    assert S.entry_key([50], "seg", "sn") == "s50_X_seg_X_sn"
    for bad in ("0", "100", "x", ""):
        with pytest.raises(ValueError):
            S.parse_sparsities(bad)


# ---------------------------------------------------------------------------------------------- cache


class CountingScorer:
    def __init__(self):
        self.calls = []

    def __call__(self, config, *, seed, num_batches, method, batch_size, device, progress, mode="batch_stats"):
        self.calls.append((seed, num_batches, tuple(config["tasks"])))
        gen = torch.Generator().manual_seed(seed * 1000 + num_batches)
        return {t: {"backbone.conv1.weight": torch.rand(4, 3, 3, 3, generator=gen),
                    f"heads.{t}.branches.0.conv1.weight": torch.rand(5, 4, 3, 3, generator=gen)}
                for t in config["tasks"]}


def test_cache_reused_keyed_and_forced(tmp_path):
    config = load_config("synthetic")
    scorer = CountingScorer()
    kw = dict(seed=0, num_batches=2, method="snip", batch_size=4, cache_dir=tmp_path, scorer=scorer)
    first, computed = S.cached_scores(config, **kw)
    assert computed and len(scorer.calls) == 1
    path = S.cache_path(tmp_path, S.cache_key(config, seed=0, num_batches=2, method="snip", batch_size=4))
    assert path.is_file() and path.suffix == ".npz"
    mtime = path.stat().st_mtime_ns
    again, computed = S.cached_scores(config, **kw)
    assert not computed and len(scorer.calls) == 1 and path.stat().st_mtime_ns == mtime
    for t in first:
        assert list(again[t]) == list(first[t])
        for n in first[t]:
            assert torch.equal(again[t][n], first[t][n])
    # the npz holds no pickled object: it loads with allow_pickle=False
    with np.load(path, allow_pickle=False) as data:
        assert "__meta__" in data.files
    # the original's stale-cache bug: a different num_batches / task set / seed / method is a different key
    S.cached_scores(config, **{**kw, "num_batches": 3})
    S.cached_scores(config, **{**kw, "seed": 1})
    S.cached_scores(config, **{**kw, "method": "other"})
    S.cached_scores(config, **kw, mode="train")
    two = {**config, "tasks": ["seg", "sn"], "num_classes": [8, 3], "loss_weights": [1.0, 5.0]}
    S.cached_scores(two, **kw)
    assert len(scorer.calls) == 6
    # --force_run recomputes and rewrites
    os.utime(path, ns=(0, 0))
    _, computed = S.cached_scores(config, **kw, force=True)
    assert computed and len(scorer.calls) == 7 and path.stat().st_mtime_ns > 0


def test_cache_with_wrong_meta_is_ignored(tmp_path):
    config = load_config("synthetic")
    scorer = CountingScorer()
    key = S.cache_key(config, seed=0, num_batches=2, method="snip", batch_size=4)
    path = S.cache_path(tmp_path, key)
    S.save_scores(path, scorer(config, seed=9, num_batches=9, method="x", batch_size=1, device="cpu", progress=False),
                  {**key, "num_batches": 99})
    _, computed = S.cached_scores(config, seed=0, num_batches=2, method="snip", batch_size=4, cache_dir=tmp_path,
                                  scorer=scorer)
    assert computed
    path.write_bytes(b"garbage")
    assert S.load_scores(path) is None


# ---------------------------------------------------------------------------------------------- table


def test_table_created_updated_and_formatted(tmp_path):
    path = tmp_path / "sub" / "table.json"
    S.update_table(path, "equal_X_iou", {"s50_X_seg_X_sn": 0.9, "s50_X_seg_X_depth": 0.8, "s50_X_sn_X_depth": 0.7})
    S.update_table(path, "equal_X_iou", {"s30,50,70,90_X_seg_X_sn": 0.75, "s30,50,70,90_X_seg_X_depth": float("nan")})
    S.update_table(path, "linear_X_masked_sals", {"s50_X_seg_X_sn": 0.5})
    table = json.loads(path.read_text())
    assert table["equal_X_iou"]["s50_X_seg_X_sn"] == 0.9
    assert table["equal_X_iou"]["s30,50,70,90_X_seg_X_depth"] is None       # NaN stored as null
    assert set(table) == {"equal_X_iou", "linear_X_masked_sals"}

    tsv = S.format_table(table, "tsv").splitlines()
    assert tsv[0].split("\t")[:3] == ["layer_method", "sim_method", "s50:seg/sn"]
    assert all(len(line.split("\t")) == len(tsv[0].split("\t")) for line in tsv)

    md = S.format_table(table, "markdown").splitlines()
    assert len({line.count("|") for line in md}) == 1

    latex = S.format_table(table, "latex")
    lines = latex.splitlines()
    assert lines[0].startswith(r"\begin{tabular}{ll|ccc|cc}") and lines[-1] == r"\end{tabular}"
    rows = [l for l in lines if l.endswith(r"\\")]
    assert len(rows) == 2 + 2                      # group header, column header, two result rows
    for row in rows[1:]:
        assert row.count("&") == 2 + 5 - 1
    assert "& &" not in latex.replace("& & \\multicolumn", "")   # no doubled separators in the body
    assert r"masked\_sals" in latex and "--" in latex and "0.900" in latex
    assert latex.count("{") == latex.count("}")
    with pytest.raises(ValueError):
        S.format_table(table, "html")


def test_bad_table_file(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        S.update_table(path, "equal_X_iou", {"s50_X_a_X_b": 0.1})


def test_heatmap_png(tmp_path):
    from prune_utils.plots import similarity_heatmap
    m = S.similarity_matrix(_random_grid(seeds=1, ratios=(0.5,)), "iou", "equal")
    out = tmp_path / "h.png"
    similarity_heatmap(m, ["seg", "sn", "depth"], out, title="t")
    assert out.stat().st_size > 1000


def test_vectorised_layer_values_match_pairwise_reference():
    gen = torch.Generator().manual_seed(3)
    masks = [torch.rand(6, 4, 3, 3, generator=gen) > p for p in (0.3, 0.6, 0.9)]
    masks.append(torch.zeros(6, 4, 3, 3, dtype=torch.bool))               # a task keeping nothing here
    sals = [torch.rand(6, 4, 3, 3, generator=gen) for _ in masks]
    sals[2] = torch.zeros(6, 4, 3, 3)                                       # an all-zero saliency
    values = S.layer_values(masks, sals)
    for method in S.SIM_METHODS:
        for i in range(len(masks)):
            for j in range(len(masks)):
                assert float(values[method][i, j]) == pytest.approx(
                    S.layer_similarity(method, masks[i], masks[j], sals[i], sals[j]), abs=1e-12), (method, i, j)
