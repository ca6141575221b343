"""Distributed set-up for `torchrun`: process group, device per rank, DDP wrapping, rank-0 helpers.

`python launch_training.py ...` (no torchrun) runs as a single process with no process group; the
same code path then runs under `torchrun --nproc_per_node=N launch_training.py ...`, which sets the
`RANK`, `WORLD_SIZE` and `LOCAL_RANK` environment variables read here. The backend is gloo on CPU and
nccl on CUDA (one GPU per process, chosen by `LOCAL_RANK`).

Rules the rest of the engine follows:

* only rank 0 (`ctx.is_main`) writes files, logs and progress bars;
* metrics and validation losses are summed across ranks (`all_reduce_sum`), so every rank ends with
  the same numbers;
* evaluation shards the test set with `shard_loader` (rank r gets items r, r+W, r+2W, ...) instead of
  a `DistributedSampler`, which would pad the set with duplicates and bias the metrics;
* a collective waits at most `dist.timeout_s` seconds (config; default `DEFAULT_TIMEOUT_S` per backend:
  a few minutes on gloo, longer on nccl, whose first collectives may compile), so a hung rank does not
  hold the others for torch's 30 minutes.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from .runtime import select_device

DEFAULT_TIMEOUT_S = {"gloo": 300.0, "nccl": 600.0}


@dataclass
class DistContext:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun's environment states them; (0, 1) without torchrun. Valid before and
    after the process group exists (the tools' pre-flight checks and error reports run outside it)."""
    return _env_int("RANK", 0), max(1, _env_int("WORLD_SIZE", 1))


def timeout_setting(config: Mapping[str, Any]) -> float | None:
    """The config's `dist.timeout_s` (None: the backend's default)."""
    value = (config.get("dist") or {}).get("timeout_s")
    return None if value is None else float(value)


def setup_distributed(device_choice: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Read the torchrun environment, pick this rank's device and start the process group if W > 1.

    Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) nothing is initialised and the context says
    rank 0 of 1 on `select_device(device_choice)`. `timeout_s`: how long a collective waits for the other
    ranks (None: `DEFAULT_TIMEOUT_S` of the backend).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = select_device(device_choice)
    if world <= 1:
        return DistContext(0, 1, 0, device, None)
    if device.type == "cuda":
        n_gpu = torch.cuda.device_count()
        if local_rank >= n_gpu:
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU (this machine has {n_gpu}); "
                             f"use --nproc_per_node <= {n_gpu} or --device cpu")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if timeout_s is None:
        timeout_s = DEFAULT_TIMEOUT_S[backend]
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=float(timeout_s)))
    return DistContext(rank, world, local_rank, device, backend)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op in a single process); returns it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list in a single process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around `model` when distributed (parameters are broadcast from rank 0), else `model` itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    if ctx.device.type == "cuda":
        return DDP(model, device_ids=[ctx.device.index], output_device=ctx.device.index)
    return DDP(model)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def shard_loader(loader: DataLoader, rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """The part of an (unshuffled) evaluation loader that this rank scores: items rank, rank+W, ...

    Exact: no item is repeated or dropped across ranks (a DistributedSampler pads with duplicates).
    Keeps the loader's batch size, collate function, workers and pinning.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size <= 1:
        return loader
    indices = list(range(rank, len(loader.dataset), world_size))
    kwargs: dict[str, Any] = dict(batch_size=loader.batch_size or 1, shuffle=False,
                                  num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                                  pin_memory=loader.pin_memory, drop_last=False,
                                  worker_init_fn=loader.worker_init_fn)
    if loader.num_workers > 0:
        kwargs["persistent_workers"] = False
    return DataLoader(Subset(loader.dataset, indices), **kwargs)


def cleanup() -> None:
    """Tear the process group down (safe to call twice or without one)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # a peer already gone: still destroy our side
            pass
        dist.destroy_process_group()

