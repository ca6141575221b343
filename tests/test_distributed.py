"""Two-process DDP on CPU (gloo) through torchrun: it finishes, rank 0 alone writes, metrics are exact, files
record the world size and the batches scored, and a user error is printed once, by rank 0, first."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fileio import atomic_save, load_checkpoint, make_checkpoint
from engine.logging_utils import read_jsonl
from tests.helpers import tiny_run_args

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _tiny_args(root: Path, dest: Path, *extra: str) -> list[str]:
    return tiny_run_args(root, dest, *extra, batch_size=2, test_batch_size=1)


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("torchrun"):
        return [shutil.which("torchrun")]
    return [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_two_processes_gloo(synthetic_root, tmp_path):
    dest = tmp_path / "ddp"
    cmd = _torchrun() + ["--standalone", "--nproc_per_node=2", str(PROJECT_ROOT / "launch_training.py"),
                         *_tiny_args(synthetic_root, dest, "--max-iters", "4", "--set", "train.val_every=2",
                                     "--set", "train.save_every=2")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    name = "synthetic_baseline"
    # one set of files, written once (rank 0)
    files = sorted(p.name for p in dest.iterdir())
    assert files == sorted([f"best_{name}.pth", f"final_{name}.pth", f"last_{name}.pth", f"metrics_{name}.json",
                            "logs", "tb"]), files
    assert [p.name for p in (dest / "logs").iterdir()] == [f"{name}.jsonl"]
    assert len(list((dest / "tb" / name).glob("events.out.tfevents.*"))) == 1
    assert proc.stdout.count("metrics of ") == 1                        # one table, from rank 0
    records = read_jsonl(dest / "logs" / f"{name}.jsonl")
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]   # not once per rank
    assert records[0]["world_size"] == 2
    val = [r for r in records if r["kind"] == "val"]
    assert [r["count"] for r in val] == [4, 4]                           # the whole test set, no duplicates

    last = load_checkpoint(dest / f"last_{name}.pth")
    assert last["iteration"] == 4 and last["world_size"] == 2 and len(last["rng_ranks"]) == 2
    for kind in ("best", "final"):                                        # every checkpoint says how it was made
        assert load_checkpoint(dest / f"{kind}_{name}.pth")["world_size"] == 2, kind
    assert not any(k.startswith("module.") for k in last["model"])       # the bare model, not the DDP wrapper

    # metrics gathered over two shards == a single-process evaluation of the same checkpoint
    import eval_pruned_net
    torch.set_num_threads(1)
    eval_pruned_net.main(_tiny_args(synthetic_root, tmp_path / "single")
                         + ["--checkpoint", str(dest / f"best_{name}.pth")])
    ddp = json.loads((dest / f"metrics_{name}.json").read_text())
    single = json.loads((tmp_path / "single" / f"metrics_{name}.json").read_text())
    for task in ("seg", "sn", "depth"):
        for key, value in single[task].items():
            assert ddp[task][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, key)


def _run_torchrun(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = _torchrun() + ["--standalone", "--nproc_per_node=2", str(PROJECT_ROOT / script), *args]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)


def test_torchrun_pruning_records_world_size_and_scored_batches(synthetic_root, tmp_path):
    proc = _run_torchrun("create_pruned_net.py", *_tiny_args(synthetic_root, tmp_path, "--method", "snip",
                                                            "--num_batches", "2", "--set", "pruning.batch_size=2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = load_checkpoint(tmp_path / "synthetic_snip_90.pth")
    assert (ckpt["world_size"], ckpt["num_batches"], ckpt["scored_batches"]) == (2, 2, 4)   # 2 per rank


def test_torchrun_user_error_is_printed_once_by_rank_0_and_first(synthetic_root, tmp_path):
    """Every rank fails on the same bad start file, inside the process group: one `error:` line, from rank 0,
    before anything else any rank prints (torchrun's own failure report comes after it)."""
    from engine.config import load_config
    from models import build_model

    other = load_config("synthetic", overrides=["model.width_mult=0.0625", "tasks=[seg, sn]", "num_classes=[8, 3]",
                                                "loss_weights=[1, 1]"])
    atomic_save(make_checkpoint(build_model(other).state_dict(), other, "snip"), tmp_path / "other.pth")
    proc = _run_torchrun("launch_training.py", *_tiny_args(synthetic_root, tmp_path / "run", "--method", "snip",
                                                          "--from", str(tmp_path / "other.pth"), "--max-iters", "2"))
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-4000:]
    assert lines[errors[0]] == (f"error: checkpoint {tmp_path / 'other.pth'} is for tasks ['seg', 'sn'], the config "
                                f"has ['seg', 'sn', 'depth']")
    assert not any("Traceback" in line for line in lines[:errors[0]]), proc.stderr[-4000:]
