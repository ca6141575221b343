"""Metrics (both definitions) and Δm against values computed independently in NumPy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from engine.delta_m import DELTA_M_METRICS, METRIC_DIRECTIONS, delta_m
from engine.metrics import METRIC_KEYS, MetricAccumulator, build_metrics, format_table


# ----------------------------------------------------------------------------- numpy references
def np_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """align_corners=False bilinear resize of the last two axes (half-pixel centres, edge clamp)."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    r0, r1, lr = axis(x.shape[-2], out_h)
    c0, c1, lc = axis(x.shape[-1], out_w)
    top = x[..., r0, :][..., c0] * (1 - lc) + x[..., r0, :][..., c1] * lc
    bot = x[..., r1, :][..., c0] * (1 - lc) + x[..., r1, :][..., c1] * lc
    return top * (1 - lr)[:, None] + bot * lr[:, None]


def np_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    h, w = x.shape[-2:]
    return x[..., ((np.arange(out_h) * h) // out_h)[:, None], ((np.arange(out_w) * w) // out_w)[None, :]]


def np_angles(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel angle in degrees between B×3×H×W fields, over pixels where gt is not all zero."""
    valid = np.any(gt != 0, axis=1)
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    g = gt / np.linalg.norm(np.where(valid[:, None], gt, 1.0), axis=1, keepdims=True)
    cos = np.clip((p * g).sum(axis=1), -1, 1)
    return np.degrees(np.arccos(cos))[valid]


def onehot_logits(classes: np.ndarray, num_classes: int) -> torch.Tensor:
    """B×1×H×W (or B×H×W) class ids -> logits whose argmax is that class."""
    classes = classes.reshape(classes.shape[0], *classes.shape[-2:])
    logits = np.eye(num_classes, dtype=np.float32)[classes].transpose(0, 3, 1, 2) * 5.0
    return torch.from_numpy(logits)


def seg_batch(labels) -> dict:
    return {"seg": torch.tensor(labels, dtype=torch.int64)}


def tensor(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float32)


# ----------------------------------------------------------------------------- segmentation
def test_keys_match_contract_8():
    acc = MetricAccumulator(["seg", "sn", "depth", "keypoint", "edge"], [3, 3, 1, 1, 1])
    rng = np.random.default_rng(0)
    preds = {"seg": torch.randn(1, 3, 4, 4), "sn": torch.randn(1, 3, 4, 4), "depth": torch.rand(1, 1, 4, 4),
             "keypoint": torch.rand(1, 1, 4, 4), "edge": torch.rand(1, 1, 4, 4)}
    batch = {"seg": torch.from_numpy(rng.integers(0, 3, (1, 1, 4, 4))), "normal": torch.randn(1, 3, 4, 4),
             "depth": torch.rand(1, 1, 4, 4) + 0.5, "keypoint": torch.rand(1, 1, 4, 4),
             "edge": torch.rand(1, 1, 4, 4)}
    acc.update(preds, batch)
    out = acc.compute()
    assert {t: list(v) for t, v in out.items()} == {
        "seg": ["mIoU", "Pixel Acc", "err"],
        "sn": ["Angle Mean", "Angle Median", "Angle 11.25", "Angle 22.5", "Angle 30", "Angle 45"],
        "depth": ["abs_err", "rel_err", "sigma_1.25", "sigma_1.25^2", "sigma_1.25^3"],
        "keypoint": ["err"], "edge": ["err"]}
    assert {t: list(v) for t, v in METRIC_KEYS.items()} == {t: list(v) for t, v in out.items()}
    assert all(isinstance(v, float) for task in out.values() for v in task.values())


def test_miou_union_rule_vs_tp_rule_two_classes():
    # gt 0 0 1 1, pred 0 0 0 0: IoU_0 = 2/4, IoU_1 = 0/2 (union 2, TP 0)
    labels = [[[[0, 0, 1, 1]]]]
    preds = {"seg": onehot_logits(np.zeros((1, 1, 4), int), 2)}
    std = MetricAccumulator(["seg"], [2])
    std.update(preds, seg_batch(labels))
    quirk = MetricAccumulator(["seg"], [2], compat="adashare")
    quirk.update(preds, seg_batch(labels))
    assert std.compute()["seg"]["mIoU"] == pytest.approx(0.25)
    assert quirk.compute()["seg"]["mIoU"] == pytest.approx(0.5)
    assert std.compute()["seg"]["Pixel Acc"] == pytest.approx(0.5)


def test_miou_skips_classes_absent_from_gt_and_prediction():
    labels = [[[[0, 1, 1, 255]]]]
    pred_cls = np.array([[[0, 1, 0, 3]]])
    acc = MetricAccumulator(["seg"], [4])        # classes 2 and 3 never occur in GT (3 only at an ignore pixel)
    acc.update({"seg": onehot_logits(pred_cls, 4)}, seg_batch(labels))
    # class 0: TP 1, FP 1 -> 1/2; class 1: TP 1, FN 1 -> 1/2
    assert acc.compute()["seg"]["mIoU"] == pytest.approx(0.5)
    assert acc.compute()["seg"]["Pixel Acc"] == pytest.approx(2 / 3)


def test_pixel_acc_pooled_vs_per_batch_weighted():
    b1 = ([[[[0, 0, 0, 0]]]], np.array([[[0, 0, 0, 1]]]))       # 3/4 correct, 4 valid
    b2 = ([[[[1, 255, 255, 255]]]], np.array([[[0, 1, 1, 1]]]))  # 0/1 correct, 1 valid
    std = MetricAccumulator(["seg"], [2])
    quirk = MetricAccumulator(["seg"], [2], compat="adashare")
    for labels, cls in (b1, b2):
        for acc in (std, quirk):
            acc.update({"seg": onehot_logits(cls, 2)}, seg_batch(labels))
    assert std.compute()["seg"]["Pixel Acc"] == pytest.approx(3 / 5)
    assert quirk.compute()["seg"]["Pixel Acc"] == pytest.approx((0.75 + 0.0) / 2)


def test_cityscapes_minus_one_excluded_in_standard_counted_in_adashare():
    labels = [[[[0, 1, -1, 2]]]]
    cls = np.array([[[0, 1, 0, 2]]])
    std = MetricAccumulator(["seg"], [3], ignore_index=-1)
    quirk = MetricAccumulator(["seg"], [3], ignore_index=-1, compat="adashare")
    for acc in (std, quirk):
        acc.update({"seg": onehot_logits(cls, 3)}, seg_batch(labels))
    assert std.compute()["seg"]["Pixel Acc"] == pytest.approx(1.0)
    assert quirk.compute()["seg"]["Pixel Acc"] == pytest.approx(0.75)
    # the confusion matrix drops -1 in both: every class has IoU 1
    assert std.compute()["seg"]["mIoU"] == pytest.approx(1.0)
    assert quirk.compute()["seg"]["mIoU"] == pytest.approx(1.0)


def _np_ce_parts(logits, labels, ignore, weights=None):
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    num = den = 0.0
    for b, i, j in zip(*np.nonzero(labels != ignore)):
        y = labels[b, i, j]
        w = 1.0 if weights is None else weights[y]
        num -= w * logp[b, y, i, j]
        den += w
    return num, den


def test_seg_err_cross_entropy_pooled_and_per_batch_with_class_weights():
    rng = np.random.default_rng(3)
    weights = np.array([1.0, 3.0, 0.5])
    batches = []
    for n_ignore in (0, 5):
        labels = rng.integers(0, 3, size=(2, 1, 3, 4))
        labels.reshape(-1)[:n_ignore] = 255
        batches.append((rng.normal(size=(2, 3, 3, 4)), labels))
    std = MetricAccumulator(["seg"], [3], class_weights=weights)
    quirk = MetricAccumulator(["seg"], [3], class_weights=weights, compat="adashare")
    parts = []
    for logits, labels in batches:
        parts.append(_np_ce_parts(logits, labels[:, 0], 255, weights))
        for acc in (std, quirk):
            acc.update({"seg": torch.from_numpy(logits).float()}, {"seg": torch.from_numpy(labels)})
    pooled = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    per_batch = np.mean([p[0] / p[1] for p in parts])          # equal batch sizes
    assert std.compute()["seg"]["err"] == pytest.approx(pooled, rel=1e-5)
    assert quirk.compute()["seg"]["err"] == pytest.approx(per_batch, rel=1e-5)


# ----------------------------------------------------------------------------- normals
def test_known_normal_angles():
    gt = np.zeros((1, 3, 1, 5), np.float32)
    gt[0, :, 0, :4] = np.array([[1, 0, 0]] * 4).T            # pixel 4 is (0, 0, 0): invalid
    pred = np.zeros((1, 3, 1, 5), np.float32)
    a = math.radians(44.0)
    pred[0, :, 0, 0] = [2, 0, 0]                              # 0 deg
    pred[0, :, 0, 1] = [0, 1, 0]                              # 90 deg
    pred[0, :, 0, 2] = [-1, 0, 0]                             # 180 deg
    pred[0, :, 0, 3] = [math.cos(a), math.sin(a), 0]          # 44 deg
    pred[0, :, 0, 4] = [0, 0, 1]                              # invalid pixel, ignored
    acc = MetricAccumulator(["sn"], [3])
    acc.update({"sn": tensor(pred)}, {"normal": tensor(gt)})
    out = acc.compute()["sn"]
    assert out["Angle Mean"] == pytest.approx((0 + 90 + 180 + 44) / 4, abs=1e-4)
    assert out["Angle Median"] == pytest.approx((44 + 90) / 2, abs=0.01)
    assert out["Angle 11.25"] == pytest.approx(25.0)           # percentages, as the original
    assert out["Angle 22.5"] == pytest.approx(25.0)
    assert out["Angle 30"] == pytest.approx(25.0)
    assert out["Angle 45"] == pytest.approx(50.0)


def test_normal_metrics_random_against_numpy_median_within_resolution():
    rng = np.random.default_rng(4)
    gt = rng.normal(size=(3, 3, 9, 7))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    gt[0, :, :2, :] = 0
    pred = gt + rng.normal(scale=0.6, size=gt.shape)
    acc = MetricAccumulator(["sn"], [3])
    acc.update({"sn": tensor(pred)}, {"normal": tensor(gt)})
    out = acc.compute()["sn"]
    ang = np_angles(pred.astype(np.float32).astype(np.float64), gt.astype(np.float32).astype(np.float64))
    assert out["Angle Mean"] == pytest.approx(ang.mean(), abs=1e-4)
    assert abs(out["Angle Median"] - np.median(ang)) <= 0.006
    for t in (11.25, 22.5, 30, 45):
        assert out[f"Angle {t:g}"] == pytest.approx(100 * np.mean(ang <= t))


def test_adashare_encoded_normal_angles():
    """adashare on NYUv2-layout data measures in the PNG-encoded space, with the original's validity there."""
    rng = np.random.default_rng(5)
    v = rng.integers(0, 255, size=(1, 3, 4, 4)).astype(np.float64)       # 8-bit PNG values, RGB order
    v[0, :, 0, 0] = 255                                                   # invalid fill (255, 255, 255)
    v[0, :, 0, 1] = [255, 128, 128]                                       # one channel at 255: the original drops it
    gt = (v.astype(np.float32) * np.float32(2 / 255) - 1).astype(np.float32)   # our loader's decode
    gt[0, :, 0, 0] = 0                                                    # our invalid marker
    pred = rng.normal(size=(1, 3, 4, 4))
    pred32 = pred.astype(np.float32).astype(np.float64)
    p_enc = (pred32 / np.linalg.norm(pred32, axis=1, keepdims=True) + 1) * 127.5
    original_valid = v.max(axis=1) < 255
    expected_enc = np_angles(p_enc, np.where(original_valid[:, None], v, 0))
    expected_dec = np_angles(pred32, gt.astype(np.float64))
    enc = MetricAccumulator(["sn"], [3], compat="adashare", normals_encoded=True)
    dec = MetricAccumulator(["sn"], [3], compat="adashare", normals_encoded=False)
    std = MetricAccumulator(["sn"], [3], normals_encoded=True)     # standard ignores the flag
    for acc in (enc, dec, std):
        acc.update({"sn": tensor(pred)}, {"normal": tensor(gt)})
    assert expected_enc.size == 14 and expected_dec.size == 15
    assert enc.compute()["sn"]["Angle Mean"] == pytest.approx(expected_enc.mean(), abs=1e-4)
    assert enc.compute()["sn"]["Angle Median"] == pytest.approx(np.median(expected_enc), abs=1e-4)   # exact
    assert dec.compute()["sn"]["Angle Mean"] == pytest.approx(expected_dec.mean(), abs=1e-4)
    assert std.compute()["sn"]["Angle Mean"] == pytest.approx(expected_dec.mean(), abs=1e-4)
    assert abs(expected_enc.mean() - expected_dec.mean()) > 1.0     # the two spaces really differ


def test_encoded_predictions_measured_in_encoded_space_in_both_modes():
    """An original-convention net (normals_space="encoded") predicts a B, G, R direction in encoded space."""
    rng = np.random.default_rng(6)
    v = rng.integers(0, 255, size=(1, 3, 3, 5)).astype(np.float64)
    gt = (v.astype(np.float32) * np.float32(2 / 255) - 1).astype(np.float32)
    pred_bgr = rng.normal(size=(1, 3, 3, 5)) + 2.0                       # any real vector, read as a direction
    expected = np_angles(pred_bgr.astype(np.float32).astype(np.float64), v[:, ::-1])   # v in B, G, R order
    for compat in ("adashare", "standard"):
        acc = MetricAccumulator(["sn"], [3], compat=compat, normals_encoded=True, normals_space="encoded")
        acc.update({"sn": tensor(pred_bgr)}, {"normal": tensor(gt)})
        assert acc.compute()["sn"]["Angle Mean"] == pytest.approx(expected.mean(), abs=1e-4)
    with pytest.raises(ValueError, match="encoded PNGs"):
        MetricAccumulator(["sn"], [3], normals_space="encoded")          # e.g. Taskonomy: no encoded original


# ----------------------------------------------------------------------------- depth, keypoint, edge
def test_depth_negative_prediction_and_error_definitions():
    gt = [[[[2.0, 1.0, 4.0, 0.0]]]]          # last pixel invalid
    pred = [[[[2.2, -1.0, 4.0, 5.0]]]]
    std = MetricAccumulator(["depth"], [1])
    quirk = MetricAccumulator(["depth"], [1], compat="adashare")
    for acc in (std, quirk):
        acc.update({"depth": tensor(pred)}, {"depth": tensor(gt)})
    s, q = std.compute()["depth"], quirk.compute()["depth"]
    assert s["abs_err"] == pytest.approx((0.2 + 2.0 + 0.0) / 3, rel=1e-6)
    assert s["rel_err"] == pytest.approx((0.1 + 2.0 + 0.0) / 3, rel=1e-6)
    assert s["sigma_1.25"] == pytest.approx(100 * 2 / 3)       # the negative prediction is not within
    assert q["sigma_1.25"] == pytest.approx(100.0)             # the original counts it (ratio < 0)
    assert s["sigma_1.25^3"] == pytest.approx(100 * 2 / 3)
    assert q["abs_err"] == pytest.approx(s["abs_err"], rel=1e-6)   # one batch: same value


def test_depth_pooled_vs_batch_weighted():
    rng = np.random.default_rng(6)
    gts, preds = [], []
    for batch_size, n_invalid in ((2, 0), (1, 10)):
        g = rng.uniform(0.5, 3.0, size=(batch_size, 1, 4, 4))
        g.reshape(-1)[:n_invalid] = 0.0
        gts.append(g)
        preds.append(g + rng.normal(scale=0.3, size=g.shape))
    std = MetricAccumulator(["depth"], [1])
    quirk = MetricAccumulator(["depth"], [1], compat="adashare")
    abs_all, rel_all, means_abs, means_rel, ratios = [], [], [], [], []
    for g, p in zip(gts, preds):
        g32, p32 = g.astype(np.float32).astype(np.float64), p.astype(np.float32).astype(np.float64)
        v = g32 > 3e-5
        e = np.abs(p32 - g32)[v]
        abs_all.append(e)
        rel_all.append(e / g32[v])
        means_abs.append(e.mean() * g.shape[0])
        means_rel.append((e / g32[v]).mean() * g.shape[0])
        ratios.append(np.where(p32[v] > 0, np.maximum(p32[v] / g32[v], g32[v] / p32[v]), np.inf))
        for acc in (std, quirk):
            acc.update({"depth": tensor(p)}, {"depth": tensor(g)})
    s, q = std.compute()["depth"], quirk.compute()["depth"]
    assert s["abs_err"] == pytest.approx(np.concatenate(abs_all).mean(), rel=1e-6)
    assert s["rel_err"] == pytest.approx(np.concatenate(rel_all).mean(), rel=1e-6)
    assert q["abs_err"] == pytest.approx(sum(means_abs) / 3, rel=1e-6)
    assert q["rel_err"] == pytest.approx(sum(means_rel) / 3, rel=1e-6)
    r = np.concatenate(ratios)
    for k, name in enumerate(("sigma_1.25", "sigma_1.25^2", "sigma_1.25^3"), start=1):
        assert s[name] == pytest.approx(100 * np.mean(r <= 1.25 ** k))


@pytest.mark.parametrize("task", ["keypoint", "edge"])
def test_keypoint_edge_error_pooled_vs_per_batch(task):
    gt1 = [[[[0.5, -0.5, 255.0, 255.0]]]]
    pr1 = [[[[0.0, 0.0, 9.0, 9.0]]]]                     # mean 0.5 over 2 valid
    gt2 = [[[[1.0, 1.0, 1.0, 1.0]]]]
    pr2 = [[[[0.9, 0.9, 0.9, 0.9]]]]                     # mean 0.1 over 4 valid
    std = MetricAccumulator([task], [1])
    quirk = MetricAccumulator([task], [1], compat="adashare")
    for g, p in ((gt1, pr1), (gt2, pr2)):
        for acc in (std, quirk):
            acc.update({task: tensor(p)}, {task: tensor(g)})
    assert std.compute()[task]["err"] == pytest.approx((1.0 + 0.4) / 6, rel=1e-6)
    assert quirk.compute()[task]["err"] == pytest.approx((0.5 + 0.1) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- resizing
def test_predictions_resized_bilinear_standard_nearest_adashare():
    rng = np.random.default_rng(7)
    small = rng.normal(size=(1, 1, 3, 4)).astype(np.float32)
    gt = rng.uniform(0.5, 2.0, size=(1, 1, 7, 10)).astype(np.float32)
    std = MetricAccumulator(["depth"], [1])
    quirk = MetricAccumulator(["depth"], [1], compat="adashare")
    for acc in (std, quirk):
        acc.update({"depth": torch.from_numpy(small)}, {"depth": torch.from_numpy(gt)})
    g = gt.astype(np.float64)
    expected_bilinear = np.abs(np_bilinear(small.astype(np.float64), 7, 10) - g).mean()
    expected_nearest = np.abs(np_nearest(small.astype(np.float64), 7, 10) - g).mean()
    assert std.compute()["depth"]["abs_err"] == pytest.approx(expected_bilinear, rel=1e-5)
    assert quirk.compute()["depth"]["abs_err"] == pytest.approx(expected_nearest, rel=1e-6)


# ----------------------------------------------------------------------------- accumulation
def _random_batch(rng, b, h=8, w=8, ph=4, pw=4, classes=5):
    seg = rng.integers(0, classes, size=(b, 1, h, w))
    seg[rng.random(seg.shape) < 0.2] = 255
    normal = rng.normal(size=(b, 3, h, w))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal[:, :, rng.random((h, w)) < 0.2] = 0
    depth = rng.uniform(0.5, 3.0, size=(b, 1, h, w))
    depth[rng.random(depth.shape) < 0.2] = 0
    kp = rng.uniform(-1, 1, size=(b, 1, h, w))
    kp[rng.random(kp.shape) < 0.2] = 255
    batch = {"seg": torch.from_numpy(seg), "normal": tensor(normal), "depth": tensor(depth), "keypoint": tensor(kp),
             "edge": tensor(np.where(kp == 255, 255, -kp))}
    preds = {"seg": tensor(rng.normal(size=(b, classes, ph, pw))), "sn": tensor(rng.normal(size=(b, 3, ph, pw))),
             "depth": tensor(rng.normal(1.5, 1.0, size=(b, 1, ph, pw))),
             "keypoint": tensor(rng.normal(size=(b, 1, ph, pw))), "edge": tensor(rng.normal(size=(b, 1, ph, pw)))}
    return preds, batch


TASKS = ["seg", "sn", "depth", "keypoint", "edge"]
CLASSES = [5, 3, 1, 1, 1]


def _cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def test_two_batches_equal_one_big_batch_standard():
    rng = np.random.default_rng(8)
    p1, b1 = _random_batch(rng, 2)
    p2, b2 = _random_batch(rng, 3)
    split = MetricAccumulator(TASKS, CLASSES)
    split.update(p1, b1)
    split.update(p2, b2)
    whole = MetricAccumulator(TASKS, CLASSES)
    whole.update(_cat(p1, p2), _cat(b1, b2))
    a, b = split.compute(), whole.compute()
    for task in TASKS:
        for key in a[task]:
            assert a[task][key] == pytest.approx(b[task][key], rel=1e-9, abs=1e-9), (task, key)


def test_state_merge_and_load_roundtrip(tmp_path):
    rng = np.random.default_rng(9)
    p1, b1 = _random_batch(rng, 2)
    p2, b2 = _random_batch(rng, 1)
    for compat in ("standard", "adashare"):
        one = MetricAccumulator(TASKS, CLASSES, compat=compat)
        one.update(p1, b1)
        one.update(p2, b2)
        left = MetricAccumulator(TASKS, CLASSES, compat=compat)
        left.update(p1, b1)
        right = MetricAccumulator(TASKS, CLASSES, compat=compat)
        right.update(p2, b2)
        left.merge(right)
        assert left.compute() == one.compute()
        torch.save(one.state(), tmp_path / "state.pt")
        restored = MetricAccumulator(TASKS, CLASSES, compat=compat).load_state(
            torch.load(tmp_path / "state.pt", weights_only=True))
        assert restored.compute() == one.compute()
    with pytest.raises(ValueError, match="do not match"):
        MetricAccumulator(["seg"], [5]).merge(one)


def test_all_reduce_single_process_gloo_is_identity(tmp_path):
    rng = np.random.default_rng(10)
    preds, batch = _random_batch(rng, 2)
    acc = MetricAccumulator(TASKS, CLASSES)
    acc.update(preds, batch)
    before = acc.compute()
    acc.all_reduce()                                            # not initialised: a no-op
    assert acc.compute() == before
    pooled = MetricAccumulator(TASKS, CLASSES, compat="adashare")    # also gathers the pooled cosines
    pooled.update(preds, batch)
    pooled_before = pooled.compute()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        acc.all_reduce()
        assert acc.compute() == before
        pooled.all_reduce()
        assert pooled.compute() == pooled_before
        empty = MetricAccumulator(TASKS, CLASSES).all_reduce()   # a rank that saw nothing
        assert math.isnan(empty.compute()["sn"]["Angle Median"])
    finally:
        dist.destroy_process_group()


def test_no_valid_pixels_give_nan_not_errors():
    acc = MetricAccumulator(["depth", "seg"], [1, 2])
    acc.update({"depth": torch.ones(1, 1, 2, 2), "seg": torch.randn(1, 2, 2, 2)},
               {"depth": torch.zeros(1, 1, 2, 2), "seg": torch.full((1, 1, 2, 2), 255)})
    out = acc.compute()
    assert math.isnan(out["depth"]["abs_err"]) and math.isnan(out["seg"]["mIoU"])


def test_build_metrics_and_bad_arguments():
    config = {"dataset": "nyuv2", "tasks": ["seg", "sn"], "num_classes": [40, 3],
              "eval": {"metrics_compat": "adashare"}}
    acc = build_metrics(config)
    assert acc.compat == "adashare" and acc.normals_encoded and acc.ignore_index == 255
    city = build_metrics({"dataset": "cityscapes", "tasks": ["seg", "depth"], "num_classes": [19, 1],
                          "eval": {"metrics_compat": "standard"}})
    assert city.ignore_index == -1 and not city.normals_encoded
    with pytest.raises(ValueError, match="compat"):
        MetricAccumulator(["seg"], [3], compat="bogus")
    with pytest.raises(ValueError, match="no prediction"):
        MetricAccumulator(["seg"], [3]).update({}, {"seg": torch.zeros(1, 1, 2, 2, dtype=torch.int64)})


def test_format_table_shows_percentages_for_display():
    metrics = {"seg": {"mIoU": 0.2769, "Pixel Acc": 0.5877, "err": 1.23456},
               "sn": {"Angle Mean": 16.55, "Angle 11.25": 39.62}, "delta_m": -1.5, "sparsity": 0.9}
    table = format_table(metrics)
    assert "27.69" in table and "58.77" in table and "1.2346" in table
    assert "39.62" in table and "-1.50" in table and "90.00" in table
    lines = table.splitlines()
    assert len(lines) == 2 + 5 + 2


# ----------------------------------------------------------------------------- delta_m
BASE = {"seg": {"mIoU": 0.40, "Pixel Acc": 0.80, "err": 1.0},
        "depth": {"abs_err": 0.02, "rel_err": 0.40, "sigma_1.25": 50.0, "sigma_1.25^2": 80.0, "sigma_1.25^3": 90.0}}


def test_delta_m_hand_made():
    better = {"seg": {"mIoU": 0.44, "Pixel Acc": 0.80, "err": 5.0},      # +10 %, 0 % (err not counted)
              "depth": {"abs_err": 0.018, "rel_err": 0.40, "sigma_1.25": 50.0, "sigma_1.25^2": 80.0,
                        "sigma_1.25^3": 90.0}, "sparsity": 0.9}          # abs_err -10 % (lower is better: +10)
    expected = 100 * ((0.10 + 0.0) / 2 + (0.10 + 0 + 0 + 0 + 0) / 5) / 2
    assert delta_m(better, BASE) == pytest.approx(expected)
    assert delta_m(better, BASE) > 0
    worse = {"seg": {"mIoU": 0.36, "Pixel Acc": 0.80, "err": 1.0},
             "depth": {**BASE["depth"], "abs_err": 0.022}}
    assert delta_m(worse, BASE) == pytest.approx(-expected)
    assert delta_m(BASE, BASE) == 0.0


def test_delta_m_errors_and_directions():
    with pytest.raises(ValueError, match="tasks differ"):
        delta_m({"seg": BASE["seg"]}, BASE)
    zero = {"seg": {**BASE["seg"], "mIoU": 0.0}, "depth": BASE["depth"]}
    better_pixacc = {"seg": {**BASE["seg"], "Pixel Acc": 1.1 * BASE["seg"]["Pixel Acc"]}, "depth": BASE["depth"]}
    with pytest.warns(RuntimeWarning, match="seg/mIoU is 0"):   # mIoU left out: seg is Pixel Acc alone
        assert delta_m(better_pixacc, zero) == pytest.approx(100 * (0.1 + 0.0) / 2)
    all_zero = {"seg": {**BASE["seg"], "mIoU": 0.0, "Pixel Acc": 0.0}, "depth": BASE["depth"]}
    with pytest.raises(ValueError, match="every baseline metric of task seg is 0"), pytest.warns(RuntimeWarning):
        delta_m(BASE, all_zero)
    for task, names in DELTA_M_METRICS.items():
        assert set(names) <= set(METRIC_KEYS[task]) == set(METRIC_DIRECTIONS[task])
    assert METRIC_DIRECTIONS["sn"]["Angle Median"] == "lower" and METRIC_DIRECTIONS["seg"]["mIoU"] == "higher"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(11)
    preds, batch = _random_batch(rng, 2)
    for compat in ("standard", "adashare"):
        cpu = MetricAccumulator(TASKS, CLASSES, compat=compat)
        cpu.update(preds, batch)
        gpu = MetricAccumulator(TASKS, CLASSES, compat=compat)
        gpu.update({k: v.cuda() for k, v in preds.items()}, {k: v.cuda() for k, v in batch.items()})
        a, b = cpu.compute(), gpu.compute()
        for task in TASKS:
            for key in a[task]:
                assert a[task][key] == pytest.approx(b[task][key], rel=1e-5, abs=1e-5), (task, key)
