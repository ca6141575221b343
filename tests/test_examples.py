"""The examples of docs/API.md, run as documented: masks at the requested sparsity, and after every training
step the pruned weights and their optimizer state are zero (dynamic: every layer keeps its count)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from examples import dynamic_sparse, mlp_towers, unet_static
from prune_utils import TaskStructure

ROOT = Path(__file__).resolve().parents[1]
TOL = 5e-4                           # the exact-sparsity window: 0.05 percentage points


class StepChecks:
    """Called after every optimizer step: pruned weights and their optimizer state are zero."""

    def __init__(self) -> None:
        self.steps = 0
        self.counts: dict[str, int] | None = None

    def __call__(self, step, model, optimizer, masks) -> None:
        params = dict(model.named_parameters())
        assert set(masks) <= set(params)
        for name, mask in masks.items():
            weight = params[name]
            assert not bool(weight[~mask].any()), (step, name)
            for value in optimizer.state.get(weight, {}).values():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    assert not bool(value[~mask].any()), (step, name)
        counts = {n: int(m.sum()) for n, m in masks.items()}
        self.counts = self.counts or counts
        assert counts == self.counts, step          # static: same masks; dynamic: same count per layer
        self.steps += 1


def test_unet_static_example():
    checks = StepChecks()
    out = unet_static.run(callback=checks, verbose=False)
    assert checks.steps == 60 and abs(out["sparsity"] - 0.9) <= TOL
    assert out["losses"][-1] < out["losses"][0]
    # the explicit ownership of the example is what gradient flow infers
    inferred = TaskStructure.from_gradient_flow(out["model"], out["spec"], out["probe_batch"])
    assert inferred.owners == out["structure"].owners and inferred.shared == out["structure"].shared


def test_mlp_towers_example():
    checks = StepChecks()
    out = mlp_towers.run(callback=checks, verbose=False)
    assert checks.steps == 300 and abs(out["sparsity"] - 0.8) <= TOL
    assert out["structure"].shared == ("bottom.0.weight", "bottom.2.weight")
    assert out["finetuned"]["segment_acc"] > out["pruned"]["segment_acc"]
    assert out["finetuned"]["churn_acc"] > 0.85


def test_dynamic_sparse_example():
    checks = StepChecks()
    out = dynamic_sparse.run(callback=checks, verbose=False)
    assert checks.steps == 80 and abs(out["sparsity"] - 0.8) <= TOL
    assert checks.counts == out["initial_counts"]
    assert [r["iteration"] for r in out["records"]] == [0, 10, 20, 30, 40, 50, 60] and out["records"][-1]["final"]
    assert out["moved"] > 0 and out["sparse"].controller.frozen


def test_examples_run_from_the_repository_root_as_documented():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "examples.mlp_towers", "--steps", "20", "--sparsity", "0.7"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sparsity 70.0" in done.stdout and "overall" in done.stdout
