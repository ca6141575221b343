"""Datasets: NYUv2, Cityscapes and Tiny-Taskonomy in the AdaShare on-disk formats, plus generated
synthetic indoor scenes in the NYUv2 layout. See docs/CONVENTIONS.md for the item/batch format.

    build_dataset(config, split, train=None) -> dataset
    build_loader(config, split, *, batch_size=None, shuffle=None, seed=0, distributed=False,
                 drop_last=None, num_workers=None) -> torch.utils.data.DataLoader
    build_scoring_batches(config, split="train", *, num_batches, batch_size=None, seed=0, distributed=False,
                          num_workers=None) -> ScoringBatches   # one started pass of a few batches (scoring)
    set_epoch(loader, epoch)             # or loader.sampler.set_epoch(epoch)
    ensure_synthetic(config) -> Path     # generate the synthetic set into data_root if absent

Names are imported lazily from their submodules, so `python -m dataloaders.synthetic` starts without
importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AugParams": "transforms", "MapSpec": "transforms", "apply_params": "transforms", "augment": "transforms",
    "draw_params": "transforms",
    "IMG_MEAN_BGR": "base", "DenseDataset": "base",
    "DATASET_NAMES": "build", "EpochSpanningBatchSampler": "build", "ScoringBatches": "build",
    "SeededDistributedSampler": "build", "SeededSampler": "build", "build_dataset": "build", "build_loader": "build",
    "build_scoring_batches": "build", "collate": "build", "scoring_workers": "build", "seed_worker": "build",
    "set_epoch": "build",
    "CityScapes": "cityscapes", "DataError": "errors", "NYUv2": "nyuv2", "Taskonomy": "taskonomy",
    "ensure_synthetic": "synthetic", "generate_synthetic": "synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
