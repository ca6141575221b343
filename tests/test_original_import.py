"""Original-format state dicts (dense, pruned, DataParallel-prefixed) import and give the same outputs."""
from __future__ import annotations

import pytest
import torch

from fileio import CheckpointError
from fileio.original import export_original_state_dict, import_original_state_dict, looks_original
from models import MultiTaskNet

TASKS = {"seg": 5, "sn": 3}


def _original_naming(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Written independently of the importer: our head keys -> `task<k>_fc1_c<j>.…`."""
    order = list(TASKS)
    out = {}
    for key, value in state.items():
        if key.startswith("heads."):
            parts = key.split(".")  # heads, task, branches, j, conv, param
            key = f"task{order.index(parts[1]) + 1}_fc1_c{parts[3]}.{parts[4]}.{parts[5]}"
        out[key] = value.clone()
    return out


def _random_net(seed: int) -> MultiTaskNet:
    torch.manual_seed(seed)
    net = MultiTaskNet(TASKS, width_mult=0.0625)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


def _outputs(net: MultiTaskNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net(x)


def test_dense_original_state_dict_gives_same_outputs():
    source = _random_net(0)
    original = _original_naming(source.state_dict())
    assert looks_original(original)
    target = MultiTaskNet(TASKS, width_mult=0.0625).eval()
    state, masks = import_original_state_dict(original, list(TASKS), target.state_dict().keys())
    assert masks is None
    target.load_state_dict(state)
    x = torch.randn(2, 3, 40, 40)
    ref, out = _outputs(source, x), _outputs(target, x)
    for task in TASKS:
        assert torch.equal(ref[task], out[task])


@pytest.mark.parametrize("mask_dtype", [torch.int32, torch.float32])
def test_pruned_original_state_dict_with_module_prefix(mask_dtype):
    source = _random_net(1)
    torch.manual_seed(2)
    original, expected_masks = {}, {}
    for key, value in _original_naming(source.state_dict()).items():
        if key.endswith(".weight") and value.dim() == 4:
            mask = torch.rand_like(value) > 0.7
            base = key[: -len(".weight")]
            original[f"module.{base}.weight_orig"] = value  # stale values stay at pruned positions
            original[f"module.{base}.weight_mask"] = mask.to(mask_dtype)
            expected_masks[key] = mask
        else:
            original[f"module.{key}"] = value
    # The same net with the masks applied by hand: the reference outputs.
    with torch.no_grad():
        for name, p in source.named_parameters():
            orig_name = _original_naming({name: p})
            (oname,) = orig_name
            if oname in expected_masks:
                p.mul_(expected_masks[oname])
    target = MultiTaskNet(TASKS, width_mult=0.0625).eval()
    state, masks = import_original_state_dict(original, list(TASKS), target.state_dict().keys())
    target.load_state_dict(state)
    assert masks is not None and len(masks) == 60  # every conv of the 2-task net
    assert all(m.dtype == torch.bool for m in masks.values())
    assert torch.equal(masks["heads.sn.branches.2.conv1.weight"], expected_masks["task2_fc1_c2.conv1.weight"])
    assert (state["backbone.conv1.weight"][~masks["backbone.conv1.weight"]] == 0).all()
    x = torch.randn(1, 3, 40, 40)
    ref, out = _outputs(source, x), _outputs(target, x)
    for task in TASKS:
        assert torch.allclose(ref[task], out[task], atol=1e-6)


def test_export_then_import_round_trips():
    net = _random_net(3)
    masks = {k: torch.rand_like(v) > 0.5 for k, v in net.state_dict().items() if k.endswith("weight") and v.dim() == 4}
    state = {k: (v * masks[k] if k in masks else v) for k, v in net.state_dict().items()}
    exported = export_original_state_dict(state, list(TASKS), masks)
    assert "task1_fc1_c0.conv1.weight_orig" in exported and exported["task1_fc1_c0.conv1.weight_mask"].dtype == torch.int32
    back, back_masks = import_original_state_dict(exported, list(TASKS), net.state_dict().keys())
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert all(torch.equal(back_masks[k], masks[k]) for k in masks)


def test_unknown_and_missing_keys_are_listed():
    net = _random_net(4)
    original = _original_naming(net.state_dict())
    original["backbone.extra.weight"] = torch.zeros(1)
    del original["task2_fc1_c3.conv3.bias"]
    with pytest.raises(CheckpointError, match=r"unknown keys backbone\.extra\.weight.*missing keys heads\.sn\.branches\.3\.conv3\.bias"):
        import_original_state_dict(original, list(TASKS), net.state_dict().keys())


def test_task_index_beyond_config_is_refused():
    original = {"task3_fc1_c0.conv1.weight": torch.zeros(2, 2, 3, 3)}
    with pytest.raises(CheckpointError, match="task3.*2 task"):
        import_original_state_dict(original, list(TASKS))
