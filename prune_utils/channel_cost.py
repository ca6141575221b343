"""MACs and parameter counts of a net as a function of its channel-group widths, without building it.

Measured once on the full net (a forward on the meta device records each layer's output size), then
exact arithmetic for any widths: a conv costs out_positions · kh · kw · c_in · c_out / groups
multiply-accumulates, where c_in and c_out are the widths of the groups that own its input and output
channels (or its fixed widths). Conventions (docs/CHANNELS.md):

* MACs: Conv2d and Linear multiply-accumulates for one image of `input_size`; BatchNorm, ReLU, additions
  and pooling are not counted (they are a few per output element).
* Parameters: every `nn.Parameter` (conv and linear weights and biases, BatchNorm affine weights);
  BatchNorm running statistics are buffers and not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from models.modes import eval_mode

from .channel_groups import IN, NORM, NORMS, OUT, WEIGHTED, ChannelGroups
from .masks import unwrap


@dataclass(frozen=True)
class _Layer:
    name: str
    positions: int               # output positions per image (0: the layer does not run)
    kernel: int                  # kernel area (1 for Linear)
    conv_groups: int
    in_width: int
    out_width: int
    in_group: str | None
    out_group: str | None
    bias: bool


def _output_positions(model: nn.Module, input_size: tuple[int, int], in_channels: int) -> dict[str, int]:
    """Output positions per image (numel / channels) of every Conv2d and Linear, from a meta-device forward."""
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHTED):
            channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

            def record(_module, _inputs, output, name=name, channels=channels):
                positions[name] = positions.get(name, 0) + output.numel() // channels
            hooks.append(module.register_forward_hook(record))
    state = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with eval_mode(model), torch.no_grad():
            torch.func.functional_call(model, state, (torch.empty(1, in_channels, *input_size, device="meta"),))
    finally:
        for hook in hooks:
            hook.remove()
    return positions


class ChannelCost:
    """MACs and parameters of `model` with its channel groups at any widths (see the module docstring)."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, input_size: tuple[int, int] = (321, 321),
                 in_channels: int = 3) -> None:
        model = unwrap(model)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if min(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        role: dict[tuple[str, str], str] = {}
        for group in groups:
            for member in group.members:
                role[(member.layer, member.kind)] = group.name
        positions = _output_positions(model, self.input_size, in_channels)
        self.layers: list[_Layer] = []
        self.norms: list[tuple[int, str | None]] = []     # (fixed channels, group) per affine BatchNorm
        self.fixed_params = 0
        for name, module in model.named_modules():
            if isinstance(module, WEIGHTED):
                conv = isinstance(module, nn.Conv2d)
                self.layers.append(_Layer(
                    name, positions.get(name, 0), module.weight[0, 0].numel() if conv else 1,
                    module.groups if conv else 1, module.in_channels if conv else module.in_features,
                    module.out_channels if conv else module.out_features,
                    role.get((name, IN)), role.get((name, OUT)), module.bias is not None))
            elif isinstance(module, NORMS):
                if module.affine:
                    self.norms.append((module.num_features, role.get((name, NORM))))
            else:
                self.fixed_params += sum(p.numel() for p in module.parameters(recurse=False))
        self.dense = {g.name: g.size for g in groups}
        self.dense_macs = self.macs(self.dense)
        self.dense_params = self.params(self.dense)

    @staticmethod
    def _weight_numel(layer: _Layer, widths: Mapping[str, int]) -> tuple[int, int]:
        """(weight elements, output channels) of a layer with its groups at `widths`."""
        c_in = widths[layer.in_group] if layer.in_group is not None else layer.in_width
        c_out = widths[layer.out_group] if layer.out_group is not None else layer.out_width
        return layer.kernel * c_in * c_out // layer.conv_groups, c_out

    def macs(self, widths: Mapping[str, int]) -> int:
        """Multiply-accumulates per image with the groups at `widths` (group name -> kept channels)."""
        return sum(layer.positions * self._weight_numel(layer, widths)[0] for layer in self.layers)

    def params(self, widths: Mapping[str, int]) -> int:
        """Parameter count with the groups at `widths`."""
        total = self.fixed_params
        for layer in self.layers:
            weights, c_out = self._weight_numel(layer, widths)
            total += weights + (c_out if layer.bias else 0)
        for channels, group in self.norms:
            total += 2 * (widths[group] if group is not None else channels)
        return total

    def removed(self, widths: Mapping[str, int]) -> dict[str, float]:
        """Fractions of the dense MACs and parameters that `widths` removes."""
        return {"macs": 1.0 - self.macs(widths) / self.dense_macs,
                "params": 1.0 - self.params(widths) / self.dense_params}
