"""Our loaders on roots written from the golden fixtures give back the original loader's test-mode targets
(in our conventions), with the original's Taskonomy semantics from config; and `batch_from_original`
maps the original's batches onto exactly what our loaders produce."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.golden import golden_batch

DATASETS = ("nyuv2", "cityscapes", "taskonomy")


def _load(dataset, tmp_path):
    fx, _, _, batch, _ = golden_batch(f"metrics_{dataset}.pt", tmp_path)
    return fx, batch


def test_nyuv2_targets_round_trip_to_the_original_encoded_values(tmp_path):
    from engine.targets import encode_normals

    fx, batch = _load("nyuv2", tmp_path)
    assert batch["seg"].dtype == torch.int64
    assert torch.equal(batch["seg"], fx["target_seg"].long())
    raw = fx["target_normal"].long()                               # B, G, R as OpenCV read it
    fill = (raw == 255).all(dim=1, keepdim=True)
    assert torch.equal((batch["normal"] == 0).all(dim=1, keepdim=True), fill)
    assert torch.equal(encode_normals(batch["normal"], exact_8bit=True).long(), torch.where(fill, 0, raw))


def test_cityscapes_targets_keep_minus_one_and_the_depth_threshold(tmp_path):
    fx, batch = _load("cityscapes", tmp_path)
    assert torch.equal(batch["seg"], fx["target_seg"].long())      # −1 stays −1
    depth = fx["target_depth"]
    assert torch.equal(batch["depth"], torch.where(depth > 3e-5, depth, torch.zeros_like(depth)))


def test_taskonomy_with_the_original_semantics_reproduces_its_loader(tmp_path):
    fx, batch = _load("taskonomy", tmp_path)                       # golden_config sets class0 / keep / nearest
    assert torch.equal(batch["seg"], fx["target_seg"].long())      # raw 0 (unlabelled) -> class 0
    np.testing.assert_allclose(batch["normal"].numpy(), fx["target_normal"].numpy(), atol=1e-6)
    valid = fx["target_depth_mask"] == 1
    np.testing.assert_allclose(batch["depth"].numpy(), torch.where(valid, fx["target_depth"], 0).numpy(), atol=1e-6)
    for key in ("keypoint", "edge"):
        np.testing.assert_allclose(batch[key].numpy(), fx[f"target_{key}"].numpy(), atol=1e-6)


@pytest.mark.parametrize("dataset", DATASETS)
def test_batch_from_original_equals_our_loader(dataset, tmp_path):
    from dataloaders.original import batch_from_original

    fx, batch = _load(dataset, tmp_path)
    raw = {k[len("target_"):]: v for k, v in fx.items() if k.startswith("target_") and k != "target_seg_mask"}
    converted = batch_from_original(dataset, raw)
    for key, value in converted.items():
        assert value.dtype == batch[key].dtype, key
        np.testing.assert_allclose(value.numpy(), batch[key].numpy(), atol=1e-6, err_msg=key)
