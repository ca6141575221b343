"""Meta-Sparse's task similarity (golden similarity.pt) from `prune_utils.similarity` on the same masks and
saliencies: every measure × layer weighting × task pair, per layer, per keep ratio and final.

The fixture's weightings carry the original's row-slice bug, so they are matched with
`compat_row_slice=True`; our default (whole-layer counts) is pinned against an independent computation.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from tests.golden import load_golden


def _backbone(fx) -> list[int]:
    return [fx["pool_layer_names"].index(n) for n in fx["backbone_layer_names"]]


def _grid(fx):
    """One LayerStats per keep ratio, from the fixture's per-task masks and saliencies (backbone layers)."""
    from prune_utils.similarity import layer_stats
    idx, names = _backbone(fx), list(fx["backbone_layer_names"])
    tasks = list(fx["tasks"])
    scores = {t: {n: fx["scores"][t][i] for n, i in zip(names, idx)} for t in tasks}
    grid = []
    for keep in fx["keep_ratios"]:
        masks = {t: {n: fx["masks"][t][str(keep)][i] for n, i in zip(names, idx)} for t in tasks}
        grid.append(layer_stats(masks, scores, names, keep))
    return grid


def _pairs(fx):
    tasks = list(fx["tasks"])
    return [(tasks.index(a), tasks.index(b), a, b, key) for (a, b), key in zip(fx["pairs"], fx["pair_keys"])]


def test_per_layer_similarities_match_the_original():
    fx = load_golden("similarity.pt")
    for r, stats in enumerate(_grid(fx)):
        for p, (_, _, a, b, key) in enumerate(_pairs(fx)):
            for sim in fx["similarity_methods"]:
                np.testing.assert_allclose(stats.pair(a, b)[sim], fx["per_layer_sim"][sim][r, p].numpy(), rtol=1e-5,
                                           atol=1e-7, err_msg=f"{sim} {key} ratio {r}")


def test_layer_weights_per_ratio_and_final_scores_match_the_original_with_row_slice_compat():
    from prune_utils.similarity import similarity_matrix

    fx = load_golden("similarity.pt")
    grid = _grid(fx)
    for lm in fx["layer_methods"]:
        for r, stats in enumerate(grid):
            for p, (_, _, a, b, key) in enumerate(_pairs(fx)):
                np.testing.assert_allclose(stats.weights(a, b, lm, compat_row_slice=True),
                                           fx["layer_weight"][lm][r, p].numpy(), rtol=1e-6, atol=1e-9,
                                           err_msg=f"{lm} {key} ratio {r}")
                for sim in fx["similarity_methods"]:
                    assert stats.score(a, b, sim, lm, compat_row_slice=True) == pytest.approx(
                        float(fx["per_ratio"][sim][lm][r, p]), rel=1e-5), (sim, lm, key, r)
        for sim in fx["similarity_methods"]:
            matrix = similarity_matrix([grid], sim, lm, compat_row_slice=True)
            for i, j, _, _, key in _pairs(fx):
                assert matrix[i, j] == pytest.approx(fx["pairwise"][sim][lm][key], rel=1e-5), (sim, lm, key)


def test_default_weightings_use_the_whole_layer_and_differ_from_the_original_bug():
    """Without --compat_row_slice the sparsity weightings read the whole layer: kept count n and sparsity
    s = 1 − n/size (epi_like = 1 − |n_a − n_b| / (n_a + n_b)). Computed here straight from the masks."""
    fx = load_golden("similarity.pt")
    idx = _backbone(fx)
    differs = 0
    for r, (keep, stats) in enumerate(zip(fx["keep_ratios"], _grid(fx))):
        for p, (_, _, a, b, _) in enumerate(_pairs(fx)):
            na = np.array([float(fx["masks"][a][str(keep)][i].sum()) for i in idx])
            nb = np.array([float(fx["masks"][b][str(keep)][i].sum()) for i in idx])
            size = np.array([float(fx["masks"][a][str(keep)][i].numel()) for i in idx])
            sa, sb = 1 - na / size, 1 - nb / size
            expected = {"av_sparsity": sa + sb, "min_sparsity": np.minimum(sa, sb),
                        "epi_like": 1 - np.abs(na - nb) / (na + nb)}
            for lm, w in expected.items():
                ours = stats.weights(a, b, lm)
                np.testing.assert_allclose(ours, w, rtol=1e-12)
                differs += int(not np.allclose(ours, fx["layer_weight"][lm][r, p].numpy(), rtol=1e-6))
    assert differs > 0


def test_original_subnetworks_are_top_k_with_ties_and_ours_keep_exactly_k():
    """The fixture's masks follow the original's rule (saliency ≥ the k-th largest, k = int(pool·ρ): ties keep
    more); ours keep exactly k (ties broken by position), k = ⌊ρ·pool⌋ with ρ read as its decimal."""
    from prune_utils.mask_builder import task_masks

    fx = load_golden("similarity.pt")
    tasks, pool_names = list(fx["tasks"]), list(fx["pool_layer_names"])
    ours_names = [f"{n}.weight" if n.startswith("backbone.") else None for n in pool_names]
    for t in tasks:
        for i, n in enumerate(pool_names):
            if ours_names[i] is None:                      # head `task{t}_fc1_c<j>.conv<c>` -> heads.<t>.branches...
                branch, conv = n.split("_fc1_c")[1].split(".")
                ours_names[i] = f"heads.{{t}}.branches.{branch}.{conv}.weight"
    scores = {t: {name.format(t=t): fx["scores"][t][i] for i, name in enumerate(ours_names)} for t in tasks}
    for keep in fx["keep_ratios"]:
        ours = task_masks(scores, keep)
        for t in tasks:
            flat = torch.cat([s.flatten() for s in fx["scores"][t]])
            sal = flat / flat.sum()
            k_original = int(flat.numel() * keep)
            tau = torch.sort(sal, descending=True).values[k_original - 1]
            golden = torch.cat([m.flatten() for m in fx["masks"][t][str(keep)]])
            assert torch.equal(golden, sal >= tau)
            mine = torch.cat([ours[t][name.format(t=t)].flatten() for name in ours_names])
            k_ours = max(1, int(Fraction(str(keep)) * flat.numel()))
            assert int(mine.sum()) == k_ours
            if k_ours == k_original:
                assert not (mine & ~golden).any()                  # ours ⊆ the original's
                assert bool((sal[golden & ~mine] == tau).all())    # the rest are ties at the threshold
