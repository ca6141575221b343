"""Targets and losses against values computed independently in NumPy on small hand-made arrays."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.losses import MultiTaskLoss, TaskLoss, build_loss
from engine.targets import TARGET_KEY, resize_nearest, valid_mask


# ----------------------------------------------------------------------------- numpy references
def np_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Legacy nearest: source index floor(i * in / out), on the last two axes."""
    h, w = x.shape[-2:]
    rows = (np.arange(out_h) * h) // out_h
    cols = (np.arange(out_w) * w) // out_w
    return x[..., rows[:, None], cols[None, :]]


def np_log_softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    m = logits.max(axis=axis, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=axis, keepdims=True))


def np_ce(logits: np.ndarray, labels: np.ndarray, ignore: int, weights: np.ndarray | None = None) -> float:
    """Weighted-mean cross-entropy over non-ignored pixels. logits B×C×H×W, labels B×H×W."""
    logp = np_log_softmax(logits.astype(np.float64))
    num = den = 0.0
    for b, i, j in zip(*np.nonzero(labels != ignore)):
        y = labels[b, i, j]
        w = 1.0 if weights is None else float(weights[y])
        num += -w * logp[b, y, i, j]
        den += w
    return num / den


def batch_of(**maps: np.ndarray) -> dict:
    out = {}
    for key, value in maps.items():
        out[key] = torch.from_numpy(value.astype(np.int64) if key == "seg" else value.astype(np.float32))
    return out


# ----------------------------------------------------------------------------- targets
def test_target_keys_follow_conventions():
    assert TARGET_KEY == {"seg": "seg", "sn": "normal", "depth": "depth", "keypoint": "keypoint", "edge": "edge"}


def test_valid_mask_per_task():
    seg = torch.tensor([[[[0, 255], [3, -1]]]])
    assert valid_mask("seg", seg, 255).tolist() == [[[[True, False], [True, True]]]]
    assert valid_mask("seg", seg, -1).tolist() == [[[[True, True], [True, False]]]]
    normal = torch.zeros(1, 3, 1, 3)
    normal[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    normal[0, :, 0, 2] = torch.tensor([0.0, -1.0, 0.0])
    assert valid_mask("sn", normal).shape == (1, 1, 1, 3)
    assert valid_mask("sn", normal).flatten().tolist() == [True, False, True]
    depth = torch.tensor([[[[0.0, 3e-5, 3.1e-5, 2.0]]]])
    assert valid_mask("depth", depth).flatten().tolist() == [False, False, True, True]
    for task in ("keypoint", "edge"):
        dense = torch.tensor([[[[255.0, -1.0, 0.0, 1.0]]]])
        assert valid_mask(task, dense).flatten().tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="unknown task"):
        valid_mask("foo", depth)


@pytest.mark.parametrize("src,dst", [((7, 9), (3, 4)), ((8, 8), (4, 4)), ((3, 5), (7, 11)), ((10, 6), (4, 5))])
def test_resize_nearest_is_legacy_nearest_for_int_and_float(src, dst):
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 300, size=(2, 1, *src))
    out = resize_nearest(torch.from_numpy(labels), dst)
    assert out.dtype == torch.int64 and out.shape == (2, 1, *dst)
    np.testing.assert_array_equal(out.numpy(), np_nearest(labels, *dst))
    values = rng.normal(size=(2, 3, *src)).astype(np.float32)
    out_f = resize_nearest(torch.from_numpy(values), dst)
    np.testing.assert_array_equal(out_f.numpy(), np_nearest(values, *dst))
    # 3-D label maps stay 3-D
    assert resize_nearest(torch.from_numpy(labels[:, 0]), dst).shape == (2, *dst)


# ----------------------------------------------------------------------------- seg
def test_seg_loss_matches_numpy_with_ignore_and_resize():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(2, 1, 8, 6))
    labels[0, 0, :3, :] = 255
    logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    loss = TaskLoss(ignore_index=255)("seg", torch.from_numpy(logits), batch_of(seg=labels))
    expected = np_ce(logits, np_nearest(labels, 4, 3)[:, 0], 255)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the same value as F.cross_entropy's weighted mean on the resized target
    ref = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(np_nearest(labels, 4, 3)[:, 0]), ignore_index=255)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_seg_loss_class_weights_weighted_mean():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=(1, 1, 4, 4))
    labels[0, 0, 0, :2] = 255
    logits = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    weights = np.array([0.5, 2.0, 3.0, 9.0])        # longer than C: the first C are used
    loss = TaskLoss(255, weights)("seg", torch.from_numpy(logits), batch_of(seg=labels))
    assert loss.item() == pytest.approx(np_ce(logits, labels[:, 0], 255, weights), rel=1e-5)


def test_seg_loss_cityscapes_ignore_minus_one():
    labels = np.array([[[[0, -1], [1, -1]]]])
    logits = np.random.default_rng(3).normal(size=(1, 2, 2, 2)).astype(np.float32)
    loss = TaskLoss(ignore_index=-1)("seg", torch.from_numpy(logits), batch_of(seg=labels))
    assert loss.item() == pytest.approx(np_ce(logits, labels[:, 0], -1), rel=1e-5)


def test_seg_ignore_pixels_do_not_affect_loss_or_gradient():
    labels = np.array([[[[0, 255], [1, 255]]]])
    base = np.random.default_rng(4).normal(size=(1, 3, 2, 2)).astype(np.float32)
    changed = base.copy()
    changed[:, :, :, 1] += np.array([5.0, -7.0, 11.0], dtype=np.float32)[:, None]
    fn = TaskLoss(255)
    a = torch.from_numpy(base).requires_grad_()
    la = fn("seg", a, batch_of(seg=labels))
    la.backward()
    lb = fn("seg", torch.from_numpy(changed), batch_of(seg=labels))
    assert la.item() == pytest.approx(lb.item(), abs=1e-7)
    assert torch.all(a.grad[:, :, :, 1] == 0)
    assert torch.any(a.grad[:, :, :, 0] != 0)


# ----------------------------------------------------------------------------- normals / L1
def test_normal_loss_is_one_minus_mean_cosine_over_valid():
    gt = np.zeros((1, 3, 2, 2), np.float32)
    gt[0, :, 0, 0] = [1, 0, 0]
    gt[0, :, 0, 1] = [0, 1, 0]
    gt[0, :, 1, 0] = [0, 0, 1]            # (1, 1) stays (0, 0, 0): invalid
    pred = np.zeros((1, 3, 2, 2), np.float32)
    pred[0, :, 0, 0] = [3, 0, 0]           # 0 deg (unnormalised prediction)
    pred[0, :, 0, 1] = [2, 0, 0]           # 90 deg
    pred[0, :, 1, 0] = [0, 1, 1]           # 45 deg
    pred[0, :, 1, 1] = [-5, 2, 1]          # invalid, must not count
    loss = TaskLoss()("sn", torch.from_numpy(pred), batch_of(normal=gt))
    expected = 1 - (1 + 0 + math.cos(math.pi / 4)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    opposite = TaskLoss()("sn", torch.from_numpy(-gt[:, :, :1, :1] * 2), batch_of(normal=gt[:, :, :1, :1]))
    assert opposite.item() == pytest.approx(2.0, abs=1e-6)


def test_normal_loss_resizes_gt_nearest():
    rng = np.random.default_rng(5)
    gt = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    gt[0, :, 0:2, :] = 0
    pred = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    small = np_nearest(gt, 3, 3)
    valid = np.any(small != 0, axis=1)
    cos = (pred / np.linalg.norm(pred, axis=1, keepdims=True) *
           small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-12)).sum(1)
    loss = TaskLoss()("sn", torch.from_numpy(pred), batch_of(normal=gt))
    assert loss.item() == pytest.approx(1 - cos[valid].mean(), abs=1e-5)


@pytest.mark.parametrize("task,invalid", [("depth", 0.0), ("keypoint", 255.0), ("edge", 255.0)])
def test_l1_losses_over_valid_pixels(task, invalid):
    rng = np.random.default_rng(6)
    gt = rng.uniform(0.1, 1.0, size=(2, 1, 8, 8)).astype(np.float32)
    gt[0, 0, :4, :] = invalid
    gt[1, 0, 0, 0] = invalid
    pred = rng.normal(size=(2, 1, 4, 4)).astype(np.float32)
    small = np_nearest(gt, 4, 4)
    valid = small > 3e-5 if task == "depth" else small != 255
    expected = np.abs(pred - small)[valid].mean()
    loss = TaskLoss()(task, torch.from_numpy(pred), {TARGET_KEY[task]: torch.from_numpy(gt)})
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_nyu_depth_small_values_are_invalid():
    gt = np.array([[[[0.0, 2e-5, 1.5, 2.5]]]], np.float32)
    pred = np.array([[[[9.0, 9.0, 1.0, 3.5]]]], np.float32)
    loss = TaskLoss()("depth", torch.from_numpy(pred), batch_of(depth=gt))
    assert loss.item() == pytest.approx(0.75)


@pytest.mark.parametrize("task,channels,key,fill", [
    ("seg", 4, "seg", 255), ("sn", 3, "normal", 0.0), ("depth", 1, "depth", 0.0),
    ("keypoint", 1, "keypoint", 255.0), ("edge", 1, "edge", 255.0)])
def test_zero_valid_pixels_give_finite_zero_connected_loss(task, channels, key, fill):
    pred = torch.randn(2, channels, 3, 3, requires_grad=True)
    gt_channels = 3 if task == "sn" else 1
    gt = torch.full((2, gt_channels, 6, 6), fill, dtype=torch.int64 if task == "seg" else torch.float32)
    loss = TaskLoss(255, [1.0, 2.0, 3.0, 4.0] if task == "seg" else None)(task, pred, {key: gt})
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_loss_works_under_bf16_prediction():
    pred = torch.randn(1, 1, 2, 2).to(torch.bfloat16)
    gt = torch.ones(1, 1, 2, 2)
    loss = TaskLoss()("depth", pred, {"depth": gt})
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((pred.float() - 1).abs().mean().item())


# ----------------------------------------------------------------------------- multitask
def _multitask_inputs():
    rng = np.random.default_rng(7)
    seg = rng.integers(0, 3, size=(2, 1, 4, 4))
    normal = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    depth = rng.uniform(0.5, 2.0, size=(2, 1, 4, 4)).astype(np.float32)
    preds = {"seg": torch.randn(2, 3, 2, 2, requires_grad=True), "sn": torch.randn(2, 3, 2, 2, requires_grad=True),
             "depth": torch.randn(2, 1, 2, 2, requires_grad=True)}
    return preds, batch_of(seg=seg, normal=normal, depth=depth)


def test_multitask_loss_is_weighted_sum_of_single_terms():
    preds, batch = _multitask_inputs()
    loss = MultiTaskLoss(["seg", "sn", "depth"], [1.0, 20.0, 3.0])
    total, parts = loss(preds, batch)
    single = TaskLoss()
    for task in ("seg", "sn", "depth"):
        assert parts[task].item() == pytest.approx(single(task, preds[task], batch).item(), rel=1e-6)
        assert not parts[task].requires_grad
        assert loss.single(task, preds, batch).item() == pytest.approx(parts[task].item(), rel=1e-6)
    expected = parts["seg"] + 20 * parts["sn"] + 3 * parts["depth"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert all(p.grad is not None for p in preds.values())
    assert list(parts) == ["seg", "sn", "depth"]


def test_build_loss_uses_config_weights_and_dataset_attributes():
    config = {"dataset": "taskonomy", "tasks": ["seg", "depth"], "loss_weights": [1, 2]}
    dataset = SimpleNamespace(ignore_index=255, class_weights=torch.tensor([1.0, 4.0]))
    loss = build_loss(config, dataset)
    assert loss.tasks == ["seg", "depth"] and loss.weights == {"seg": 1.0, "depth": 2.0}
    assert loss.ignore_index == 255
    torch.testing.assert_close(loss.task_loss.class_weights, torch.tensor([1.0, 4.0]))
    assert build_loss({"dataset": "cityscapes", "tasks": ["seg"], "loss_weights": [1]}).ignore_index == -1


def test_unknown_task_or_missing_key_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskLoss(["seg", "bogus"], [1, 1])
    with pytest.raises(ValueError, match="no 'normal' entry"):
        TaskLoss()("sn", torch.randn(1, 3, 2, 2), {"seg": torch.zeros(1, 1, 2, 2, dtype=torch.int64)})
