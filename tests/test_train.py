"""Training loop: learning, checkpoints/logs, LR schedule, exact resume, NaN stop, pruned-method wiring.

Tiny runs on the session's generated synthetic set (tests/conftest.py `synthetic_root`): width 1/16,
32x32 crops, batches of 4, one thread (2-core CI machines: OpenMP spinning under load is very slow).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import launch_training
from fileio import load_checkpoint, make_checkpoint, atomic_save
from engine.logging_utils import read_jsonl
from tests.helpers import tiny_run_args


def tiny_args(root: Path, dest: Path, *extra: str) -> list[str]:
    return tiny_run_args(root, dest, *extra)


def tiny_config(root: Path, dest: Path, *extra: str) -> dict:
    from engine.config import config_from_args
    return config_from_args(launch_training.build_parser().parse_args(tiny_args(root, dest, *extra)))


def test_baseline_learns_and_writes_everything(synthetic_root, tmp_path):
    from dataloaders import build_loader
    from engine.evaluate import evaluate
    from engine.runtime import seed_everything
    from models import build_model

    dest = tmp_path / "run"
    args = tiny_args(synthetic_root, dest, "--max-iters", "20", "--set", "train.val_every=8",
                     "--set", "train.save_every=10", "--set", "train.lr=5e-3", "--set", "train.lr_decay_every=10",
                     "--set", "train.lr_decay_rate=0.5")
    config = tiny_config(synthetic_root, dest)
    seed_everything(0)
    untrained = build_model(config)            # the same initial weights the run starts from (seed 0)
    loader = build_loader(config, "test", shuffle=False)
    before = evaluate(untrained, loader, config, loader.dataset, torch.device("cpu"), progress=False)

    launch_training.main(args)

    name = "synthetic_baseline"
    for kind in ("best", "last", "final"):
        assert (dest / f"{kind}_{name}.pth").is_file(), kind
    last = load_checkpoint(dest / f"last_{name}.pth", config["tasks"], config["num_classes"])
    assert last["iteration"] == 20 and last["method"] == "baseline" and last["sparsity"] == 0.0
    for key in ("optimizer", "scheduler", "rng", "data_position", "best_value", "config"):
        assert key in last, key
    final = load_checkpoint(dest / f"final_{name}.pth")
    assert final["iteration"] == 20 and "optimizer" not in final
    best = load_checkpoint(dest / f"best_{name}.pth")
    assert best["iteration"] in (8, 16, 20) and best["iteration"] == last["best_iteration"]

    records = read_jsonl(dest / "logs" / f"{name}.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["iteration"] for r in train] == list(range(1, 21))       # exactly max_iters steps
    assert [r["iteration"] for r in val] == [8, 16, 20]                 # every val_every, and at the end
    assert val[0]["best"] is True                                     # the first validation saves best_
    assert set(train[0]["losses"]) == {"seg", "sn", "depth"}
    # per-iteration StepLR: step i (0-based) uses lr * 0.5 ** (i // 10)
    for r in train:
        assert r["lr"] == pytest.approx(5e-3 * 0.5 ** ((r["iteration"] - 1) // 10))
    first, late = train[0]["loss"], sum(r["loss"] for r in train[-6:]) / 6
    assert late < 0.8 * first, (first, late)
    assert list((dest / "tb" / name).glob("events.out.tfevents.*"))

    after = json.loads((dest / f"metrics_{name}.json").read_text())
    assert after["sparsity"] == 0.0
    assert after["seg"]["mIoU"] > before["seg"]["mIoU"]
    assert after["seg"]["Pixel Acc"] > before["seg"]["Pixel Acc"]
    assert after["sn"]["Angle Mean"] < before["sn"]["Angle Mean"]
    assert after["sn"]["Angle Median"] < before["sn"]["Angle Median"]
    assert after["depth"]["abs_err"] < before["depth"]["abs_err"]
    assert after["depth"]["rel_err"] < before["depth"]["rel_err"]


def test_resume_is_bit_identical(synthetic_root, tmp_path):
    # 8 train images / batch 4 = 2 batches per epoch: stopping after step 3 is mid-epoch (epoch 1, 1 batch used)
    common = ("--max-iters", "6", "--set", "train.val_every=2", "--set", "train.save_every=100",
              "--set", "train.lr_decay_every=2", "--no-final-eval")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    launch_training.main(tiny_args(synthetic_root, whole, *common))
    launch_training.main(tiny_args(synthetic_root, parts, *common, "--stop-after", "3"))
    name = "synthetic_baseline"
    stopped = load_checkpoint(parts / f"last_{name}.pth")
    assert stopped["iteration"] == 3 and stopped["data_position"] == {"epoch": 1, "batch": 1}
    assert not (parts / f"final_{name}.pth").exists()
    launch_training.main(tiny_args(synthetic_root, parts, *common, "--resume"))

    a, b = load_checkpoint(whole / f"final_{name}.pth"), load_checkpoint(parts / f"final_{name}.pth")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    la, lb = load_checkpoint(whole / f"last_{name}.pth"), load_checkpoint(parts / f"last_{name}.pth")
    for pa, pb in zip(la["optimizer"]["state"].values(), lb["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert la["scheduler"] == lb["scheduler"] and la["best_value"] == lb["best_value"]
    assert torch.equal(la["rng"]["torch"], lb["rng"]["torch"])


def test_data_stream_resumes_at_any_position(synthetic_root, tmp_path):
    from dataloaders import build_loader
    from engine.trainer import DataStream

    config = tiny_config(synthetic_root, tmp_path, "--set", "data.batch_size=3")
    loader = build_loader(config, "train", seed=5)          # 8 images, batch 3: 3 batches per epoch
    full = DataStream(loader, seed=5)
    full.start(0)
    reference = []
    for _ in range(7):
        batch = full.next()
        reference.append((batch["name"], batch["img"].clone(), full.position()))
    for k in (1, 2, 3, 4):
        epoch, used = reference[k - 1][2]["epoch"], reference[k - 1][2]["batch"]
        resumed = DataStream(build_loader(config, "train", seed=5), seed=5)
        resumed.start(epoch, skip=used)
        for names, img, pos in reference[k:]:
            batch = resumed.next()
            assert batch["name"] == names and torch.equal(batch["img"], img) and resumed.position() == pos


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch, capsys):
    import engine.losses

    real = engine.losses.build_loss

    def poisoned(config, dataset=None):
        loss = real(config, dataset)
        calls = {"n": 0}

        class Poisoned:
            task_loss = loss.task_loss

            def __call__(self, preds, batch):
                total, parts = loss(preds, batch)
                if torch.is_grad_enabled():        # training steps only, not validation
                    calls["n"] += 1
                    if calls["n"] == 3:
                        total = total * float("nan")
                return total, parts

        return Poisoned()

    monkeypatch.setattr(engine.losses, "build_loss", poisoned)
    dest = tmp_path / "nan"
    with pytest.raises(SystemExit) as exc:
        launch_training.main(tiny_args(synthetic_root, dest, "--max-iters", "5", "--set", "train.save_every=1",
                                       "--set", "train.val_every=100"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: non-finite training loss nan at iteration 3"), err
    assert "last_synthetic_baseline.pth (iteration 2)" in err[0]
    last = load_checkpoint(dest / "last_synthetic_baseline.pth")
    assert last["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (dest / "final_synthetic_baseline.pth").exists()


def _random_masks(model, density: float, seed: int = 0) -> dict:
    from prune_utils.masks import prunable_parameters
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) < density for n, w in prunable_parameters(model).items()}


def test_static_pruned_training_keeps_masks_and_constant_retrain_lr(synthetic_root, tmp_path):
    from engine.runtime import seed_everything
    from models import build_model
    from prune_utils.masks import apply_masks, sparsity

    dest = tmp_path / "pt"
    config = tiny_config(synthetic_root, dest)
    seed_everything(1)
    model = build_model(config)
    masks = _random_masks(model, 0.3)
    apply_masks(model, masks)
    atomic_save(make_checkpoint(model.state_dict(), config, "disparse_pt", masks=masks, sparsity=sparsity(masks)),
                dest / "synthetic_disparse_pt_70.pth")
    launch_training.main(tiny_args(synthetic_root, dest, "--method", "disparse_pt", "--ratio", "70",
                                   "--max-iters", "3", "--set", "retrain.lr=2e-4", "--set", "train.lr_decay_every=1",
                                   "--set", "train.val_every=100"))
    name = "synthetic_disparse_pt_70"
    final = load_checkpoint(dest / f"final_{name}.pth")
    assert final["method"] == "disparse_pt" and final["iteration"] == 3
    for n, m in masks.items():
        assert torch.equal(final["masks"][n], m)
        assert (final["model"][n][~m] == 0).all()
        assert not torch.equal(final["model"][n], model.state_dict()[n])       # it trained
    assert final["sparsity"] == pytest.approx(sparsity(masks))
    lrs = [r["lr"] for r in read_jsonl(dest / "logs" / f"{name}.jsonl") if r["kind"] == "train"]
    assert lrs == [2e-4] * 3                                                     # constant, retrain.lr
    metrics = json.loads((dest / f"metrics_{name}.json").read_text())
    assert metrics["sparsity"] == pytest.approx(sparsity(masks))


def test_missing_pruned_checkpoint_is_one_line_error(synthetic_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        launch_training.main(tiny_args(synthetic_root, tmp_path, "--method", "snip", "--ratio", "90"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pruned checkpoint not found:") and "snip_90.pth" in err[0]


def test_dynamic_sparse_training_hits_the_ratio(synthetic_root, tmp_path):
    dest = tmp_path / "dyn"
    launch_training.main(tiny_args(synthetic_root, dest, "--method", "disparse_dynamic", "--ratio", "80",
                                   "--max-iters", "3", "--set", "dynamic.interval=2", "--set", "dynamic.end=2",
                                   "--set", "train.val_every=100", "--no-final-eval"))
    final = load_checkpoint(dest / "final_synthetic_disparse_dynamic_80.pth")
    assert final["sparsity"] == pytest.approx(0.80, abs=5e-4)
    assert final["sparsity_state"]["kind"] == "dynamic" and final["sparsity_state"]["frozen"]
    records = read_jsonl(dest / "logs" / "synthetic_disparse_dynamic_80.jsonl")
    assert [r["iteration"] for r in records if r["kind"] == "controller"] == [0, 2]


def test_lth_rounds_reach_the_exact_ratio(synthetic_root, tmp_path):
    from prune_utils.lth import global_magnitude_masks, keep_schedule

    assert keep_schedule(1000, 75.0, 2) == [500, 250]
    w = {"a": torch.tensor([[3.0, -1.0], [2.0, 0.5]]), "b": torch.tensor([2.0, -4.0, 1.0])}
    m = global_magnitude_masks(w, 3)          # |w| 4, 3, then the tie 2 = 2: the lower position (a) wins
    assert m["a"].tolist() == [[True, False], [True, False]] and m["b"].tolist() == [False, True, False]
    m2 = global_magnitude_masks({"a": w["a"] * 0 + 9, "b": w["b"]}, 2, previous=m)   # only survivors compete
    assert m2["a"].tolist() == [[True, False], [True, False]] and m2["b"].tolist() == [False, False, False]

    dest = tmp_path / "lth"
    launch_training.main(tiny_args(synthetic_root, dest, "--method", "lth", "--ratio", "75",
                                   "--set", "lth.rounds=2", "--set", "lth.rewind_iter=1",
                                   "--set", "lth.iters_per_round=2", "--set", "train.val_every=100",
                                   "--no-final-eval"))
    r1 = load_checkpoint(dest / "final_synthetic_lth_75_round1.pth")
    final = load_checkpoint(dest / "final_synthetic_lth_75.pth")
    rewind = load_checkpoint(dest / "rewind_synthetic_lth_75.pth")
    assert rewind["iteration"] == 1
    assert r1["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert final["sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert all(bool((final["masks"][n] <= r1["masks"][n]).all()) for n in final["masks"])   # nested
    assert final["lth_round"] == 2 and final["iteration"] == 2


def test_cosine_schedule_with_warmup_resumes_exactly_and_can_skip_tensorboard(synthetic_root, tmp_path):
    # lr 4e-3, 6 steps, 2 warm-up steps; factors worked out by hand for steps 0..5:
    # 1/2, 2/2, then 0.5 * (1 + cos(pi * t)) at t = 0, 1/4, 2/4, 3/4
    expected = [2e-3, 4e-3, 4e-3, 4e-3 * 0.8535533905932737, 2e-3, 4e-3 * 0.14644660940672624]
    common = ("--max-iters", "6", "--set", "train.lr=4e-3", "--set", "train.lr_schedule=cosine",
              "--set", "train.warmup_iters=2", "--set", "train.tensorboard=false", "--set", "train.val_every=100",
              "--set", "train.save_every=100", "--no-final-eval")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    launch_training.main(tiny_args(synthetic_root, whole, *common))
    name = "synthetic_baseline"
    train = [r for r in read_jsonl(whole / "logs" / f"{name}.jsonl") if r["kind"] == "train"]
    assert [r["lr"] for r in train] == pytest.approx(expected)
    assert not (whole / "tb").exists()                       # train.tensorboard=false: JSON lines only
    launch_training.main(tiny_args(synthetic_root, parts, *common, "--stop-after", "3"))
    launch_training.main(tiny_args(synthetic_root, parts, *common, "--resume"))
    a, b = load_checkpoint(whole / f"final_{name}.pth"), load_checkpoint(parts / f"final_{name}.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    resumed = [r for r in read_jsonl(parts / "logs" / f"{name}.jsonl") if r["kind"] == "train"]
    assert [r["lr"] for r in resumed if r["iteration"] > 3] == pytest.approx(expected[3:])


def test_cosine_factor_values_worked_out_by_hand():
    from engine.trainer import build_scheduler, cosine_factor
    # no warm-up, 10 steps: cos(0) -> 1, halfway cos(pi/2) -> 0.5, the end and beyond -> 0
    assert cosine_factor(0, 10) == 1.0 and cosine_factor(5, 10) == pytest.approx(0.5)
    assert cosine_factor(10, 10) == pytest.approx(0.0, abs=1e-12) and cosine_factor(13, 10) == pytest.approx(0.0, abs=1e-12)
    # 4 warm-up steps: 1/4, 2/4, 3/4, 4/4, then t = (i - 4) / 6: i = 7 -> t 1/2 -> 0.5; i = 6 -> t 1/3 -> 0.75
    assert [cosine_factor(i, 10, 4) for i in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert cosine_factor(7, 10, 4) == pytest.approx(0.5) and cosine_factor(6, 10, 4) == pytest.approx(0.75)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="unknown LR schedule 'linear'"):
        build_scheduler(optimizer, 1, 0.5, schedule="linear")
    constant = build_scheduler(optimizer, 1, 0.5, constant=True, schedule="cosine", max_iters=4)
    for _ in range(3):
        optimizer.step()
        constant.step()
    assert optimizer.param_groups[0]["lr"] == 1.0                 # constant=True wins over the schedule
