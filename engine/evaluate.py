"""Evaluation on a split: the paper's metrics (`evaluate`) and the weighted multi-task loss (`test_loss`).

Both run the model in eval mode under `no_grad`, put its train/eval mode back afterwards, and leave
every global RNG (Python, NumPy, torch) exactly as they found it, so how often a run validates never
changes its training trajectory. Under DDP each rank scores its own shard of the set (`shard_loader`:
exact, no duplicated items) and the sums are all-reduced, so every rank returns the same numbers.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .distributed import all_reduce_sum, is_dist, shard_loader
from .runtime import rng_state, set_rng_state

try:  # progress bars are optional for library use
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without disturbing the Python, NumPy and torch (CPU/CUDA) random streams."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def move_batch(batch: Mapping[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Tensors of a batch onto `device` (the image in channels-last memory format when asked)."""
    out: dict[str, Any] = {}
    non_blocking = device.type == "cuda"
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=non_blocking)
            if key == "img" and channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """fp32: nothing; bf16: bfloat16 autocast (CPU or CUDA); amp: float16 autocast (CUDA only)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "amp":
        if device.type != "cuda":
            raise ValueError("train.precision 'amp' (float16 + GradScaler) needs a CUDA device; use 'bf16' on CPU")
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    raise ValueError(f"unknown precision {precision!r} (expected fp32, bf16 or amp)")


def _float_preds(preds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in preds.items()}


def _batch_size(batch: Mapping[str, Any]) -> int:
    return int(batch["img"].shape[0])


def _for_this_rank(loader: DataLoader) -> DataLoader:
    """Under DDP, shard a plain loader; a loader already using a DistributedSampler is left alone."""
    if is_dist() and not isinstance(loader.sampler, DistributedSampler):
        return shard_loader(loader)
    return loader


def _progress(loader: DataLoader, desc: str, enabled: bool):
    if tqdm is None or not enabled:
        return loader
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


class _Mode:
    """Put a model in eval mode for a block, then restore its previous mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)


@torch.no_grad()
def test_loss(model: nn.Module, loader: DataLoader, loss_fn: Callable, device: torch.device,
              precision: str = "fp32", channels_last: bool = False, progress: bool = False) -> dict[str, Any]:
    """Weighted multi-task loss over a whole split, batch-size-weighted, summed across ranks.

    Returns `{"loss": float, "losses": {task: float}, "count": n_images}`. This is what training uses
    to select `best_` checkpoints (the original did it on the test split: docs/ORIGINAL.md §7.1).
    """
    loader = _for_this_rank(loader)
    total = None
    names: list[str] | None = None
    with preserved_rng(), _Mode(model):
        for batch in _progress(loader, "val", progress):
            batch = move_batch(batch, device, channels_last)
            with autocast(device, precision):
                preds = model(batch["img"])
            loss, parts = loss_fn(_float_preds(preds), batch)
            if names is None:
                names = list(parts)
            n = _batch_size(batch)
            values = torch.stack([loss.detach().float()] + [parts[t].detach().float() for t in names]) * n
            values = torch.cat([values, values.new_tensor([n])])
            total = values if total is None else total + values
    if names is None:  # this rank had no items (a tiny set split over many ranks)
        names = []
    # Every rank must join the reduction with the same length: agree on the task list first.
    if is_dist():
        from .distributed import all_gather_object
        all_names = [n for n in all_gather_object(names) if n]
        names = all_names[0] if all_names else []
        if total is None:
            total = torch.zeros(len(names) + 2, device=device)
    if total is None:
        raise ValueError("validation split is empty: no batches to score")
    total = all_reduce_sum(total.to(device))
    count = float(total[-1])
    if count == 0:
        raise ValueError("validation split is empty: no batches to score")
    mean = (total[:-1] / count).tolist()
    return {"loss": mean[0], "losses": dict(zip(names, mean[1:])), "count": int(count)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, config: Mapping, dataset: Any, device: torch.device,
             compat: str | None = None, progress: bool = True, precision: str = "fp32",
             normals_space: str | None = None) -> dict:
    """The paper's metrics (docs/ARCHITECTURE.md contract 8) of `model` on `loader`'s split.

    `compat` ("standard" or "adashare") defaults to the config's `eval.metrics_compat`;
    `normals_space` (how the model's sn output is read) to the config's `loss.normals_space` (pass
    `fileio.load_weights(...).normals_space` for a loaded file). The accumulator comes from
    `engine.metrics.build_metrics`, like every other evaluation. Under DDP the accumulator's sums are
    all-reduced, so every rank returns the full-set metrics.
    """
    from .metrics import build_metrics
    loader = _for_this_rank(loader)
    channels_last = bool(config.get("model", {}).get("channels_last", False))
    acc = build_metrics(config, dataset, compat=compat, normals_space=normals_space)
    with preserved_rng(), _Mode(model):
        for batch in _progress(loader, "eval", progress):
            batch = move_batch(batch, device, channels_last)
            with autocast(device, precision):
                preds = model(batch["img"])
            acc.update(_float_preds(preds), batch)
    if is_dist():
        acc.all_reduce()
    return acc.compute()
