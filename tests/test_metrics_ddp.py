"""Two gloo ranks: the all-reduced accumulator equals one process over all the data, in both definitions
(adashare gathers the pooled cosines, so its exact Angle Median spans every rank's pixels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.metrics import MetricAccumulator

TASKS, CLASSES = ["seg", "sn"], [5, 3]


def _shard(rank: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(100 + rank)
    normal = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8, generator=g), dim=1)
    batch = {"seg": torch.randint(0, 5, (2, 1, 8, 8), generator=g), "normal": normal}
    preds = {"seg": torch.randn(2, 5, 4, 4, generator=g), "sn": torch.randn(2, 3, 4, 4, generator=g)}
    return preds, batch


def _worker(rank: int, store_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        results = {}
        for compat in ("standard", "adashare"):
            acc = MetricAccumulator(TASKS, CLASSES, compat=compat)
            acc.update(*_shard(rank))
            results[compat] = acc.all_reduce().compute()
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    out = tmp_path / "out.pt"
    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True, start_method="spawn")
    reduced = torch.load(out, weights_only=True)
    for compat in ("standard", "adashare"):
        acc = MetricAccumulator(TASKS, CLASSES, compat=compat)
        for rank in range(2):
            acc.update(*_shard(rank))
        expected = acc.compute()
        for task, values in expected.items():
            for name, value in values.items():
                assert reduced[compat][task][name] == pytest.approx(value, rel=1e-12, abs=1e-12), (compat, task, name)
    assert reduced["adashare"]["sn"]["Angle Median"] != pytest.approx(reduced["standard"]["sn"]["Angle Median"],
                                                                      abs=1e-9)    # exact vs 0.01° bins
    assert np.isfinite(reduced["adashare"]["sn"]["Angle Median"])
