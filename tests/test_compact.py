"""Compact export (fileio.compact): bitwise round trip, size at 90 % sparsity, errors."""
from __future__ import annotations

import os

import pytest
import torch

from fileio import CheckpointError
from models import MultiTaskNet
from fileio.compact import FORMAT, load_compact, save_compact
from prune_utils.mask_builder import global_topk
from prune_utils.masks import prunable_parameters


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so that -0.0 and +0.0 (or NaN payloads) compare as different."""
    return t.contiguous().view(torch.uint8) if t.is_floating_point() else t


def pruned_net(width=0.0625, sparsity=0.9, multiply=False, seed=0):
    torch.manual_seed(seed)
    net = MultiTaskNet({"seg": 5, "sn": 3}, width_mult=width)
    params = prunable_parameters(net)
    masks = global_topk({n: torch.rand(w.shape) for n, w in params.items()}, sparsity)
    with torch.no_grad():
        for n, w in params.items():
            if multiply:
                w.mul_(masks[n].float())            # leaves -0.0 behind negative weights
            else:
                w.masked_fill_(~masks[n], 0.0)      # +0.0 everywhere
    net.heads["seg"].branches[0].conv1.bias.data[0] = -0.0  # a dense tensor with a negative zero, kept as is
    return net, masks


@pytest.mark.parametrize("multiply", [False, True])
def test_round_trip_is_bitwise_exact(tmp_path, multiply):
    net, masks = pruned_net(multiply=multiply)
    state = net.state_dict()
    if multiply:
        assert any(bool(torch.signbit(state[n][~m]).any()) for n, m in masks.items())
    meta = {"tasks": ["seg", "sn"], "num_classes": [5, 3], "method": "disparse_static", "sparsity": 0.9,
            "config": {"model": {"width_mult": 0.0625}}}
    path = tmp_path / "net.compact.pth"
    save_compact(path, state, masks, meta)
    raw = torch.load(path, weights_only=True)                     # plain types only
    assert raw["format"] == FORMAT and raw["version"] == 1
    restored, restored_masks, restored_meta = load_compact(path)
    assert list(restored) == list(state)
    for key, value in state.items():
        assert restored[key].dtype == value.dtype and restored[key].shape == value.shape, key
        assert torch.equal(bits(restored[key]), bits(value)), key
    assert set(restored_masks) == set(masks)
    assert all(torch.equal(restored_masks[n], masks[n]) for n in masks)
    assert restored_meta == meta
    fresh = MultiTaskNet({"seg": 5, "sn": 3}, width_mult=0.0625)
    fresh.load_state_dict(restored)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]       # atomic write left nothing behind


@pytest.mark.parametrize("multiply", [False, True])
def test_size_at_90_percent_is_under_15_percent_of_dense(tmp_path, multiply):
    net, masks = pruned_net(width=0.125, multiply=multiply)
    state = net.state_dict()
    torch.save(state, tmp_path / "dense.pth")
    save_compact(tmp_path / "compact.pth", state, masks, {"tasks": ["seg", "sn"]})
    ratio = os.path.getsize(tmp_path / "compact.pth") / os.path.getsize(tmp_path / "dense.pth")
    assert ratio <= 0.15, ratio


def test_fp16_values_are_close_and_come_back_as_fp32(tmp_path):
    net, masks = pruned_net()
    state = net.state_dict()
    save_compact(tmp_path / "half.pth", state, masks, values_dtype=torch.float16)
    restored, restored_masks, _ = load_compact(tmp_path / "half.pth")
    for n in masks:
        assert restored[n].dtype == torch.float32
        assert torch.allclose(restored[n], state[n], rtol=1e-3, atol=1e-6)
        assert torch.equal(restored[n] != 0, (state[n] != 0) & masks[n]) or torch.equal(restored_masks[n], masks[n])


def test_nonzero_pruned_values_are_refused_or_dropped(tmp_path):
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 5, "sn": 3}, width_mult=0.0625)
    params = prunable_parameters(net)
    masks = global_topk({n: w.detach().abs() for n, w in params.items()}, 0.5)
    with pytest.raises(ValueError, match="non-zero values at pruned positions"):
        save_compact(tmp_path / "x.pth", net.state_dict(), masks)
    assert not (tmp_path / "x.pth").exists()
    save_compact(tmp_path / "x.pth", net.state_dict(), masks, drop_pruned_values=True)
    restored, _, _ = load_compact(tmp_path / "x.pth")
    for n, m in masks.items():
        assert torch.equal(restored[n], torch.where(m, params[n].detach(), torch.zeros(())))


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_compact(tmp_path / "missing.pth")
    torch.save({"format": "disparse-checkpoint", "version": 1}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="not a disparse-compact file"):
        load_compact(tmp_path / "ckpt.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError):
        load_compact(tmp_path / "junk.pth")
    net, masks = pruned_net()
    bad = dict(masks)
    bad["backbone.conv1.weight"] = bad["backbone.conv1.weight"].reshape(-1)
    with pytest.raises(ValueError, match="shape"):
        save_compact(tmp_path / "y.pth", net.state_dict(), bad)
