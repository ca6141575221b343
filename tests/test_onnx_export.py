"""ONNX export (models/onnx_export.py): one `img` input, one output per task named by the task, dynamic batch
and image size, and onnxruntime's outputs within 1e-4 of PyTorch's for dense, channel-pruned and extracted nets."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from models import MultiTaskNet
from models.onnx_export import check_onnx, export_onnx, onnx_session
from prune_utils.channel_pruning import extract_tasks, prune_channels


@pytest.fixture(scope="module")
def dense() -> MultiTaskNet:
    """Outputs of order 1-10 (the N(0, 0.01) init makes them vanish, He init alone makes them explode):
    He-initialised convs, BatchNorm affine off identity, running statistics measured on random images."""
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 5, "sn": 3}, width_mult=0.0625)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.momentum = None           # running statistics = the average over the batches below
        net.train()
        for module in net.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        for _ in range(3):
            net(torch.randn(4, 3, 65, 65))
    return net.train()


def _inputs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, 65, 65, generator=gen), torch.randn(2, 3, 41, 97, generator=gen)]


def _nets(dense):
    pruned = prune_channels(dense, None, method="uniform", macs_removed=0.5, input_size=(65, 65))
    return {"dense": dense, "pruned": pruned.model, "extracted": extract_tasks(pruned.model, ["sn"]).model}


def test_onnx_outputs_match_pytorch(dense):
    for label, net in _nets(dense).items():
        data = export_onnx(net, input_size=(65, 65))
        graph = onnx.load_from_string(data).graph
        assert [i.name for i in graph.input] == ["img"]
        assert [o.name for o in graph.output] == list(net.tasks)
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["N", 3, "H", "W"]
        worst = check_onnx(net, data, _inputs(), atol=1e-4)
        assert set(worst) == set(net.tasks) and max(worst.values()) <= 1e-4, label
        assert net.training                       # export and check leave the mode as it was
        outputs = onnx_session(data).run(None, {"img": _inputs()[1].numpy()})
        assert outputs[0].shape == (2, net.tasks[next(iter(net.tasks))], 6, 13)


def test_check_onnx_catches_a_mismatch(dense):
    data = export_onnx(dense, input_size=(33, 33))
    other = MultiTaskNet({"seg": 5, "sn": 3}, width_mult=0.0625)
    with pytest.raises(ValueError, match="differ from PyTorch"):
        check_onnx(other, data, _inputs()[:1], atol=1e-4)
    renamed = MultiTaskNet({"depth": 5, "sn": 3}, width_mult=0.0625)
    with pytest.raises(ValueError, match="outputs"):
        check_onnx(renamed, data, _inputs()[:1])
