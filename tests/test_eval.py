"""eval_pruned_net.py: real NYUv2 samples, original-format import, naming, delta_m, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_pruned_net
from fileio import atomic_save, make_checkpoint

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NYU_KEYS = {"seg": {"mIoU", "Pixel Acc", "err"},
            "sn": {"Angle Mean", "Angle Median", "Angle 11.25", "Angle 22.5", "Angle 30", "Angle 45"}}


def _nyu_config(root: Path) -> dict:
    from engine.config import load_config
    return load_config("nyuv2", overrides=["model.width_mult=0.0625", "data.num_workers=0"], data_root=str(root))


def _random_masks(model, density: float, seed: int = 0) -> dict:
    from prune_utils.masks import prunable_parameters
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) < density for n, w in prunable_parameters(model).items()}


def _original_nyu_metrics(pred: dict, root: Path, entry: list) -> dict:
    """The original's compat metrics of one test image, from the golden README's rules, in NumPy: nearest
    upsampling (source index ⌊i·in/out⌋), normals compared in the PNG's encoded B, G, R space with the
    "max channel < 255" validity, mIoU over classes with TP > 0."""
    import cv2
    import numpy as np
    seg_gt = cv2.imread(str(root / entry[1]), cv2.IMREAD_GRAYSCALE).astype(np.int64)
    raw = cv2.imread(str(root / entry[2]), cv2.IMREAD_COLOR).astype(np.float64)        # H×W×3, B, G, R
    h, w = seg_gt.shape

    def up(x):
        x = x[0].numpy().astype(np.float64)
        return x[:, (np.arange(h) * x.shape[1]) // h][:, :, (np.arange(w) * x.shape[2]) // w]

    logits, normal = up(pred["seg"]), up(pred["sn"]).transpose(1, 2, 0)
    c = logits.shape[0]
    label = logits.argmax(axis=0)
    valid = seg_gt < c
    conf = np.bincount(seg_gt[valid] * c + label[valid], minlength=c * c).reshape(c, c)
    tp = np.diag(conf)
    keep = tp > 0
    iou = tp[keep] / (conf.sum(0) + conf.sum(1) - tp)[keep]
    sn_valid = raw.max(axis=2) < 255
    p = normal / np.linalg.norm(normal, axis=2, keepdims=True)
    g = raw / np.linalg.norm(raw, axis=2, keepdims=True)
    angle = np.degrees(np.arccos(np.clip((p * g).sum(axis=2)[sn_valid], -1, 1)))
    miou = iou.mean() if keep.any() else 0.0          # no TP at all: the original's NaN is 0.0 here (docs/METRICS.md)
    return {"seg": {"mIoU": miou, "Pixel Acc": (label == seg_gt)[valid].mean()},
            "sn": {"Angle Mean": angle.mean(), "Angle Median": np.median(angle),
                   **{f"Angle {t:g}": 100 * np.mean(angle <= t) for t in (11.25, 22.5, 30, 45)}}}


def test_eval_original_format_sparse_net_on_real_nyuv2_samples(nyuv2_samples, tmp_path, capsys):
    from fileio.original import export_original_state_dict
    from engine.runtime import seed_everything
    from models import build_model
    from prune_utils.masks import apply_masks, sparsity

    config = _nyu_config(nyuv2_samples)
    seed_everything(0)
    model = build_model(config)
    masks = _random_masks(model, 0.25)
    apply_masks(model, masks)
    # a state dict as the original code saves it: weight_orig + int32 weight_mask, task<k> heads
    path = tmp_path / "best_nyuv2_disparse_static_75.pth"
    torch.save(export_original_state_dict(model.state_dict(), config["tasks"], masks), path)

    with pytest.warns(RuntimeWarning, match="predicts normals in the encoded space"):   # the config says decoded
        eval_pruned_net.main(["--config", str(PROJECT_ROOT / "configs" / "nyuv2.yaml"), "--set",
                              "model.width_mult=0.0625", "--set", "data.num_workers=0", "--compat", "adashare",
                              "--data-root", str(nyuv2_samples), "--device", "cpu", "--progress", "off",
                              "--method", "disparse_static", "--ratio", "75", "--model-path", str(tmp_path)])
    out = capsys.readouterr().out
    assert "original-format" in out and "Angle Median" in out and "encoded space" in out
    metrics = json.loads((tmp_path / "metrics_nyuv2_disparse_static_75_adashare.json").read_text())
    for task, keys in NYU_KEYS.items():
        assert set(metrics[task]) == keys
    # the same net's outputs on the test image, scored as the original scores an original net's outputs
    from dataloaders import build_dataset
    test = build_dataset(config, "test")
    model.eval()
    with torch.no_grad():
        pred = model(test[0]["img"][None])
    expected = _original_nyu_metrics(pred, nyuv2_samples, test.entries[0])
    for task, values in expected.items():
        for name, value in values.items():
            tol = dict(abs=1e-4) if name in ("Angle Mean", "Angle Median") else dict(rel=1e-5, abs=1e-9)
            assert metrics[task][name] == pytest.approx(value, **tol), (task, name)
    assert metrics["sparsity"] == pytest.approx(sparsity(masks))
    assert "delta_m" not in metrics


def _synthetic_config(root: Path, *extra: str) -> tuple[dict, list[str]]:
    from dataloaders.synthetic import read_meta
    from engine.config import load_config
    meta = read_meta(root)
    h, w = meta["size"]
    sets = ["model.width_mult=0.0625", "data.test_batch_size=4", "data.num_workers=0", f"data.image_shape=[{h},{w}]",
            f"synthetic.n_train={meta['n_train']}", f"synthetic.n_test={meta['n_test']}", f"synthetic.size=[{h},{w}]",
            *extra]
    args = ["--dataset", "synthetic", "--data-root", str(root), "--device", "cpu", "--progress", "off"]
    for s in sets:
        args += ["--set", s]
    return load_config("synthetic", overrides=sets, data_root=str(root)), args


def test_eval_names_sparsity_and_delta_m(synthetic_root, tmp_path):
    from engine.runtime import seed_everything
    from models import build_model
    from prune_utils.masks import apply_masks, sparsity

    config, args = _synthetic_config(synthetic_root)
    seed_everything(0)
    dense = build_model(config)
    atomic_save(make_checkpoint(dense.state_dict(), config, "baseline"), tmp_path / "best_synthetic_baseline.pth")
    eval_pruned_net.main(args + ["--method", "baseline", "--dest", str(tmp_path), "--compat", "adashare"])
    base = json.loads((tmp_path / "metrics_synthetic_baseline_adashare.json").read_text())
    assert set(base) == {"seg", "sn", "depth", "sparsity", "cost", "split", "metrics_compat", "checkpoint"}
    assert base["sparsity"] == 0.0 and (base["split"], base["metrics_compat"]) == ("test", "adashare")
    assert base["checkpoint"] == str(tmp_path / "best_synthetic_baseline.pth")
    assert base["cost"]["params"] == sum(p.numel() for p in dense.parameters())
    assert base["cost"]["latency_ms"] > 0 and "macs_removed" not in base["cost"]

    # a baseline file without zeros (delta_m divides by baseline values)
    from engine.delta_m import delta_m
    reference = {t: ({k: (v if v else 1.0) for k, v in m.items()} if isinstance(m, dict) else m)
                 for t, m in base.items()}
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    masks = _random_masks(dense, 0.5, seed=3)
    apply_masks(dense, masks)
    atomic_save(make_checkpoint(dense.state_dict(), config, "snip", masks=masks, sparsity=sparsity(masks)),
                tmp_path / "final_synthetic_snip_50.pth")
    eval_pruned_net.main(args + ["--checkpoint", str(tmp_path / "final_synthetic_snip_50.pth"),
                                 "--baseline-metrics", str(tmp_path / "reference.json"), "--compat", "adashare"])
    sparse = json.loads((tmp_path / "metrics_final_synthetic_snip_50_adashare.json").read_text())
    assert sparse["sparsity"] == pytest.approx(sparsity(masks))
    assert sparse["delta_m_definition"] == "task_mean"
    assert sparse["delta_m"] == pytest.approx(delta_m(sparse, reference, "task_mean"))
    eval_pruned_net.main(args + ["--checkpoint", str(tmp_path / "final_synthetic_snip_50.pth"), "--compat", "adashare",
                                 "--baseline-metrics", str(tmp_path / "reference.json"),
                                 "--set", "eval.delta_m_definition=metric_mean"])
    flat = json.loads((tmp_path / "metrics_final_synthetic_snip_50_adashare.json").read_text())
    assert flat["delta_m_definition"] == "metric_mean"
    assert flat["delta_m"] == pytest.approx(delta_m(sparse, reference, "metric_mean"))
    assert flat["delta_m"] != pytest.approx(sparse["delta_m"])


def test_truncated_checkpoint_cli_exits_2_with_one_line(synthetic_root, tmp_path):
    """As a user sees it (a real process): stderr is one `error:` line, exit status 2, nothing written."""
    from engine.runtime import seed_everything
    from models import build_model

    config, args = _synthetic_config(synthetic_root)
    seed_everything(0)
    good = tmp_path / "good.pth"
    atomic_save(make_checkpoint(build_model(config).state_dict(), config, "baseline"), good)
    truncated = tmp_path / "best_truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "eval_pruned_net.py"), *args,
                           "--checkpoint", str(truncated)], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint ") and "truncated" in lines[0], proc.stderr
    assert not (tmp_path / "metrics_truncated.json").exists()


def test_error_messages_say_what_is_wrong(synthetic_root, tmp_path, capsys):
    """Missing file, tasks mismatch, truncated file: exit 2 and one `error:` line saying which (in-process)."""
    from engine.runtime import seed_everything
    from models import build_model

    config, args = _synthetic_config(synthetic_root)
    other = dict(config, tasks=["seg", "sn"], num_classes=[8, 3], loss_weights=[1.0, 5.0])
    seed_everything(0)
    mismatch = tmp_path / "mismatch.pth"
    atomic_save(make_checkpoint(build_model(other).state_dict(), other, "baseline"), mismatch)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(mismatch.read_bytes()[:1000])
    expected = {
        ("--method", "snip", "--ratio", "90", "--dest", str(tmp_path)): "best_synthetic_snip_90.pth",
        ("--checkpoint", str(mismatch)): "is for tasks ['seg', 'sn'], the config has ['seg', 'sn', 'depth']",
        ("--checkpoint", str(truncated)): "unreadable or truncated",
    }
    for extra, words in expected.items():
        with pytest.raises(SystemExit) as exc:
            eval_pruned_net.main(args + list(extra))
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
