"""The original's losses (golden losses_*.pt) from our loss code.

Test-mode batches are read by our loaders from the fixture's targets written back to disk; train-mode
batches (the original's random crops, with their padding) come in through
`dataloaders.original.batch_from_original`. Per-task unweighted terms (the DiSparse single-task
criterion), the λ-weighted total (its training criterion) and Meta-Sparse's NYUv2 depth term must match
to 1e-5 relative.
"""
from __future__ import annotations

import pytest

from tests.golden import golden_batch, load_golden, predictions

DATASETS = ("nyuv2", "cityscapes", "taskonomy")


def _check(loss_fn, preds, batch, fx, prefix: str, tasks) -> None:
    total, terms = loss_fn(preds, batch)
    for task in tasks:
        key = f"{prefix}loss_{task}"
        assert float(terms[task]) == pytest.approx(float(fx[key]), rel=1e-5), (key, float(terms[task]), fx[key])
    assert float(total) == pytest.approx(float(fx[f"{prefix}total_loss"]), rel=1e-5)


def _loss(config, data):
    from engine.losses import build_loss
    from fileio.normals import original_normals_space
    config = dict(config, loss={"normals_space": original_normals_space(config["dataset"], config["tasks"])})   # the original's loss space
    return build_loss(config, data)


@pytest.mark.parametrize("dataset", DATASETS)
def test_test_mode_batch_losses_match_the_original(dataset, tmp_path):
    fx, _, config, batch, data = golden_batch(f"losses_{dataset}.pt", tmp_path)
    _check(_loss(config, data), predictions(fx), batch, fx, "", fx["tasks"])


def _train_batch(fx, tasks) -> dict:
    from dataloaders.original import batch_from_original
    keys = {"seg": "seg", "sn": "normal", "depth": "depth", "keypoint": "keypoint", "edge": "edge"}
    raw = {keys[t]: fx[f"train_target_{keys[t]}"] for t in tasks}
    if "train_target_depth_mask" in fx:
        raw["depth_mask"] = fx["train_target_depth_mask"]
        raw.setdefault("depth", fx["train_target_depth"])
    return batch_from_original(fx["dataset"], raw)


@pytest.mark.parametrize("dataset", DATASETS)
def test_train_mode_batch_losses_match_the_original(dataset, tmp_path):
    """The train crop's padding (seg 255 / −1, normals 255, depth 0, Taskonomy 255 everywhere) is ignored
    exactly as the original ignores it."""
    fx, _, config, _, data = golden_batch(f"losses_{dataset}.pt", tmp_path)   # data: ignore index, class weights
    _check(_loss(config, data), predictions(fx, "train_"), _train_batch(fx, fx["tasks"]), fx, "train_", fx["tasks"])


@pytest.mark.parametrize("prefix", ["", "train_"])
def test_metasparse_nyuv2_depth_loss_and_three_task_total(prefix, tmp_path):
    """DiSparse has no NYUv2 depth loss (the fixture records why); Meta-Sparse's (depth > 3e-5) is ours."""
    fx = load_golden("losses_nyuv2.pt")
    assert "None" in fx["loss_depth_status"]
    tasks = [*fx["tasks"], "depth"]
    lambdas = [float(x) for x in fx["metasparse_lambdas_3task"]]
    _, _, config, batch, data = golden_batch("losses_nyuv2.pt", tmp_path, tasks=tasks, lambdas=lambdas)
    if prefix:
        batch = _train_batch(fx, tasks)
    preds = {t: fx[f"{prefix}pred_{t}"] for t in tasks}
    total, terms = _loss(config, data)(preds, batch)
    assert float(terms["depth"]) == pytest.approx(float(fx[f"{prefix}metasparse_loss_depth"]), rel=1e-5)
    assert float(total) == pytest.approx(float(fx[f"{prefix}metasparse_total_loss_3task"]), rel=1e-5)


def test_nyuv2_normal_loss_needs_the_encoded_space(tmp_path):
    """loss.normals_space switches between our decoded loss and the original's: only `encoded` matches."""
    from engine.losses import TaskLoss

    fx, _, _, batch, _ = golden_batch("losses_nyuv2.pt", tmp_path)
    encoded = float(TaskLoss(normals_space="encoded")("sn", fx["pred_sn"], batch))
    decoded = float(TaskLoss(normals_space="decoded")("sn", fx["pred_sn"], batch))
    assert encoded == pytest.approx(float(fx["loss_sn"]), rel=1e-5)
    assert abs(decoded - float(fx["loss_sn"])) > 1e-3
