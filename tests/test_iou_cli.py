"""iou_analysis.py: one-line errors for bad checkpoints and arguments (subprocess, exit code 2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fileio import atomic_save, make_checkpoint
from engine.config import load_config
from models import build_model
from prune_utils.masks import dense_masks

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "iou_analysis.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith("error:"), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    config = load_config("synthetic")
    torch.manual_seed(0)                    # the same weights whichever tests ran before in this process
    model = build_model(config)
    dense = folder / "dense.pth"
    atomic_save(make_checkpoint(model.state_dict(), config, "baseline"), dense)
    # a pruned checkpoint of another task set: seg + sn only
    other = load_config("synthetic", overrides=["tasks=[seg, sn]", "num_classes=[8, 3]", "loss_weights=[1.0, 5.0]"])
    other_model = build_model(other)
    wrong = folder / "wrong_tasks.pth"
    atomic_save(make_checkpoint(other_model.state_dict(), other, "disparse_static",
                                masks=dense_masks(other_model), sparsity=0.0), wrong)
    pruned = folder / "pruned.pth"
    atomic_save(make_checkpoint(model.state_dict(), config, "disparse_static", masks=dense_masks(model),
                                sparsity=0.0), pruned)
    garbage = folder / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    return {"dense": dense, "pruned": pruned, "wrong": wrong, "garbage": garbage}


def test_dense_checkpoint_is_cut_like_a_fresh_net(checkpoints, tmp_path):
    """A dense checkpoint (a trained baseline) is scored as it is. Magnitude scores are the same for every
    task, so in each backbone layer the tasks' kept sets are nested (one threshold on one ranking, moved
    only by the different head sizes in the pools): the IoU of all tasks is the smallest kept count over
    the largest."""
    proc = run_cli("--dataset", "synthetic", "--from", checkpoints["dense"], "--saliency", "magnitude",
                   "--ratio", "90", "--dest", tmp_path, "--no-plot", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "synthetic_iou.json").read_text())
    assert record["source"] == str(checkpoints["dense"]) and record["saliency"] == "magnitude"
    assert abs(record["arbiter_sparsity"] - 0.9) <= 0.0005
    for layer in record["layers"]:
        counts = list(layer["kept"].values())
        expected = min(counts) / max(counts) if max(counts) else 1.0
        assert layer["all"] == pytest.approx(expected), layer["name"]
    assert min(layer["all"] for layer in record["layers"]) < 1.0      # the head sizes do move the thresholds


def test_pruned_checkpoint_with_ratio_is_a_one_line_error(checkpoints, tmp_path):
    proc = run_cli("--dataset", "synthetic", "--from", checkpoints["pruned"], "--ratio", "90", "--dest", tmp_path)
    assert_one_line_error(proc, "--ratio cannot be combined with --from of a pruned checkpoint")
    assert not list(tmp_path.iterdir())


def test_checkpoint_with_other_tasks_is_a_one_line_error(checkpoints, tmp_path):
    proc = run_cli("--dataset", "synthetic", "--from", checkpoints["wrong"], "--dest", tmp_path)
    assert_one_line_error(proc, "tasks")
    assert "['seg', 'sn']" in proc.stderr and "depth" in proc.stderr


def test_unreadable_or_missing_checkpoint(checkpoints, tmp_path):
    assert_one_line_error(run_cli("--dataset", "synthetic", "--from", checkpoints["garbage"]), "unreadable")
    assert_one_line_error(run_cli("--dataset", "synthetic", "--from", tmp_path / "absent.pth"), "not found")


def test_argument_errors():
    proc = run_cli("--dataset", "synthetic", "--ratio", "120")
    assert proc.returncode == 2 and "between 0 and 100" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--ratio", "90", "--keep-ratio", "0.1")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr
    proc = run_cli("--dataset", "synthetic", "--keep-ratio", "1.5")
    assert proc.returncode == 2
    assert_one_line_error(run_cli("--dataset", "synthetic", "--num_batches", "0"), "num_batches")


def test_help_explains_flags():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--keep-ratio", "--ratio", "--num_batches", "--from", "--dest", "--dataset", "--device", "--seed"):
        assert flag in proc.stdout
