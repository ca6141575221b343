"""The original's ERK allocation (golden erk.pt, googleAI_ERK on the full NYUv2 SceneNet) from ours."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from tests.golden import load_golden

TASK_ORDER = ("seg", "sn", "depth", "keypoint", "edge")


def _our_names_and_tasks(fx) -> tuple[list[str], dict[str, int]]:
    """The fixture's layers under our names (original `task<k>` heads -> the k-th task), and our tasks with
    their output channels read off the heads' last convs."""
    from fileio.original import import_original_state_dict
    names = list(fx["layer_names"])
    heads = sorted({int(m.group(1)) for n in names if (m := re.match(r"task(\d+)_", n))})
    tasks = list(TASK_ORDER[:len(heads)])
    out_channels = {tasks[k - 1]: int(fx["layer_shapes"][names.index(f"task{k}_fc1_c0.conv3")][0]) for k in heads}
    fake = {f"{n}.weight": torch.empty(0) for n in names}
    ours, _ = import_original_state_dict(fake, tasks)
    return list(ours), out_channels


def test_fixture_layers_are_our_prunable_layers_in_order():
    from models import MultiTaskNet
    from prune_utils.erk import shapes_of

    fx = load_golden("erk.pt")
    names, tasks = _our_names_and_tasks(fx)
    with torch.device("meta"):
        shapes = shapes_of(MultiTaskNet(tasks))
    assert list(shapes) == names
    assert [list(s) for s in shapes.values()] == fx["layer_shapes"].tolist()
    assert [math.prod(s) for s in shapes.values()] == fx["layer_numel"].tolist()


def test_erk_densities_dense_layers_and_overall_match_the_original():
    from prune_utils.erk import erk_densities

    fx = load_golden("erk.pt")
    names, _ = _our_names_and_tasks(fx)
    shapes = {n: tuple(int(d) for d in s) for n, s in zip(names, fx["layer_shapes"])}
    numel = fx["layer_numel"].double().numpy()
    for i, target in enumerate(fx["target_densities"].tolist()):
        ours = erk_densities(shapes, target)
        density = np.array([ours[n] for n in names])
        np.testing.assert_allclose(density, fx["density"][i].numpy(), rtol=1e-9, atol=0)
        assert (density == 1.0).tolist() == fx["is_dense"][i].tolist()
        overall = float((density * numel).sum() / numel.sum())
        assert overall == pytest.approx(float(fx["overall_density"][i]), rel=1e-12)
        assert overall == pytest.approx(target, rel=1e-12)
