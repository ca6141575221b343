"""create_pruned_net: every method hits the ratio, seeds reproduce, files round-trip, bad input is refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fileio import atomic_save, load_checkpoint, make_checkpoint
from engine.config import load_config
from engine.losses import MultiTaskLoss
from models import build_model
from prune_utils.masks import sparsity
from methods.base import PruneRequest
from methods.registry import get_method, paper_keep_ratio, pruning_methods

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width_mult=0.0625", "pruning.num_batches=1", "pruning.batch_size=4", "data.crop_h=32",
        "data.crop_w=32"]


def _config(**kw):
    return load_config("synthetic", overrides=TINY, **kw)


def _batches(config, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        normal = torch.randn(4, 3, 32, 32, generator=g)
        out.append({"img": torch.randn(4, 3, 32, 32, generator=g) * 50,
                    "seg": torch.randint(0, config["num_classes"][0], (4, 1, 32, 32), generator=g),
                    "normal": normal / normal.norm(dim=1, keepdim=True),
                    "depth": torch.rand(4, 1, 32, 32, generator=g) * 5 + 0.5})
    return out


def _prune(method, target=None, keep=None, seed=0, arbiter="unanimous"):
    config = _config()
    torch.manual_seed(seed)
    model = build_model(config)
    loss = MultiTaskLoss(config["tasks"], config["loss_weights"])
    request = PruneRequest(target_sparsity=target, keep_ratio=keep, arbiter=arbiter, num_batches=1)
    return get_method(method).prune(model, config, request, _batches(config), loss, torch.device("cpu"),
                                    torch.Generator().manual_seed(seed), progress=False)


@pytest.mark.parametrize("method", [m for m in pruning_methods() if not get_method(m).structured])
@pytest.mark.parametrize("ratio", [30, 50, 70, 90])
def test_every_method_hits_the_ratio(method, ratio):
    result = _prune(method, target=ratio / 100)
    assert abs(100 * result.sparsity - ratio) <= 0.05
    assert abs(sparsity(result.masks) - result.sparsity) < 1e-12


def test_same_seed_same_masks_and_other_seed_differs():
    a, b, c = (_prune("disparse_static", target=0.9, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_per_task_keep_ratio_and_paper_table():
    config = _config()
    assert paper_keep_ratio(config, "disparse_static", 90) == 0.080
    assert paper_keep_ratio(config, "disparse_pt", 70) == 0.30
    assert paper_keep_ratio(config, "disparse_static", 80) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="applies to disparse_static and disparse_pt"):
        paper_keep_ratio(config, "snip", 90)
    unanimous = _prune("disparse_static", keep=0.1)
    intersection = _prune("disparse_static", keep=0.1, arbiter="intersection")
    assert unanimous.keep_ratio == 0.1
    for name, mask in intersection.masks.items():
        assert not (mask & ~unanimous.masks[name]).any()   # unanimous keeps a superset
    assert unanimous.sparsity < intersection.sparsity


@pytest.fixture
def cli_sets(synthetic_overrides):
    return sum((["--set", s] for s in TINY + synthetic_overrides), [])


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, "create_pruned_net.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_writes_checkpoint_report_and_compact(synthetic_root, cli_sets, tmp_path):
    proc = _run("--dataset", "synthetic", "--data-root", str(synthetic_root), *cli_sets,
                "--method", "disparse_static", "--ratio", "80", "--dest", str(tmp_path), "--export-compact",
                "--progress", "off")
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(tmp_path / "synthetic_disparse_static_80.pth", ["seg", "sn", "depth"])
    assert ckpt["method"] == "disparse_static" and abs(ckpt["sparsity"] - 0.8) <= 5e-4
    assert abs(sparsity(ckpt["masks"]) - ckpt["sparsity"]) < 1e-12
    for name, mask in ckpt["masks"].items():
        assert (ckpt["model"][name][~mask] == 0).all()
    report = json.loads((tmp_path / "synthetic_disparse_static_80_report.json").read_text())
    assert set(report["summary"]) == {"backbone", "seg", "sn", "depth", "overall"}
    assert report["summary"]["overall"]["kept"] == sum(int(m.sum()) for m in ckpt["masks"].values())
    assert (tmp_path / "synthetic_disparse_static_80_report.csv").read_text().count("\n") == 1 + 72
    from fileio.compact import load_compact
    state, masks, meta = load_compact(tmp_path / "synthetic_disparse_static_80.compact.pth")
    assert all(torch.equal(state[k], ckpt["model"][k]) for k in ckpt["model"])
    assert all(torch.equal(masks[k], ckpt["masks"][k]) for k in ckpt["masks"])
    assert meta["method"] == "disparse_static"


def test_cli_disparse_pt_prunes_the_given_dense_net(synthetic_root, synthetic_overrides, cli_sets, tmp_path):
    config = load_config("synthetic", overrides=TINY + synthetic_overrides,
                         data_root=str(synthetic_root))
    torch.manual_seed(5)
    dense = build_model(config)
    atomic_save(make_checkpoint(dense.state_dict(), config, "baseline"), tmp_path / "final_synthetic_baseline.pth")
    proc = _run("--dataset", "synthetic", "--data-root", str(synthetic_root), *cli_sets,
                "--method", "disparse_pt", "--ratio", "50", "--dest", str(tmp_path), "--progress", "off")
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(tmp_path / "synthetic_disparse_pt_50.pth")
    kept_weights = {n: ckpt["model"][n][m] for n, m in ckpt["masks"].items()}
    for name, values in kept_weights.items():   # the trained values survive, not a fresh init
        assert torch.equal(values, dense.state_dict()[name][ckpt["masks"][name]])
    # magnitude saliency, unanimous: per task the kept backbone weights are the largest |w|
    backbone = [n for n in ckpt["masks"] if n.startswith("backbone.")]
    kept = torch.cat([dense.state_dict()[n][ckpt["masks"][n]].abs().flatten() for n in backbone])
    pruned = torch.cat([dense.state_dict()[n][~ckpt["masks"][n]].abs().flatten() for n in backbone])
    assert kept.min() >= pruned.max()


@pytest.mark.parametrize("args,message", [
    (["--method", "disparse_pt"], "dense checkpoint not found"),
    (["--method", "snip", "--paper-keep-ratios"], "--paper-keep-ratios applies to disparse_static and disparse_pt"),
    (["--method", "snip", "--num_batches", "0"], "--num_batches must be positive"),
    (["--method", "snip", "--batch-size", "0"], "--batch_size must be positive, got 0"),     # issue 12 item 12
])
def test_cli_bad_input_is_one_line(synthetic_root, cli_sets, tmp_path, args, message):
    proc = _run("--dataset", "synthetic", "--data-root", str(synthetic_root), *cli_sets, "--dest",
                str(tmp_path), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_cli_checkpoint_for_other_tasks_is_refused(synthetic_root, cli_sets, tmp_path):
    other = load_config("synthetic", overrides=TINY + ["tasks=[seg, sn]", "num_classes=[8, 3]", "loss_weights=[1, 1]"])
    atomic_save(make_checkpoint(build_model(other).state_dict(), other, "baseline"), tmp_path / "other.pth")
    proc = _run("--dataset", "synthetic", "--data-root", str(synthetic_root), *cli_sets, "--dest",
                str(tmp_path), "--method", "disparse_pt", "--from", str(tmp_path / "other.pth"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: checkpoint {tmp_path / 'other.pth'} is for tasks ['seg', 'sn'], the config has ['seg', 'sn', 'depth']"]


@pytest.mark.parametrize("ratio", ["100", "0", "-5", "abc"])
def test_cli_refuses_ratio_outside_open_interval(ratio):
    proc = _run("--dataset", "synthetic", "--ratio", ratio)
    assert proc.returncode == 2
    assert "argument --ratio" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
