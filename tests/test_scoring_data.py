"""Scoring batches: the batches of a plain loader restarted epoch after epoch, workers started once and
stopped after the last batch, and scores that do not depend on the number of workers."""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dataloaders import build_loader, build_scoring_batches, scoring_workers
from engine.config import load_config
from engine.losses import build_loss
from fileio import load_checkpoint
from models import build_model
from prune_utils.saliency import compute_scores, take_batches

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width_mult=0.0625", "data.crop_h=32", "data.crop_w=32"]


def _config(root, overrides, *more):
    return load_config("synthetic", overrides=[*TINY, *overrides, *more], data_root=str(root))


def _tensors(batch):
    return {k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in batch.items()}


def _equal(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)
        for x, y in zip(a, b))


def _plain_epochs(config, n, batch_size):
    """What scoring used to read: a plain loader (no workers), restarted epoch after epoch, first n batches."""
    loader = build_loader(config, "train", batch_size=batch_size, shuffle=True, seed=5, num_workers=0)
    return [_tensors(b) for b in take_batches(loader, n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_scoring_batches_are_a_plain_loaders_epochs(synthetic_root, synthetic_overrides, workers):
    config = _config(synthetic_root, synthetic_overrides)                       # 8 training images
    batches = [_tensors(b) for b in build_scoring_batches(config, num_batches=7, batch_size=3, seed=5,
                                                          num_workers=workers)]
    assert [len(b["name"]) for b in batches] == [3, 3, 2, 3, 3, 2, 3]          # 8 = 3 + 3 + 2, three epochs
    first_epoch = [name for b in batches[:3] for name in b["name"]]
    assert len(set(first_epoch)) == 8                                           # each image once per epoch
    assert _equal(batches, _plain_epochs(config, 7, 3))


def test_scoring_batches_keep_drop_last(synthetic_root, synthetic_overrides):
    config = _config(synthetic_root, synthetic_overrides, "data.drop_last=true")
    batches = list(build_scoring_batches(config, num_batches=5, batch_size=3, seed=5, num_workers=2))
    assert [len(b["name"]) for b in batches] == [3, 3, 3, 3, 3]                 # the 2-image rest is dropped
    assert _equal([_tensors(b) for b in batches], _plain_epochs(config, 5, 3))


@pytest.mark.parametrize("configured,batches,expected", [(4, 1, 0), (4, 2, 0), (4, 3, 1), (4, 5, 2), (4, 8, 3),
                                                         (4, 9, 4), (4, 50, 4), (0, 50, 0)])
def test_each_scoring_worker_has_two_batches_to_overlap(configured, batches, expected):
    assert scoring_workers(configured, batches) == expected


def test_workers_start_at_once_and_stop_after_the_last_batch(synthetic_root, synthetic_overrides):
    config = _config(synthetic_root, synthetic_overrides)
    before = set(multiprocessing.active_children())
    batches = build_scoring_batches(config, num_batches=5, batch_size=3, seed=5, num_workers=2)
    assert len(set(multiprocessing.active_children()) - before) == 2          # forked when made, not when read
    assert len(batches) == 5
    taken = [next(batches) for _ in range(5)]
    assert len(taken) == 5 and len(batches) == 0
    assert not set(multiprocessing.active_children()) - before                # gone once the last batch is out
    with pytest.raises(StopIteration):
        next(batches)


def test_closing_early_stops_the_workers(synthetic_root, synthetic_overrides):
    config = _config(synthetic_root, synthetic_overrides)
    before = set(multiprocessing.active_children())
    batches = build_scoring_batches(config, num_batches=6, batch_size=3, seed=5, num_workers=2)
    next(batches)
    batches.close()
    assert not set(multiprocessing.active_children()) - before
    with pytest.raises(StopIteration):
        next(batches)


class _CountingList:
    """A re-iterable that counts how often it is iterated (a DataLoader starts its workers on each iter())."""

    def __init__(self, items):
        self.items, self.passes = list(items), 0

    def __iter__(self):
        self.passes += 1
        return iter(self.items)


def test_take_batches_starts_one_pass_per_epoch_and_no_probe_pass():
    data = _CountingList([1, 2])
    assert list(take_batches(data, 5)) == [1, 2, 1, 2, 1]
    assert data.passes == 3                       # ceil(5 / 2) epochs, no extra iter() to classify the input


def test_scores_with_workers_are_bit_identical_to_none(synthetic_root, synthetic_overrides):
    config = _config(synthetic_root, synthetic_overrides)
    loss = build_loss(config)

    def scores(batches):
        torch.manual_seed(0)
        model = build_model(config)
        return compute_scores(model, batches, loss, list(config["tasks"]), method="snip", num_batches=4,
                              generator=0)

    with_workers = scores(build_scoring_batches(config, num_batches=4, batch_size=3, seed=5, num_workers=2))
    without = scores(build_scoring_batches(config, num_batches=4, batch_size=3, seed=5, num_workers=0))
    plain = scores(build_loader(config, "train", batch_size=3, shuffle=True, seed=5, num_workers=2))
    for task in with_workers:
        for name in with_workers[task]:
            assert torch.equal(with_workers[task][name], without[task][name])
            assert torch.equal(with_workers[task][name], plain[task][name])   # a plain loader, restarted
    assert any(bool(s.any()) for s in with_workers["seg"].values())


def test_create_pruned_net_masks_do_not_depend_on_the_workers(synthetic_root, synthetic_overrides, tmp_path):
    sets = sum((["--set", s] for s in [*TINY, *synthetic_overrides, "pruning.batch_size=3"]), [])
    masks = {}
    for workers in (0, 2):
        dest = tmp_path / f"w{workers}"
        proc = subprocess.run([sys.executable, "create_pruned_net.py", "--dataset", "synthetic", "--data-root",
                               str(synthetic_root), *sets, "--set", f"data.num_workers={workers}", "--num_batches",
                               "4", "--ratio", "80", "--dest", str(dest), "--progress", "off"],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        masks[workers] = load_checkpoint(dest / "synthetic_disparse_static_80.pth")["masks"]
    assert masks[0].keys() == masks[2].keys()
    assert all(torch.equal(masks[0][name], masks[2][name]) for name in masks[0])
