"""fileio: atomic writes keep the old file on failure, JSON is standard (NaN refused or null), and one loader
reads every weight-file kind (ours, compact, original) with the same result."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fileio import (CheckpointError, atomic_save, atomic_write, atomic_write_json, load_weights, make_checkpoint,
                    read_json, read_weights)
from fileio.compact import save_compact
from fileio.original import export_original_state_dict
from models import MultiTaskNet
from prune_utils.masks import apply_masks, prunable_parameters


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_json_nonfinite_is_an_error_naming_the_key_or_null(tmp_path):
    path = tmp_path / "m.json"
    metrics = {"seg": {"mIoU": 0.25, "err": math.nan}, "sparsity": 0.9, "list": [1.0, math.inf]}
    with pytest.raises(ValueError, match=r"seg\.err"):
        atomic_write_json(path, metrics)
    assert not path.exists()                                        # nothing written
    atomic_write_json(path, metrics, nonfinite="null")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"seg": {"mIoU": 0.25, "err": None}, "sparsity": 0.9, "list": [1.0, None]}
    with pytest.raises(ValueError, match="nonfinite"):
        atomic_write_json(path, metrics, nonfinite="nan")


def test_read_json_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="table file not found"):
        read_json(tmp_path / "absent.json", "table file")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="table file .* is not valid JSON"):
        read_json(bad, "table file")
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_json(listing, "metrics file", dict)


def _pruned_net():
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
    masks = {n: torch.rand(w.shape) < 0.3 for n, w in prunable_parameters(net).items()}
    apply_masks(net, masks)
    return net, masks


def test_one_loader_reads_every_kind_to_the_same_weights(tmp_path):
    net, masks = _pruned_net()
    config = {"tasks": ["seg", "sn"], "num_classes": [4, 3], "model": {"width_mult": 0.0625}}
    state = net.state_dict()
    atomic_save(make_checkpoint(state, config, "snip", masks=masks, sparsity=0.7), tmp_path / "ours.pth")
    save_compact(tmp_path / "net.compact.pth", state, masks,
                 meta={"tasks": ["seg", "sn"], "num_classes": [4, 3], "method": "snip"})
    torch.save(export_original_state_dict(state, ["seg", "sn"], masks), tmp_path / "original.pth")
    for file, kind in (("ours.pth", "ours"), ("net.compact.pth", "compact"), ("original.pth", "original")):
        fresh = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
        loaded = load_weights(tmp_path / file, fresh, config)
        assert loaded.kind == kind
        assert all(torch.equal(loaded.masks[n], masks[n]) for n in masks)
        assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in state), kind
    with pytest.raises(CheckpointError, match="is for tasks"):
        read_weights(tmp_path / "net.compact.pth", ["seg", "sn", "depth"])
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_weights(tmp_path / "junk.pth", ["seg", "sn"])
