"""Datasets: NYUv2, Cityscapes and Tiny-Taskonomy in the AdaShare on-disk formats, plus generated
synthetic indoor scenes in the NYUv2 layout. See docs/CONVENTIONS.md for the item/batch format.

    build_dataset(config, split, train=None) -> dataset
    build_loader(config, split, *, batch_size=None, shuffle=None, seed=0, distributed=False,
                 drop_last=None, num_workers=None) -> torch.utils.data.DataLoader
    set_epoch(loader, epoch)             # or loader.sampler.set_epoch(epoch)
    ensure_synthetic(config) -> Path     # generate the synthetic set into data_root if absent
"""
from .augment import AugParams, MapSpec, apply_params, augment, draw_params
from .base import IMG_MEAN_BGR, DenseDataset
from .build import (DATASET_NAMES, SeededDistributedSampler, SeededSampler, build_dataset, build_loader, collate,
                    seed_worker, set_epoch)
from .cityscapes import CityScapes
from .errors import DataError
from .nyuv2 import NYUv2
from .taskonomy import Taskonomy

__all__ = [
    "AugParams", "CityScapes", "DATASET_NAMES", "DataError", "DenseDataset", "IMG_MEAN_BGR", "MapSpec", "NYUv2",
    "SeededDistributedSampler", "SeededSampler", "Taskonomy", "apply_params", "augment", "build_dataset",
    "build_loader", "collate", "draw_params", "ensure_synthetic", "generate_synthetic", "seed_worker", "set_epoch",
]


def __getattr__(name: str):
    # Lazy, so that `python -m dataloaders.synthetic` does not import the module twice.
    if name in ("ensure_synthetic", "generate_synthetic"):
        from . import synthetic
        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
