"""ONNX export of a multitask net, checked against PyTorch with onnxruntime (docs/CHANNELS.md).

The graph has one input `img` (N x 3 x H x W; N, H and W dynamic) and one output per task, named by the
task, in the model's task order. Any of our nets exports the same way: dense, channel-pruned (a dense net
with other widths) or extracted for a subset of tasks. The export is returned as bytes (write them with
the project's atomic writer; `onnxruntime.InferenceSession` also takes them directly).

The legacy TorchScript exporter (`dynamo=False`) is used: the torch.export-based one needs the
`onnxscript` package, which the project does not pin; this net has no data-dependent control flow, which
is what the newer exporter adds.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .modes import eval_mode

DEFAULT_OPSET = 17
INPUT_NAME = "img"


class _TupleOutputs(nn.Module):
    """The net with its dict of task outputs as a tuple in task order (ONNX outputs are positional)."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.tasks = list(tasks)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(img)
        return tuple(out[task] for task in self.tasks)


def _tasks_of(model: nn.Module) -> list[str]:
    tasks = list(getattr(model, "tasks", {}))
    if not tasks:
        raise ValueError("ONNX export needs a multitask net with a `tasks` mapping (task -> output channels)")
    if INPUT_NAME in tasks:
        raise ValueError(f"a task named {INPUT_NAME!r} would clash with the input name")
    return tasks


def export_onnx(model: nn.Module, input_size: tuple[int, int] = (321, 321), batch: int = 1,
                opset: int = DEFAULT_OPSET, dynamic: bool = True) -> bytes:
    """The ONNX model of `model` in eval mode (its own mode is restored). `input_size`/`batch` only shape the
    tracing input; with `dynamic` the batch, height and width of `img` (and of every output) are symbolic."""
    model = getattr(model, "module", model)
    tasks = _tasks_of(model)
    param = next(model.parameters())
    example = torch.zeros(batch, 3, *input_size, device=param.device, dtype=param.dtype)
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}, **{t: {0: "N", 2: "h", 3: "w"} for t in tasks}}
    buffer = io.BytesIO()
    with eval_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)   # the legacy exporter's own notices
        torch.onnx.export(_TupleOutputs(model, tasks).eval(), (example,), buffer, dynamo=False,
                          input_names=[INPUT_NAME], output_names=tasks, dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True)
    return buffer.getvalue()


def onnx_session(onnx_model: bytes | str | os.PathLike, threads: int | None = None, spin: bool = True):
    """An onnxruntime CPU session for an exported model (bytes or a file path); `threads` intra-op threads.

    `spin=False` lets idle worker threads sleep instead of spin-waiting: slower on a dedicated machine, fairer
    on one shared with other jobs (the benchmarks' OMP_WAIT_POLICY=PASSIVE for PyTorch does the same)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = onnx_model if isinstance(onnx_model, bytes) else os.fspath(onnx_model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, onnx_model: bytes | str | os.PathLike, inputs: Sequence[torch.Tensor],
               atol: float = 1e-4, scales: dict[str, float] | None = None) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| per task over `inputs` (the model in eval mode); raises ValueError
    when the graph's names differ from the model's tasks or a difference exceeds `atol`. `scales`, when
    given, receives the largest |PyTorch output| per task (what the differences are small against)."""
    model = getattr(model, "module", model)
    tasks = _tasks_of(model)
    session = onnx_session(onnx_model)
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != [INPUT_NAME] or names_out != tasks:
        raise ValueError(f"ONNX graph has inputs {names_in} and outputs {names_out}, expected [{INPUT_NAME!r}] and "
                         f"{tasks}")
    worst: dict[str, float] = {t: 0.0 for t in tasks}
    largest: dict[str, float] = {t: 0.0 for t in tasks}
    for img in inputs:
        with eval_mode(model), torch.no_grad():
            expected: Mapping[str, torch.Tensor] = model(img)
        got = session.run(None, {INPUT_NAME: img.detach().cpu().float().numpy()})
        for task, value in zip(tasks, got):
            reference = expected[task].detach().cpu().float().numpy()
            if value.shape != reference.shape:
                raise ValueError(f"ONNX output {task!r} has shape {value.shape}, PyTorch gives {reference.shape}")
            worst[task] = max(worst[task], float(np.abs(value - reference).max()))
            largest[task] = max(largest[task], float(np.abs(reference).max()))
    if scales is not None:
        scales.update(largest)
    bad = {t: d for t, d in worst.items() if d > atol}
    if bad:
        raise ValueError(f"ONNX outputs differ from PyTorch by more than {atol}: {bad}")
    return worst
