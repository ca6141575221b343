"""Datasets and DataLoaders from a config: `build_dataset`, `build_loader`, the collate and the samplers.

Determinism: every sample's augmentation is drawn from its own seed, which the sampler derives from
(loader seed, epoch, sample index) and passes to the dataset with the index. Batches are therefore a
function of (seed, epoch) only: the same with 0, 2 or 8 workers, and the same for a sample whatever
rank of a distributed run draws it. Workers are still seeded (`seed_worker`: Python `random`, NumPy's
global generator and the dataset's own generator, from the loader's seeded torch generator) so any
other randomness in them is reproducible too.

Epochs: the loader's sampler has `set_epoch(epoch)` (`loader.sampler.set_epoch(e)` or
`dataloaders.set_epoch(loader, e)`). Calling it before each epoch fixes that epoch's order and
augmentation, e.g. when resuming; without calls, each new pass over the loader uses the next epoch
(0, 1, 2, ...). Under DDP (`distributed=True`) the sampler is a `DistributedSampler` (subclass), as
`torch.utils.data.DistributedSampler` requires: every rank must iterate the same number of epochs or
call `set_epoch` with the same value.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, get_worker_info

from .base import DenseDataset
from .cityscapes import CityScapes
from .errors import DataError
from .nyuv2 import NYUv2
from .taskonomy import Taskonomy

DATASET_NAMES = ("nyuv2", "cityscapes", "taskonomy", "synthetic")
# Taskonomy loader semantics when a config has no `taskonomy` section (the original's: class0, keep, nearest).
TASKONOMY_DEFAULTS = {"unlabelled": "ignore", "normals_where_depth_invalid": "mask", "rgb_interpolation": "area"}


def _seed_words(seed: int) -> list[int]:
    """Any Python int (negative or huge) as non-negative 32-bit words for numpy's SeedSequence."""
    seed = int(seed)
    words = [1 if seed < 0 else 0]
    seed = abs(seed)
    while True:
        words.append(seed & 0xFFFFFFFF)
        seed >>= 32
        if not seed:
            return words


def _epoch_aug_seeds(seed: int, epoch: int, n: int) -> np.ndarray:
    """One 63-bit augmentation seed per sample index for this (seed, epoch)."""
    rng = np.random.default_rng([*_seed_words(seed), int(epoch), 0x5EED])
    return rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)


class SeededSampler(Sampler):
    """Single-process sampler: yields `(index, augmentation_seed)`; shuffled order and seeds depend only on
    (seed, epoch). `set_epoch(e)` picks the epoch; otherwise each `iter()` advances it by one."""

    def __init__(self, data_source: Sequence, *, shuffle: bool, seed: int = 0) -> None:
        self.n = len(data_source)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.epoch = self._next_epoch
        self._next_epoch += 1
        if self.shuffle:
            order_seed = int(np.random.default_rng([*_seed_words(self.seed), self.epoch, 0x0DE4]).integers(2**63 - 1))
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(order_seed)).tolist()
        else:
            order = list(range(self.n))
        seeds = _epoch_aug_seeds(self.seed, self.epoch, self.n)
        return iter([(i, int(seeds[i])) for i in order])


class SeededDistributedSampler(DistributedSampler):
    """`DistributedSampler` (same partition, padding and `set_epoch`) that yields `(index, augmentation_seed)`.

    Unlike the parent, each new `iter()` without a `set_epoch` call advances the epoch by one.
    """

    def __init__(self, dataset: Sequence, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._next_epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        super().set_epoch(self._next_epoch)
        self._next_epoch += 1
        indices = list(super().__iter__())
        seeds = _epoch_aug_seeds(self.seed, self.epoch, len(self.dataset))
        return iter([(i, int(seeds[i])) for i in indices])


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Fix the epoch (order and augmentation) of the loader's next pass; works for every loader built here."""
    sampler = loader.sampler
    if not hasattr(sampler, "set_epoch"):
        raise TypeError("this loader's sampler has no set_epoch (build it with dataloaders.build_loader)")
    sampler.set_epoch(epoch)


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors key by key (B x C x H x W); anything else (`name`) becomes a list."""
    if not samples:
        raise DataError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise DataError(f"cannot batch {key!r} maps of different sizes {sorted(shapes)} "
                                f"(use batch size 1 for full-size test images of mixed sizes)")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def seed_worker(worker_id: int) -> None:
    """`worker_init_fn`: seed Python, NumPy and the dataset's generator from the worker's torch seed
    (= loader generator's base seed + worker id, so deterministic for a seeded loader)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)


def _seg_classes(config: Mapping[str, Any], default: int) -> int:
    tasks = list(config.get("tasks") or [])
    classes = list(config.get("num_classes") or [])
    if "seg" in tasks and len(classes) == len(tasks):
        return int(classes[tasks.index("seg")])
    return default


def build_dataset(config: Mapping[str, Any], split: str, train: bool | None = None) -> DenseDataset:
    """The dataset named by `config["dataset"]` at `config["data_root"]`, split `split`.

    Train augmentation iff `train` (default: `split` starts with "train"), cropping to
    `data.crop_h` x `data.crop_w`; `data.mirror_normals` controls the normal sign flip. Taskonomy maps
    are resized to `data.image_shape` (the evaluation size, as the original's IMAGE_SHAPE) and follow the
    optional `taskonomy` section (`unlabelled`, `normals_where_depth_invalid`, `rgb_interpolation`;
    `TASKONOMY_DEFAULTS` when absent). For `synthetic` the data is generated into `data_root` first if
    it is not there yet. `data.cache: true` keeps decoded samples in memory (`DenseDataset.enable_cache`).
    The config's tasks must be ones the dataset provides.
    """
    name = config.get("dataset")
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r} (expected one of {', '.join(DATASET_NAMES)})")
    root = config.get("data_root")
    if root is None:
        raise DataError(f"no data root for dataset {name!r}: pass --data-root or set DISPARSE_DATA")
    train = str(split).startswith("train") if train is None else bool(train)
    data = config.get("data") or {}
    crop_h = crop_w = None
    if train:
        if "crop_h" not in data or "crop_w" not in data:
            raise DataError("train mode needs config keys data.crop_h and data.crop_w")
        crop_h, crop_w = int(data["crop_h"]), int(data["crop_w"])
    common = dict(mirror_normals=bool(data.get("mirror_normals", True)))
    if name == "nyuv2":
        dataset: DenseDataset = NYUv2(root, split, crop_h, crop_w, num_classes=_seg_classes(config, 40), **common)
    elif name == "cityscapes":
        dataset = CityScapes(root, split, crop_h, crop_w, num_class=_seg_classes(config, 19), **common)
    elif name == "taskonomy":
        options = {**TASKONOMY_DEFAULTS, **(config.get("taskonomy") or {})}
        dataset = Taskonomy(root, split, crop_h, crop_w, image_size=tuple(data.get("image_shape", (256, 256))),
                            unlabelled_to_class0=options["unlabelled"] == "class0",
                            normals_where_depth_invalid=options["normals_where_depth_invalid"],
                            rgb_interpolation=options["rgb_interpolation"], **common)
    else:
        from .synthetic import ensure_synthetic
        root = ensure_synthetic(config)
        dataset = NYUv2(root, split, crop_h, crop_w, num_classes=_seg_classes(config, 8), **common)
        dataset.name = "synthetic"
    if data.get("cache", False):
        dataset.enable_cache()
    wanted = [t for t in config.get("tasks") or [] if t not in dataset.tasks]
    if wanted:
        raise DataError(f"dataset {name!r} at {dataset.root} provides tasks {', '.join(dataset.tasks)}; "
                        f"the config also asks for {', '.join(wanted)}")
    return dataset


def build_loader(config: Mapping[str, Any], split: str, *, batch_size: int | None = None,
                 shuffle: bool | None = None, seed: int = 0, distributed: bool = False,
                 drop_last: bool | None = None, num_workers: int | None = None,
                 train: bool | None = None) -> DataLoader:
    """A deterministic DataLoader over `build_dataset(config, split, train)`.

    Defaults: batch size `data.batch_size` for train splits, else `data.test_batch_size`; shuffle as
    train; drop_last = `data.drop_last` for train splits (false, as the original, when the key is
    absent; only while the split holds at least one full batch, so a tiny train split still yields a
    batch), never for evaluation splits; `data.num_workers` workers. `distributed=True` shards with a
    `DistributedSampler` over the initialised process group; call `loader.sampler.set_epoch(e)` (or
    `dataloaders.set_epoch`) per epoch as usual. Batches: dicts of stacked tensors plus `name` (list).
    """
    dataset = build_dataset(config, split, train)
    data = config.get("data") or {}
    is_train = dataset.train
    if batch_size is None:
        batch_size = int(data.get("batch_size" if is_train else "test_batch_size", 1))
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    shuffle = is_train if shuffle is None else bool(shuffle)
    num_workers = int(data.get("num_workers", 0)) if num_workers is None else int(num_workers)
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise DataError("distributed=True needs an initialised process group (run under torchrun)")
        sampler: Sampler = SeededDistributedSampler(dataset, shuffle=shuffle, seed=seed)
        per_rank = len(sampler)
    else:
        sampler = SeededSampler(dataset, shuffle=shuffle, seed=seed)
        per_rank = len(dataset)
    if drop_last is None:
        drop_last = is_train and bool(data.get("drop_last", False)) and per_rank >= batch_size
    generator = torch.Generator()
    generator.manual_seed(int(seed) % 2**63)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      worker_init_fn=seed_worker, generator=generator,
                      persistent_workers=False)
