"""Measured inference latency of a net: batch-1 forward passes timed by the wall clock.

What a channel-pruned net is for is speed, so the tools report it next to the metrics. The net runs in
eval mode under `torch.inference_mode()` on a zero image of the given size; warm-up passes (allocation,
oneDNN primitive creation) are not counted; the median of the timed passes is the figure, the minimum
beside it. On a machine shared with other jobs single numbers are noisy: compare nets measured in the same
session, or use `bench/bench_latency.py`, which interleaves them round by round.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from torch import nn

from models.modes import eval_mode


def measure_latency(model: nn.Module, input_size: Sequence[int], runs: int = 5, warmup: int = 1,
                    channels: int = 3) -> dict[str, Any]:
    """{"median_ms", "min_ms", "runs", "threads", "input_size", "device"} of `runs` batch-1 forward passes."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"latency needs at least one timed run and no negative warm-up, got {runs} and {warmup}")
    param = next(model.parameters())
    image = torch.zeros(1, channels, *input_size, device=param.device, dtype=param.dtype)
    cuda = param.device.type == "cuda"
    times = []
    with eval_mode(model), torch.inference_mode():
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize(param.device)
            start = time.perf_counter()
            model(image)
            if cuda:
                torch.cuda.synchronize(param.device)
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs,
            "threads": torch.get_num_threads(), "input_size": [int(s) for s in input_size],
            "device": str(param.device)}
