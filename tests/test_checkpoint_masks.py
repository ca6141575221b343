"""Masks inside our checkpoints: bit-packed since format version 2, version-1 files (bool masks) still read,
every tool reads both, the original-format export does not care which one a net came from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import eval_pruned_net
import iou_analysis
import launch_training
from fileio import CheckpointError, VERSION, atomic_save, load_checkpoint, make_checkpoint, read_file, read_weights
from fileio.bits import pack_mask, unpack_mask
from fileio.original import export_original_state_dict
from methods.pipeline import load_net
from models import MultiTaskNet, build_model
from prune_utils.masks import apply_masks, prunable_parameters, sparsity
from tests.helpers import tiny_run_args


def test_packed_bits_by_hand():
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    entry = pack_mask(mask)
    assert entry["shape"] == [9]
    assert entry["bits"].dtype == torch.uint8 and entry["bits"].tolist() == [0b10110000, 0b10000000]
    assert torch.equal(unpack_mask(entry), mask)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5, 7), (64, 3, 7, 7), (2, 0, 3)])
@pytest.mark.parametrize("fill", ["random", "all_true", "all_false"])
def test_pack_round_trip_odd_sizes_and_constant_masks(shape, fill):
    g = torch.Generator().manual_seed(sum(shape))
    mask = {"random": torch.rand(shape, generator=g) < 0.3, "all_true": torch.ones(shape, dtype=torch.bool),
            "all_false": torch.zeros(shape, dtype=torch.bool)}[fill]
    entry = pack_mask(mask)
    numel = int(np.prod(shape))
    assert entry["bits"].numel() == (numel + 7) // 8
    back = unpack_mask(entry)
    assert back.dtype == torch.bool and back.shape == mask.shape and torch.equal(back, mask)


def test_malformed_packed_mask_is_one_line_error(tmp_path):
    net, masks, config = _pruned_net()
    ckpt = make_checkpoint(net.state_dict(), config, "snip", masks=masks, sparsity=sparsity(masks))
    name = next(iter(ckpt["masks"]))
    ckpt["masks"][name]["bits"] = ckpt["masks"][name]["bits"][:-1]            # one byte short
    atomic_save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"mask .* is malformed .*needs \d+ uint8 bytes"):
        load_checkpoint(tmp_path / "bad.pth")


def _pruned_net(seed=0):
    torch.manual_seed(seed)
    net = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
    masks = {n: torch.rand(w.shape) < 0.3 for n, w in prunable_parameters(net).items()}
    masks["backbone.conv1.weight"][:] = True                                   # an all-kept layer
    masks[list(masks)[-1]][:] = False                                         # an all-pruned layer
    apply_masks(net, masks)
    config = {"tasks": ["seg", "sn"], "num_classes": [4, 3], "model": {"width_mult": 0.0625}}
    return net, masks, config


def old_layout(ckpt: dict) -> dict:
    """The same checkpoint as version 1 wrote it: one bool tensor per mask."""
    return {**ckpt, "version": 1, "masks": {n: unpack_mask(e) for n, e in ckpt["masks"].items()}}


def test_checkpoint_stores_bits_and_reads_back_identical_masks(tmp_path):
    net, masks, config = _pruned_net()
    atomic_save(make_checkpoint(net.state_dict(), config, "snip", masks=masks, sparsity=sparsity(masks)),
                tmp_path / "new.pth")
    raw = torch.load(tmp_path / "new.pth", weights_only=True)                  # still plain data
    assert raw["version"] == VERSION == 2
    for name, mask in masks.items():
        entry = raw["masks"][name]
        assert entry["shape"] == list(mask.shape) and entry["bits"].dtype == torch.uint8
        assert entry["bits"].numel() == (mask.numel() + 7) // 8
    loaded = load_checkpoint(tmp_path / "new.pth", ["seg", "sn"], [4, 3])
    assert loaded["masks"].keys() == masks.keys()
    assert all(loaded["masks"][n].dtype == torch.bool and torch.equal(loaded["masks"][n], masks[n]) for n in masks)
    weights = read_weights(tmp_path / "new.pth", ["seg", "sn"])
    assert all(torch.equal(weights.masks[n], masks[n]) for n in masks)


def test_old_layout_files_still_load_to_identical_masks(tmp_path):
    net, masks, config = _pruned_net()
    ckpt = make_checkpoint(net.state_dict(), config, "snip", masks=masks, sparsity=sparsity(masks))
    atomic_save(old_layout(ckpt), tmp_path / "old.pth")
    assert read_file(tmp_path / "old.pth")["masks"]["backbone.conv1.weight"].dtype == torch.bool   # really v1
    for masks_read in (load_checkpoint(tmp_path / "old.pth")["masks"], read_weights(tmp_path / "old.pth",
                                                                                      ["seg", "sn"]).masks):
        assert masks_read.keys() == masks.keys()
        assert all(torch.equal(masks_read[n], masks[n]) for n in masks)
    fresh = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
    loaded, achieved = load_net(tmp_path / "old.pth", fresh, config)
    assert achieved == pytest.approx(sparsity(masks))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())


def test_original_export_is_the_same_from_either_layout(tmp_path):
    net, masks, config = _pruned_net()
    ckpt = make_checkpoint(net.state_dict(), config, "snip", masks=masks, sparsity=sparsity(masks))
    atomic_save(ckpt, tmp_path / "new.pth")
    atomic_save(old_layout(ckpt), tmp_path / "old.pth")
    exports = []
    for name in ("new.pth", "old.pth"):
        weights = read_weights(tmp_path / name, ["seg", "sn"])
        exports.append(export_original_state_dict(weights.state, ["seg", "sn"], weights.masks))
    reference = export_original_state_dict(net.state_dict(), ["seg", "sn"], masks)    # from the net in memory
    for exported in exports:
        assert exported.keys() == reference.keys()
        assert all(torch.equal(exported[k], reference[k]) and exported[k].dtype == reference[k].dtype
                   for k in reference)
    assert reference["backbone.conv1.weight_mask"].dtype == torch.int32


def test_every_tool_reads_new_and_old_files_alike(synthetic_root, tmp_path):
    """create_pruned_net.py writes the new layout; eval, IoU --from and training --from read it and its
    version-1 twin to the same results."""
    import create_pruned_net
    common = tiny_run_args(synthetic_root, tmp_path)
    create_pruned_net.main(common + ["--method", "snip", "--ratio", "70", "--num_batches", "1"])
    new = tmp_path / "synthetic_snip_70.pth"
    assert read_file(new)["version"] == 2
    old = tmp_path / "old" / "synthetic_snip_70.pth"
    old.parent.mkdir()
    atomic_save(old_layout(read_file(new)), old)

    metrics = {}
    for tag, path in (("new", new), ("old", old)):
        dest = tmp_path / f"eval_{tag}"
        eval_pruned_net.main(tiny_run_args(synthetic_root, dest) + ["--checkpoint", str(path)])
        found = json.loads(next(dest.glob("metrics_*.json")).read_text())
        metrics[tag] = {k: v for k, v in found.items() if k not in ("checkpoint", "cost")}   # path, timings
    assert metrics["new"] == metrics["old"] and metrics["new"]["sparsity"] == pytest.approx(0.7, abs=5e-4)
    assert {"seg", "sn", "depth"} <= metrics["new"].keys()

    records = {}
    for tag, path in (("new", new), ("old", old)):
        dest = tmp_path / f"iou_{tag}"
        dest.mkdir()
        args = [a for a in tiny_run_args(synthetic_root, dest) if a not in ("--progress", "off")]
        iou_analysis.main(args + ["--from", str(path), "--num_batches", "1", "--no-plot", "--no-progress"])
        records[tag] = json.loads((dest / "synthetic_iou.json").read_text())
    records["old"]["source"] = records["new"]["source"]
    assert records["new"] == records["old"]

    masks = {}
    for tag, path in (("new", new), ("old", old)):
        dest = tmp_path / f"train_{tag}"
        launch_training.main(tiny_run_args(synthetic_root, dest) + ["--method", "snip", "--ratio", "70", "--from",
                                                                    str(path), "--max-iters", "2"])
        final = load_checkpoint(dest / "final_synthetic_snip_70.pth")
        assert final["version"] == 2
        masks[tag] = final["masks"]
    assert all(torch.equal(masks["new"][n], masks["old"][n]) for n in masks["new"])
    assert all(torch.equal(masks["new"][n], v) for n, v in load_checkpoint(new)["masks"].items())
