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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler, get_worker_info

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
    plan = _LoaderPlan.of(config, split, batch_size, shuffle, seed, distributed, drop_last, num_workers, train)
    return plan.loader(batch_size=plan.batch_size, sampler=plan.sampler, drop_last=plan.drop_last,
                       num_workers=plan.num_workers)


@dataclass
class _LoaderPlan:
    """What `build_loader` and `build_scoring_batches` resolve alike from a config: dataset, sampler, sizes."""

    dataset: DenseDataset
    sampler: Sampler
    batch_size: int
    drop_last: bool
    num_workers: int
    seed: int

    @classmethod
    def of(cls, config: Mapping[str, Any], split: str, batch_size: int | None, shuffle: bool | None, seed: int,
           distributed: bool, drop_last: bool | None, num_workers: int | None, train: bool | None) -> "_LoaderPlan":
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
        return cls(dataset, sampler, batch_size, bool(drop_last), num_workers, int(seed))

    def loader(self, **layout: Any) -> DataLoader:
        """A DataLoader over the dataset with the shared settings (collate, seeded workers) and `layout`
        (batch_size/sampler/drop_last, or batch_sampler; num_workers)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed % 2**63)
        return DataLoader(self.dataset, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                          worker_init_fn=seed_worker, generator=generator, persistent_workers=False, **layout)


class EpochSpanningBatchSampler(Sampler):
    """`num_batches` batches cut from consecutive epochs of `sampler`, in one pass.

    Each epoch (one `iter(sampler)`, which advances a seeded sampler's epoch) is cut into batches exactly
    as a DataLoader cuts it, partial last batch included unless `drop_last`; so the batches are the ones
    a plain loader restarted epoch after epoch gives, but one DataLoader iterator serves them all and
    its workers are started once. Stops early when an epoch yields no batch (an empty split).
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, num_batches: int) -> None:
        if num_batches < 1:
            raise DataError(f"the number of batches must be at least 1, got {num_batches}")
        self.sampler, self.batch_size, self.drop_last = sampler, int(batch_size), bool(drop_last)
        self.num_batches = int(num_batches)

    def __len__(self) -> int:
        return self.num_batches if len(BatchSampler(self.sampler, self.batch_size, self.drop_last)) else 0

    def __iter__(self) -> Iterator[list]:
        produced = 0
        while produced < self.num_batches:
            epoch_batches = 0
            for batch in BatchSampler(self.sampler, self.batch_size, self.drop_last):
                yield batch
                produced += 1
                epoch_batches += 1
                if produced == self.num_batches:
                    return
            if not epoch_batches:
                return


def scoring_workers(num_workers: int, num_batches: int) -> int:
    """Workers for a pass of `num_batches` batches: at most ⌊(num_batches − 1) / 2⌋.

    The first batch is waited for whoever loads it; a worker pays off only by loading later batches while
    the net computes, and starting and stopping one costs about as much as loading a batch (70 ms against
    70 ms for two NYUv2 frames here), so each worker needs at least two batches to overlap. 1 or 2
    batches: none; 3: one; 9 or more: the configured number."""
    return max(0, min(int(num_workers), (int(num_batches) - 1) // 2))


class ScoringBatches(Iterator):
    """The `num_batches` batches of one scoring pass, from one DataLoader iterator.

    Its workers (`scoring_workers`) are forked when this object is made, so make it before the large
    buffers of the pass (the model, its probe copy, the score buffers) exist: a forked worker shares the
    parent's pages, and every page the parent writes while a worker lives costs a copy-on-write fault.
    They are never forked again during the pass (no epoch restarts) and are shut down as soon as the
    last batch has been handed out. `dataset` is the dataset the batches come from.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.dataset = loader.dataset
        self._left = len(loader.batch_sampler)
        self._iterator: Iterator | None = iter(loader) if self._left else None

    def __len__(self) -> int:
        return self._left

    def __next__(self) -> dict:
        if self._iterator is None:
            raise StopIteration
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = None
            raise
        self._left -= 1
        if not self._left:
            self.close()
        return batch

    def close(self) -> None:
        """Stop the workers now: after the last batch the DataLoader iterator reaches its end and shuts
        them down; before it, dropping the iterator does (its finaliser)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and not self._left:
            next(iterator, None)


def build_scoring_batches(config: Mapping[str, Any], split: str = "train", *, num_batches: int,
                          batch_size: int | None = None, seed: int = 0, distributed: bool = False,
                          num_workers: int | None = None) -> ScoringBatches:
    """The first `num_batches` shuffled batches of `split`, epoch after epoch, as one started pass.

    The batches are those `build_loader(config, split, batch_size=..., shuffle=True, seed=seed, ...)`
    gives when iterated epoch after epoch (the same with any number of workers); the workers (at most
    `data.num_workers`, see `scoring_workers`) start now and never restart. Scoring reads a few batches
    while a large net and its buffers sit in memory, which is why it does not use a plain loader.
    """
    plan = _LoaderPlan.of(config, split, batch_size, True, seed, distributed, None, num_workers, None)
    sampler = EpochSpanningBatchSampler(plan.sampler, plan.batch_size, plan.drop_last, num_batches)
    return ScoringBatches(plan.loader(batch_sampler=sampler,
                                      num_workers=scoring_workers(plan.num_workers, num_batches)))
