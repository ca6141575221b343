"""Every switch between our defaults and the original's behaviour changes the result as documented
(README "Differences from the original code"): Taskonomy loader semantics, the normals space of the loss
and of checkpoints, the IoU analysis batch count and the Δm definition. (drop_last: test_data_loader.py;
epi_like and --compat_row_slice: test_similarity.py and test_golden_similarity.py; metrics compat:
test_golden_metrics.py.)"""
from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from tests.golden import (ROOT_WRITERS, evaluate_golden, golden_batch, golden_config, load_golden, n_images,
                          predictions)


def _compat_metrics(fx, config, batch, data):
    from engine.metrics import build_metrics
    acc = build_metrics(config, data)
    acc.update(predictions(fx), batch)
    return acc.compute(), acc.state()


def test_taskonomy_unlabelled_ignore_vs_class0(tmp_path):
    fx, _, config, batch, data = golden_batch("metrics_taskonomy.pt", tmp_path, "taskonomy.unlabelled=ignore")
    unlabelled = (fx["target_seg_mask"] == 0) & (fx["target_seg"] == 0)
    assert unlabelled.any()
    expected = torch.where(unlabelled, torch.full_like(fx["target_seg"], 255), fx["target_seg"]).long()
    assert torch.equal(batch["seg"], expected)                           # ignored instead of class 0
    metrics, state = _compat_metrics(fx, config, batch, data)
    assert int(state["seg.confusion"].sum()) == batch["seg"].numel() - int(unlabelled.sum())
    assert metrics["seg"]["Pixel Acc"] != pytest.approx(fx["metrics_full_batch"]["seg"]["Pixel Acc"], rel=1e-5)


def test_taskonomy_normals_where_depth_invalid_mask_vs_keep(tmp_path):
    fx, _, config, batch, data = golden_batch("metrics_taskonomy.pt", tmp_path, "taskonomy.normals_where_depth_invalid=mask")
    invalid = fx["target_depth_mask"] == 0
    assert invalid.any()
    assert torch.equal((batch["normal"] == 0).all(dim=1, keepdim=True), invalid)
    keep = torch.where(invalid, torch.zeros_like(fx["target_normal"]), fx["target_normal"])
    np.testing.assert_allclose(batch["normal"].numpy(), keep.numpy(), atol=1e-6)
    metrics, state = _compat_metrics(fx, config, batch, data)
    assert int(state["sn.count"]) == invalid.numel() - int(invalid.sum())   # the original scores every pixel
    assert metrics["sn"]["Angle Mean"] != pytest.approx(fx["metrics_full_batch"]["sn"]["Angle Mean"], abs=1e-4)


@pytest.mark.parametrize("mode", ["nearest", "area"])
def test_taskonomy_rgb_interpolation(mode, tmp_path):
    """nearest = the original's (PIL) nearest with pixel-centre sampling, like the label maps; area averages."""
    from dataloaders import build_loader
    from dataloaders.base import IMG_MEAN_BGR

    fx = load_golden("metrics_taskonomy.pt")
    root = ROOT_WRITERS["taskonomy"](fx, tmp_path / "taskonomy")
    h, w = (int(v) for v in fx["image_shape"])
    rgb_file = sorted((root / "rgb").rglob("*.png"))[0]
    big = np.random.default_rng(0).integers(0, 256, size=(2 * h, 2 * w, 3), dtype=np.uint8)   # B, G, R
    cv2.imwrite(str(rgb_file), big)
    config = golden_config(fx, root, f"taskonomy.rgb_interpolation={mode}")
    img = build_loader(config, "test", batch_size=1, shuffle=False, train=False).dataset[0]["img"]
    bgr = img.permute(1, 2, 0).numpy() + IMG_MEAN_BGR
    nearest = big[2 * np.arange(h) + 1][:, 2 * np.arange(w) + 1]      # source index ⌊(i + ½)·2⌋ = 2i + 1
    area = big.reshape(h, 2, w, 2, 3).astype(np.float64).mean(axis=(1, 3))
    if mode == "nearest":
        np.testing.assert_allclose(bgr, nearest, atol=1e-4)
    else:
        np.testing.assert_allclose(bgr, np.rint(area), atol=1.0 + 1e-4)
        assert np.abs(bgr - nearest).max() > 50


def test_normals_space_config_reaches_the_loss_and_is_refused_where_the_original_was_decoded():
    from engine.config import ConfigError, load_config
    from engine.losses import build_loss

    assert build_loss(load_config("nyuv2")).task_loss.normals_space == "decoded"
    encoded = load_config("nyuv2", overrides=["loss.normals_space=encoded"])
    assert build_loss(encoded).task_loss.normals_space == "encoded"
    with pytest.raises(ConfigError, match="normals_space"):
        load_config("taskonomy", overrides=["loss.normals_space=encoded"])


def test_normals_space_changes_the_sn_saliency_masks_not_the_seg_ones(nyuv2_samples):
    """The original's encoded-space loss has other gradients, hence other SNIP masks, for the sn task only."""
    from dataloaders import build_loader
    from engine.config import load_config
    from engine.losses import build_loss
    from models import build_model
    from prune_utils.iou import iou
    from prune_utils.mask_builder import task_masks
    from prune_utils.saliency import compute_scores

    masks = {}
    for space in ("decoded", "encoded"):
        config = load_config("nyuv2", overrides=["model.width_mult=0.0625", "data.num_workers=0", "data.crop_h=64",
                                                 "data.crop_w=64", f"loss.normals_space={space}"],
                             data_root=str(nyuv2_samples))
        loader = build_loader(config, "train", batch_size=3, seed=0)
        torch.manual_seed(0)
        scores = compute_scores(build_model(config), loader, build_loss(config, loader.dataset), config["tasks"],
                                num_batches=1, generator=0)
        masks[space] = task_masks(scores, 0.1)
    seg = [iou([masks["decoded"]["seg"][n], masks["encoded"]["seg"][n]]) for n in masks["decoded"]["seg"]]
    sn = [iou([masks["decoded"]["sn"][n], masks["encoded"]["sn"][n]]) for n in masks["decoded"]["sn"]]
    assert min(seg) == 1.0 and min(sn) < 0.9


def test_checkpoint_normals_convention_original_vs_ours(tmp_path):
    """An original-format NYUv2 state dict predicts encoded normals (recorded, with a warning when the
    config says otherwise); our checkpoints carry their config's space; Taskonomy's original was decoded."""
    from fileio import atomic_save, load_weights, make_checkpoint
    from engine.config import load_config
    from fileio.original import export_original_state_dict
    from models import build_model

    tiny = ["model.width_mult=0.0625"]
    for dataset, space in (("nyuv2", "encoded"), ("taskonomy", "decoded")):
        config = load_config(dataset, overrides=tiny)
        model = build_model(config)
        path = tmp_path / f"original_{dataset}.pth"
        torch.save(export_original_state_dict(model.state_dict(), config["tasks"]), path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = load_weights(path, build_model(config), config)
        assert loaded.original and loaded.normals_space == space
        assert any("loss.normals_space=encoded" in str(w.message) for w in caught) == (space == "encoded")
    config = load_config("nyuv2", overrides=[*tiny, "loss.normals_space=encoded"])
    path = tmp_path / "ours.pth"
    atomic_save(make_checkpoint(build_model(config).state_dict(), config, "baseline"), path)
    assert load_weights(path, build_model(config), config).normals_space == "encoded"


def test_eval_of_an_original_checkpoint_gives_the_original_normal_metrics(tmp_path):
    """evaluate() with the recorded space (encoded) = the golden numbers; read as decoded they are meaningless."""
    fx = load_golden("metrics_nyuv2.pt")
    expected = fx["metrics_full_batch"]
    results = {space: evaluate_golden(fx, tmp_path / space, n_images(fx), normals_space=space)
               for space in ("encoded", "decoded")}
    assert results["encoded"]["sn"]["Angle Mean"] == pytest.approx(expected["sn"]["Angle Mean"], abs=1e-4)
    assert abs(results["decoded"]["sn"]["Angle Mean"] - expected["sn"]["Angle Mean"]) > 1.0
    assert results["decoded"]["seg"] == pytest.approx(expected["seg"], rel=1e-5)      # seg is unaffected


def test_analysis_num_batches_is_the_iou_default(synthetic_root, synthetic_overrides, tmp_path):
    import iou_analysis
    from engine.config import load_config

    assert [load_config(d)["analysis"]["num_batches"] for d in ("nyuv2", "cityscapes", "taskonomy")] == [50, 50, 200]
    records = {}
    for n in (1, 3):
        sets = ["model.width_mult=0.0625", "pruning.batch_size=2", "data.num_workers=0", "data.crop_h=32",
                "data.crop_w=32", f"analysis.num_batches={n}", *synthetic_overrides]
        args = ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--device", "cpu", "--no_progress",
                "--no_plot", "--keep-ratio", "0.3", "--dest", str(tmp_path / str(n))]
        assert iou_analysis.main(args + sum((["--set", s] for s in sets), [])) == 0
        records[n] = json.loads((tmp_path / str(n) / "synthetic_iou.json").read_text())
        assert records[n]["num_batches"] == n
    assert [layer["all"] for layer in records[1]["layers"]] != [layer["all"] for layer in records[3]["layers"]]


def test_delta_m_definitions_on_a_hand_made_example():
    from engine.delta_m import delta_m

    base = {"seg": {"mIoU": 0.5, "Pixel Acc": 0.8},
            "depth": {"abs_err": 1.0, "rel_err": 0.5, "sigma_1.25": 50.0, "sigma_1.25^2": 80.0, "sigma_1.25^3": 90.0}}
    new = {"seg": {"mIoU": 0.55, "Pixel Acc": 0.8},                      # +10 %, 0
           "depth": {"abs_err": 1.1, "rel_err": 0.5, "sigma_1.25": 50.0, "sigma_1.25^2": 80.0, "sigma_1.25^3": 90.0}}
    # task_mean: mean(seg (10 + 0)/2 = 5, depth (−10 + 0 + 0 + 0 + 0)/5 = −2) = 1.5
    assert delta_m(new, base) == pytest.approx(1.5)
    assert delta_m(new, base, "task_mean") == pytest.approx(1.5)
    # metric_mean: (10 + 0 − 10 + 0 + 0 + 0 + 0) / 7 = 0
    assert delta_m(new, base, "metric_mean") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="definition"):
        delta_m(new, base, "median")
