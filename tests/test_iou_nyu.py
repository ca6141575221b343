"""End to end on the real NYUv2 samples: the per-layer IoU falls with backbone depth (docs/ORIGINAL.md §8),
and static_similarity.py reuses its saliency cache unless --force_run.

Reduced-width net (width_mult 0.25), keep ratio 0.078, the sample index's train split (3 of the 4 frames;
the 4th is the test split), one saliency batch. Skipped when the samples are absent.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = (ROOT / ".." / "shared" / "data" / "nyuv2_samples").resolve()
COMMON = ["--data-root", str(SAMPLES), "--set", "model.width_mult=0.25", "--set", "data.num_workers=0",
          "--device", "cpu", "--no_progress"]

pytestmark = pytest.mark.skipif(not (SAMPLES / "nyu_v2_3task.json").is_file(),
                                reason=f"NYUv2 samples not found at {SAMPLES}")


def _needs_pruning_modules():
    try:
        import prune_utils.mask_builder  # noqa: F401
        import prune_utils.saliency  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"saliency / mask builder not available yet ({exc})")


def run(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_nyu_iou_falls_with_depth(tmp_path):
    _needs_pruning_modules()
    from scipy.stats import spearmanr
    proc = run("iou_analysis.py", "--dataset", "nyuv2", *COMMON, "--keep-ratio", "0.078", "--num_batches", "1",
               "--dest", tmp_path)
    data = json.loads((tmp_path / "nyuv2_iou.json").read_text())
    assert (tmp_path / "nyuv2_iou.csv").is_file() and (tmp_path / "nyuv2_iou.png").stat().st_size > 10_000
    convs = [layer for layer in data["layers"] if layer["kind"] == "conv"]
    shortcuts = [layer for layer in data["layers"] if layer["kind"] == "shortcut"]
    assert len(convs) == 33 and len(shortcuts) == 3
    assert [layer["index"] for layer in convs] == list(range(33))
    profile = [layer["all"] for layer in convs]
    rho, p_value = spearmanr(range(33), profile)
    print("NYU samples IoU profile:", " ".join(f"{v:.3f}" for v in profile), f"rho={rho:.3f} p={p_value:.2g}")
    assert rho < 0, profile
    assert p_value < 0.01
    # early layers are shared far more than the last stage
    assert sum(profile[:7]) / 7 > sum(profile[-5:]) / 5
    assert 0 < data["overall"]["all"] < 1
    assert data["watershed"]["layer"].startswith("backbone.")
    assert data["keep_ratio"] == pytest.approx(0.078)
    assert "watershed: layer" in proc.stdout


def test_similarity_cache_reused_and_forced(tmp_path):
    _needs_pruning_modules()
    base = ["static_similarity.py", "--dataset", "nyuv2", *COMMON, "--set", "model.width_mult=0.0625",
            "--set", "data.crop_h=129", "--set", "data.crop_w=129", "--set", "tasks=[seg, sn, depth]", "--set", "num_classes=[40, 3, 1]", "--set", "loss_weights=[1, 20, 3]",
            "--num_seeds", "1", "--sparsities", "50,90", "--dump_dir", tmp_path / "dump",
            "--table_json", tmp_path / "table.json", "--no_plot"]
    cache_dir = tmp_path / "dump" / "nyuv2"
    first = run(*base, "--num_batches", "1", "--all", "--format", "latex")
    assert "saliency computed" in first.stdout
    caches = list(cache_dir.glob("scores_*.npz"))
    assert len(caches) == 1
    mtime = caches[0].stat().st_mtime_ns
    table = json.loads((tmp_path / "table.json").read_text())
    assert len(table) == 28
    for cell in table.values():
        assert set(cell) == {"s50,90_X_seg_X_sn", "s50,90_X_seg_X_depth", "s50,90_X_sn_X_depth"}
    assert r"\end{tabular}" in first.stdout
    record = json.loads(next(cache_dir.glob("sim_equal_X_masked_sals_*.json")).read_text())
    m = record["matrix"]
    assert all(abs(m[i][i] - 1) < 1e-9 for i in range(3))
    assert all(m[i][j] == m[j][i] for i in range(3) for j in range(3))

    single = ["--num_batches", "1", "--layer_method", "linear", "--sim_method", "masked_sals"]
    second = run(*base, *single)
    assert "loaded from cache" in second.stdout and "saliency computed" not in second.stdout
    assert caches[0].stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "table.json").read_text()) == table        # same scores, same numbers

    third = run(*base, *single, "--force_run")
    assert "saliency computed" in third.stdout
    assert caches[0].stat().st_mtime_ns > mtime

    # a different num_batches is a different cache entry (the original's stale-cache bug)
    fourth = run(*base, "--num_batches", "2", "--layer_method", "linear", "--sim_method", "masked_sals")
    assert "saliency computed" in fourth.stdout
    assert len(list(cache_dir.glob("scores_*.npz"))) == 2


def test_iou_from_pruned_checkpoint(tmp_path):
    """--from: per-task masks restricted to the checkpoint's kept weights, at a fraction of them."""
    _needs_pruning_modules()
    import torch

    from fileio import atomic_save, make_checkpoint
    from engine.config import load_config
    from models import build_model
    from prune_utils.mask_builder import masks_for_keep_ratio
    from prune_utils.masks import apply_masks, sparsity
    from prune_utils.saliency import compute_scores

    config = load_config("nyuv2", data_root=str(SAMPLES), overrides=["model.width_mult=0.25"])
    torch.manual_seed(0)
    model = build_model(config)
    scores = compute_scores(model, None, None, config["tasks"], method="random", generator=0)
    masks = {n: m.clone() for n, m in masks_for_keep_ratio(scores, 0.3).items()}
    apply_masks(model, masks)
    ckpt = tmp_path / "pruned.pth"
    atomic_save(make_checkpoint(model.state_dict(), config, "random", masks=masks, sparsity=sparsity(masks)), ckpt)

    run("iou_analysis.py", "--dataset", "nyuv2", *COMMON, "--from", ckpt, "--keep-ratio", "0.5",
        "--saliency", "grad_weight2", "--num_batches", "1", "--dest", tmp_path, "--no_plot")
    data = json.loads((tmp_path / "nyuv2_iou.json").read_text())
    assert data["source"] == str(ckpt) and data["saliency"] == "grad_weight2"
    assert data["checkpoint_sparsity"] == pytest.approx(sparsity(masks))
    for layer in data["layers"]:
        alive = int(masks[layer["name"]].sum())
        for task in config["tasks"]:
            assert layer["kept"][task] <= alive                  # only weights the checkpoint kept
    backbone_alive = sum(int(m.sum()) for n, m in masks.items() if n.startswith("backbone."))
    for task in config["tasks"]:
        kept = sum(layer["kept"][task] for layer in data["layers"])
        assert 0 < kept <= backbone_alive
    assert 0 < data["overall"]["all"] < 1
