"""build_dataset / build_loader: dispatch, determinism (also with workers), epochs, sharding, collate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from dataloaders import (DataError, NYUv2, SeededDistributedSampler, build_dataset, build_loader, collate,
                         set_epoch)


def _config(root, **data):
    cfg = {"dataset": "synthetic", "data_root": str(root), "tasks": ["seg", "sn", "depth"], "num_classes": [8, 3, 1],
           "data": {"crop_h": 32, "crop_w": 40, "image_shape": [48, 64], "batch_size": 3, "test_batch_size": 2,
                    "num_workers": 0, "mirror_normals": True},
           "synthetic": {"n_train": 8, "n_test": 4, "size": [48, 64], "seed": 0}}
    cfg["data"].update(data)
    return cfg


def _epoch(loader):
    return [{k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in batch.items()} for batch in loader]


def _same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.keys() != y.keys():
            return False
        for k in x:
            if torch.is_tensor(x[k]):
                if not torch.equal(x[k], y[k]):
                    return False
            elif x[k] != y[k]:
                return False
    return True


def test_build_dataset_modes_and_tasks(synthetic_root):
    cfg = _config(synthetic_root)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert isinstance(train, NYUv2) and train.name == "synthetic" and train.crop == (32, 40)
    assert test.crop is None and not test.train
    assert build_dataset(cfg, "train", train=False).crop is None
    assert train.tasks == ("seg", "sn", "depth", "keypoint", "edge")
    assert train.ignore_index == 255 and train.class_weights is None
    cfg["data"]["mirror_normals"] = False
    assert build_dataset(cfg, "train").mirror_normals is False


def test_same_seed_same_batches_with_and_without_workers(synthetic_root):
    cfg = _config(synthetic_root)
    plain = build_loader(cfg, "train", seed=5, num_workers=0)
    runs = [_epoch(plain), _epoch(plain)]                        # epochs 0 and 1
    again = build_loader(cfg, "train", seed=5, num_workers=0)
    assert _same(_epoch(again), runs[0]) and _same(_epoch(again), runs[1])
    workers = build_loader(cfg, "train", seed=5, num_workers=2)
    assert _same(_epoch(workers), runs[0]) and _same(_epoch(workers), runs[1])
    workers_again = build_loader(cfg, "train", seed=5, num_workers=2)
    assert _same(_epoch(workers_again), runs[0])
    assert not _same(runs[0], runs[1])                            # a new epoch: new order and augmentation
    other = build_loader(cfg, "train", seed=6, num_workers=0)
    assert not _same(_epoch(other), runs[0])
    # set_epoch picks an epoch explicitly (resume)
    set_epoch(plain, 1)
    assert _same(_epoch(plain), runs[1])
    plain.sampler.set_epoch(0)
    assert _same(_epoch(plain), runs[0])


def test_defaults_batch_shapes_and_names(synthetic_root):
    cfg = _config(synthetic_root)
    train = build_loader(cfg, "train")
    assert train.batch_size == 3 and not train.drop_last and len(train) == 3      # as the original: 3 + 3 + 2
    assert [len(b["name"]) for b in train] == [3, 3, 2]
    dropping = build_loader(_config(synthetic_root, drop_last=True), "train")     # data.drop_last: true
    assert dropping.drop_last and [len(b["name"]) for b in dropping] == [3, 3]
    batch = next(iter(train))
    assert tuple(batch["img"].shape) == (3, 3, 32, 40) and batch["img"].dtype == torch.float32
    assert tuple(batch["seg"].shape) == (3, 1, 32, 40) and batch["seg"].dtype == torch.int64
    assert tuple(batch["normal"].shape) == (3, 3, 32, 40) and tuple(batch["depth"].shape) == (3, 1, 32, 40)
    assert tuple(batch["keypoint"].shape) == (3, 1, 32, 40) and tuple(batch["edge"].shape) == (3, 1, 32, 40)
    assert isinstance(batch["name"], list) and len(batch["name"]) == 3
    test = build_loader(cfg, "test")
    names = [n for b in test for n in b["name"]]
    assert names == [f"img/test_{i:05d}.png" for i in range(4)]     # no shuffle, nothing dropped in test
    assert tuple(next(iter(test))["img"].shape) == (2, 3, 48, 64)
    tiny = build_loader(_config(synthetic_root, drop_last=True), "train", batch_size=50)   # still one batch
    assert not tiny.drop_last and len(list(tiny)) == 1


def test_distributed_sampler_partitions_and_shares_augmentation(synthetic_root):
    ds = build_dataset(_config(synthetic_root), "train")
    shards = [list(SeededDistributedSampler(ds, num_replicas=3, rank=r, shuffle=True, seed=2)) for r in range(3)]
    assert all(isinstance(k, tuple) and len(k) == 2 for s in shards for k in s)
    indices = [i for s in shards for i, _ in s]
    assert sorted(set(indices)) == list(range(len(ds))) and len(indices) == 9        # padded to 3 x 3
    seeds = {}
    for s in shards:
        for i, seed in s:
            assert seeds.setdefault(i, seed) == seed        # a sample's augmentation is the same on every rank
    sampler = SeededDistributedSampler(ds, num_replicas=3, rank=0, shuffle=True, seed=2)
    first, second = list(sampler), list(sampler)
    assert first != second                                  # advances the epoch by itself
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_distributed_loader_uses_a_distributed_sampler(synthetic_root, tmp_path):
    cfg = _config(synthetic_root)
    with pytest.raises(DataError, match="process group"):
        build_loader(cfg, "train", distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_loader(cfg, "train", distributed=True, seed=1)
        assert isinstance(loader.sampler, DistributedSampler)
        set_epoch(loader, 3)
        assert loader.sampler.epoch == 3
        assert len(list(loader)) == 3                       # 8 items of batch 3, the last one partial
    finally:
        dist.destroy_process_group()


def test_collate_stacks_tensors_and_lists_the_rest():
    samples = [{"img": torch.zeros(3, 2, 2), "name": "a"}, {"img": torch.ones(3, 2, 2), "name": "b"}]
    batch = collate(samples)
    assert tuple(batch["img"].shape) == (2, 3, 2, 2) and batch["name"] == ["a", "b"]
    with pytest.raises(DataError, match="different sizes"):
        collate([{"img": torch.zeros(3, 2, 2)}, {"img": torch.zeros(3, 2, 3)}])


def test_worker_errors_stay_one_line(synthetic_root, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    cfg = _config(root)
    loader = build_loader(cfg, "test", num_workers=2, batch_size=1)
    (root / "seg" / "test_00001.png").unlink()              # disappears after the up-front check
    with pytest.raises(DataError) as info:
        list(loader)
    message = str(info.value)
    assert "\n" not in message and "missing" in message and "test_00001.png" in message


def test_cache_gives_the_same_batches_and_reads_each_file_once(synthetic_root, monkeypatch):
    reads = []
    original = NYUv2.load_maps
    monkeypatch.setattr(NYUv2, "load_maps", lambda self, index: reads.append(index) or original(self, index))
    plain = build_loader(_config(synthetic_root), "train", seed=5)
    expected = [_epoch(plain), _epoch(plain)]
    reads.clear()
    cached = build_loader(_config(synthetic_root, cache=True), "train", seed=5)
    assert _same(_epoch(cached), expected[0]) and _same(_epoch(cached), expected[1])
    assert sorted(reads) == list(range(8))                   # 8 train images, each decoded once in two epochs
    test = build_dataset(_config(synthetic_root, cache=True), "test")
    first = test[0]
    first["img"].add_(1000.0)                                # a caller altering its sample ...
    assert torch.equal(test[0]["img"], build_dataset(_config(synthetic_root), "test")[0]["img"])  # ... not the cache
