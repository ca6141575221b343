"""Train augmentation (scale, mirror, pad-then-crop) keeps the image and every label map aligned.

A block frame whose labels are a function of the pixel colour is written in the NYUv2 layout; each
class has its own colour, normal (with a non-zero x component) and depth (class + 1 m).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dataloaders import IMG_MEAN_BGR, NYUv2, augment, draw_params
from dataloaders.transforms import MapSpec, resize_nearest

H, W, CELL = 96, 128, 16
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)
NORMALS = np.array([[0.6, -0.8, 0.0], [-0.8, 0.0, 0.6], [0.48, 0.6, 0.64], [-0.36, -0.48, 0.8],
                    [0.8, 0.36, -0.48], [-0.6, 0.0, -0.8]])


@pytest.fixture(scope="module")
def block_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(2):
        cells = rng.integers(0, len(PALETTE), size=(H // CELL, W // CELL))
        seg = np.kron(cells, np.ones((CELL, CELL), dtype=np.int64)).astype(np.uint8)
        if i == 1:
            seg[:CELL, :CELL] = 255                 # an unlabelled corner
        img = PALETTE[np.minimum(seg, 5)]
        normal = NORMALS[np.minimum(seg, 5)]
        encoded = np.rint((normal + 1) * 127.5).astype(np.uint8)
        depth = (np.minimum(seg, 5) + 1).astype(np.float32)
        for folder in ("img", "seg", "normal_mask", "depth"):
            (root / folder).mkdir(exist_ok=True)
        cv2.imwrite(str(root / f"img/{i}.png"), img)
        cv2.imwrite(str(root / f"seg/{i}.png"), seg)
        cv2.imwrite(str(root / f"normal_mask/{i}.png"), encoded[:, :, ::-1])
        np.save(root / f"depth/{i}.npy", depth)
        entries.append([f"img/{i}.png", f"seg/{i}.png", f"normal_mask/{i}.png", f"depth/{i}.npy"])
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": entries, "test": entries}))
    return root


def _expected_source(params, crop, size):
    """For each crop pixel: (source row, source col) or -1 for padding, worked out from the spec."""
    (ch, cw), (h, w) = crop, size
    nh, nw = params.height, params.width
    off_y, off_x = (max(nh, ch) - nh) // 2, (max(nw, cw) - nw) // 2
    ys = np.arange(ch) + params.top - off_y
    xs = np.arange(cw) + params.left - off_x
    inside_y, inside_x = (ys >= 0) & (ys < nh), (xs >= 0) & (xs < nw)
    if params.mirror:
        xs = nw - 1 - xs
    src_y = np.minimum(np.floor((ys + 0.5) * h / nh), h - 1).astype(int)
    src_x = np.minimum(np.floor((xs + 0.5) * w / nw), w - 1).astype(int)
    return np.where(inside_y, src_y, -1), np.where(inside_x, src_x, -1)


@pytest.mark.parametrize("crop", [(64, 64), (112, 160)])
def test_labels_follow_the_drawn_geometry_exactly(block_root, crop):
    test = NYUv2(block_root, "test")
    train = NYUv2(block_root, "train", *crop)
    for index in range(2):
        full = test[index]
        for seed in range(6):
            item = train[(index, seed)]
            params = draw_params(np.random.default_rng(seed), (H, W), crop)
            rows, cols = _expected_source(params, crop, (H, W))
            pad = (rows[:, None] < 0) | (cols[None, :] < 0)
            src = full["seg"][0].numpy()[np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]]
            expected = np.where(pad, 255, src)
            assert np.array_equal(item["seg"][0].numpy(), expected), (index, seed, params)
            depth = item["depth"][0].numpy()
            # label maps agree with each other: depth = class + 1 wherever labelled, 0 on padding
            labelled = expected != 255
            assert np.array_equal(depth[labelled], (expected[labelled] + 1).astype(np.float32))
            assert (depth[pad] == 0).all()
            # padded pixels: seg 255, normal all-zero, depth 0, image 0 before mean subtraction
            assert not item["normal"].numpy()[:, pad].any()
            assert np.allclose(item["img"].numpy()[:, pad], -IMG_MEAN_BGR.reshape(3, 1), atol=1e-4)


def test_padding_happens_and_holds_invalid_values(block_root):
    train = NYUv2(block_root, "train", 200, 240)     # larger than any scaled frame below 1.5x on one side
    item = train[(0, 3)]
    params = draw_params(np.random.default_rng(3), (H, W), (200, 240))
    assert params.height < 200 or params.width < 240
    seg = item["seg"][0].numpy()
    pad = item["depth"][0].numpy() == 0
    assert pad.mean() > 0.1 and (seg[pad] == 255).all()


def test_image_colour_still_predicts_the_label(block_root):
    train = NYUv2(block_root, "train", 64, 64)
    agree, flipped_agree = [], []
    palette = PALETTE.astype(np.float32) - IMG_MEAN_BGR          # what the classes look like after mean subtraction
    for seed in range(12):
        item = train[(0, seed)]
        img = item["img"].numpy().transpose(1, 2, 0)
        seg = item["seg"][0].numpy()
        colour_class = np.argmin(((img[:, :, None, :] - palette) ** 2).sum(-1), axis=-1)
        valid = seg != 255
        agree.append((colour_class == seg)[valid].mean())
        flipped_agree.append((colour_class[:, ::-1] == seg)[valid].mean())
    assert min(agree) > 0.9, agree                                  # only bilinear seams disagree
    assert np.mean(flipped_agree) < 0.6                             # a misalignment would show


def test_mirror_negates_normal_x_unless_disabled(block_root):
    decoded = np.rint((NORMALS + 1) * 127.5) * 2 / 255 - 1
    for mirror_normals in (True, False):
        train = NYUv2(block_root, "train", 64, 64, mirror_normals=mirror_normals)
        mirrored_seen = plain_seen = False
        for seed in range(10):
            item = train[(0, seed)]
            params = draw_params(np.random.default_rng(seed), (H, W), (64, 64))
            seg = item["seg"][0].numpy()
            normal = item["normal"].numpy()
            valid = seg != 255
            want = decoded[seg[valid]].T.copy()
            if params.mirror and mirror_normals:
                want[0] = -want[0]
            assert np.allclose(normal[:, valid], want, atol=1e-6)
            mirrored_seen |= params.mirror
            plain_seen |= not params.mirror
        assert mirrored_seen and plain_seen


def test_seeded_samples_repeat_and_differ(block_root):
    a = NYUv2(block_root, "train", 64, 64)
    b = NYUv2(block_root, "train", 64, 64)
    for key in ("img", "seg", "normal", "depth"):
        assert np.array_equal(a[(1, 5)][key].numpy(), b[(1, 5)][key].numpy())
    assert not np.array_equal(a[(1, 5)]["img"].numpy(), a[(1, 6)]["img"].numpy())
    # plain indices use the dataset's own generator: reproducible from its seed
    c, d = NYUv2(block_root, "train", 64, 64, seed=11), NYUv2(block_root, "train", 64, 64, seed=11)
    assert all(np.array_equal(c[0]["img"].numpy(), d[0]["img"].numpy()) for _ in range(3))


def test_augment_works_on_any_named_maps():
    rng = np.random.default_rng(0)
    maps = {"img": rng.uniform(0, 255, (30, 40, 3)).astype(np.float32),
            "mask": np.arange(30 * 40, dtype=np.int64).reshape(30, 40),
            "extra": np.ones((30, 40, 1), np.float32)}
    specs = {"img": MapSpec("image", 0.0), "mask": MapSpec("label", -7, np.int64), "extra": MapSpec("label", 255.0)}
    out = augment(maps, specs, (50, 60), np.random.default_rng(4))
    assert out["img"].shape == (50, 60, 3) and out["mask"].shape == (50, 60) and out["extra"].shape == (50, 60, 1)
    pad = out["mask"] == -7
    assert pad.any() and (out["extra"][pad] == 255).all() and (out["img"][pad] == 0).all()
    assert (out["extra"][~pad] == 1).all()
    # nearest resize keeps values exactly and samples pixel centres
    assert np.array_equal(resize_nearest(np.arange(4)[None], 1, 8)[0], [0, 0, 1, 1, 2, 2, 3, 3])
    assert np.array_equal(resize_nearest(np.arange(8)[None], 1, 4)[0], [1, 3, 5, 7])
