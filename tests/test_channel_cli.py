"""Channel pruning through the tools (methods/channel.py): create_pruned_net --macs-ratio / --params-ratio /
--tasks, launch_training, eval_pruned_net, iou_analysis and export_onnx on one tiny disparse_channel net.

Independent references: MACs counted by forward hooks on the rebuilt net (tests/helpers.counted_macs),
parameters summed from the file's own tensors, the architecture read back from the weight shapes, channel
IoU recomputed from the file's per-task proposals, onnxruntime run here on the written ONNX file.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import create_pruned_net
import eval_pruned_net
import export_onnx
import iou_analysis
import launch_training
from models import MultiTaskNet
from tests.helpers import counted_macs, tiny_run_args

CROP = (32, 32)
SCORING = ["--set", "pruning.num_batches=1", "--set", "pruning.batch_size=4"]


def load(path):
    """A checkpoint the way a user without our code would: weights_only=True, net rebuilt from the spec."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    net = MultiTaskNet(dict(zip(data["tasks"], data["num_classes"])), architecture=data["architecture"])
    net.load_state_dict(data["model"])
    return data, net.eval()


def tool_args(root, dest, *extra, drop=()):
    """The tiny run's flags without those in `drop` (with their values), for tools that do not take them."""
    args = tiny_run_args(root, dest, *SCORING, *extra)
    for flag in drop:
        at = args.index(flag)
        del args[at:at + 2]
    return args


@pytest.fixture(scope="module")
def pruned(synthetic_root, tmp_path_factory):
    dest = tmp_path_factory.mktemp("channel")
    assert create_pruned_net.main(tool_args(synthetic_root, dest, "--method", "disparse_channel",
                                            "--macs-ratio", "50", "--tasks", "seg")) == 0
    return dest


def test_the_file_reloads_without_our_code_and_removes_half_the_macs(pruned):
    data, net = load(pruned / "synthetic_disparse_channel_50.pth")
    assert "masks" not in data and data["method"] == "disparse_channel"
    assert set(data) >= {"architecture", "macs_removed", "params_removed", "channels"}
    dense = MultiTaskNet(dict(zip(data["tasks"], data["num_classes"])), width_mult=0.0625)
    removed = 1 - counted_macs(net, CROP) / counted_macs(dense, CROP)
    assert abs(removed - 0.5) <= 0.01                        # the target, within 1 point
    assert removed == pytest.approx(data["macs_removed"], abs=1e-12)
    params = sum(v.numel() for k, v in data["model"].items() if "running" not in k and "num_batches" not in k)
    dense_params = sum(p.numel() for p in dense.parameters())
    assert 1 - params / dense_params == pytest.approx(data["params_removed"], abs=1e-12)
    # the spec matches the weight shapes it describes
    assert data["model"]["backbone.blocks.3.1.conv1.weight"].shape[0] == \
        data["architecture"]["backbone"]["block_widths"][3][1]
    assert data["model"]["heads.sn.branches.2.conv2.weight"].shape[0] == data["architecture"]["heads"]["sn"][2][1]


def test_trains_then_evaluates_with_its_cost(pruned, synthetic_root):
    assert launch_training.main(tool_args(synthetic_root, pruned, "--method", "disparse_channel", "--ratio", "50",
                                          "--max-iters", "2", "--no-final-eval")) == 0
    best, net = load(pruned / "best_synthetic_disparse_channel_50.pth")
    pruned_data, _ = load(pruned / "synthetic_disparse_channel_50.pth")
    assert best["architecture"] == pruned_data["architecture"] and best["iteration"] == 2
    changed = [k for k, v in best["model"].items() if v.is_floating_point()
               and not torch.equal(v, pruned_data["model"][k])]
    assert any(k.endswith("conv1.weight") for k in changed)             # it trained
    assert eval_pruned_net.main(tool_args(synthetic_root, pruned, "--method", "disparse_channel", "--ratio", "50",
                                          "--latency-runs", "2")) == 0
    metrics = json.loads((pruned / "metrics_synthetic_disparse_channel_50.json").read_text())
    assert set(metrics) >= {"seg", "sn", "depth", "cost"}
    cost = metrics["cost"]
    assert cost["params"] == sum(p.numel() for p in net.parameters())
    assert cost["macs"] == counted_macs(net, tuple(int(s) for s in cost["input_size"].split("x")))
    assert cost["macs_removed"] == pytest.approx(pruned_data["macs_removed"])
    assert cost["latency_ms"] > 0 and cost["latency_runs"] == 2


def test_extraction_keeps_one_head_and_evaluates_on_its_task(pruned, synthetic_root):
    data, net = load(pruned / "synthetic_disparse_channel_50_seg.pth")
    full, full_net = load(pruned / "synthetic_disparse_channel_50.pth")
    assert data["tasks"] == ["seg"] and list(net.heads) == ["seg"] and data["extracted_tasks"] == ["seg"]
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in full_net.heads["seg"].parameters()) + \
        sum(p.numel() for p in full_net.backbone.parameters()) + 1
    assert eval_pruned_net.main(tool_args(synthetic_root, pruned, "--checkpoint",
                                          str(pruned / "synthetic_disparse_channel_50_seg.pth"),
                                          "--latency-runs", "0")) == 0
    metrics = json.loads((pruned / "metrics_synthetic_disparse_channel_50_seg.json").read_text())
    assert set(metrics) & {"seg", "sn", "depth"} == {"seg"}


def test_extracting_from_a_written_file_matches_extracting_at_pruning_time(pruned, synthetic_root, tmp_path):
    assert create_pruned_net.main(tool_args(synthetic_root, tmp_path, "--method", "disparse_channel", "--from",
                                            str(pruned / "synthetic_disparse_channel_50.pth"), "--tasks", "seg")) == 0
    again, _ = load(tmp_path / "synthetic_disparse_channel_50_seg.pth")
    first, _ = load(pruned / "synthetic_disparse_channel_50_seg.pth")
    assert again["architecture"] == first["architecture"]
    assert all(torch.equal(again["model"][k], v) for k, v in first["model"].items())


def test_channel_iou_from_the_file(pruned, synthetic_root, tmp_path):
    assert iou_analysis.main(tool_args(synthetic_root, tmp_path, "--from", str(pruned / "synthetic_disparse_channel_50.pth"),
                                       "--no-plot", "--no-progress", drop=["--progress"])) == 0
    record = json.loads((tmp_path / "synthetic_channel_iou.json").read_text())
    data, _ = load(pruned / "synthetic_disparse_channel_50.pth")
    shared = [g for g in data["channels"]["groups"] if g["owner"] == "backbone"]
    assert [layer["name"] for layer in record["layers"]] == [g["name"] for g in shared]
    for group, layer in zip(shared, record["layers"]):
        votes = torch.stack([group["proposals"][t] for t in ("seg", "sn", "depth")])
        expected = int(votes.all(0).sum()) / int(votes.any(0).sum())
        assert layer["all"] == pytest.approx(expected)


def test_onnx_export_matches_pytorch(pruned, synthetic_root, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "seg.onnx"
    assert export_onnx.main(tool_args(synthetic_root, tmp_path, "--checkpoint",
                                      str(pruned / "synthetic_disparse_channel_50_seg.pth"), "--out", str(out),
                                      drop=["--progress", "--dest"])) == 0
    _, net = load(pruned / "synthetic_disparse_channel_50_seg.pth")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["img"] and [o.name for o in session.get_outputs()] == ["seg"]
    image = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(5))
    (got,) = session.run(None, {"img": image.numpy()})
    with torch.no_grad():
        expected = net(image)["seg"].numpy()
    assert got.shape == expected.shape and got.shape[:2] == (3, 8)       # any batch and size (dynamic axes)
    assert np.abs(expected).max() > 1e-2                   # not a vacuous comparison of zeros
    assert np.abs(got - expected).max() <= 1e-4


def test_params_ratio_and_the_baselines(synthetic_root, tmp_path):
    for method in ("uniform", "channel_magnitude"):
        assert create_pruned_net.main(tool_args(synthetic_root, tmp_path, "--method", method,
                                                "--params-ratio", "40")) == 0
        data, net = load(tmp_path / f"synthetic_{method}_40.pth")
        dense = MultiTaskNet(dict(zip(data["tasks"], data["num_classes"])), width_mult=0.0625)
        removed = 1 - sum(p.numel() for p in net.parameters()) / sum(p.numel() for p in dense.parameters())
        assert abs(removed - 0.40) <= 0.01 and removed == pytest.approx(data["params_removed"])
    assert data["channels"]["importance"] == "magnitude"


@pytest.mark.parametrize("flags, message", [
    (["--method", "disparse_static", "--macs-ratio", "50"], "apply to the channel-pruning methods"),
    (["--method", "disparse_channel"], "give --macs-ratio R or --params-ratio R"),
    (["--method", "snip", "--tasks", "seg"], "--tasks (extraction) applies to the channel-pruning methods"),
    (["--method", "uniform", "--macs-ratio", "50", "--tasks", "seg,edge"], "--tasks must name"),
    (["--method", "channel_snip", "--macs-ratio", "50", "--saliency", "taylor"], "always scores with 'snip'"),
    (["--method", "uniform", "--macs-ratio", "50", "--export-compact"], "--export-compact applies to masked"),
])
def test_bad_requests_are_one_line_errors(synthetic_root, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        create_pruned_net.main(tool_args(synthetic_root, tmp_path, *flags))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not list(tmp_path.glob("*.pth"))


def test_training_needs_a_channel_pruned_net_for_all_tasks(pruned, synthetic_root, tmp_path, capsys):
    from engine.config import config_from_args
    from fileio import atomic_save, make_checkpoint
    from models import build_model

    config = config_from_args(launch_training.build_parser().parse_args(tool_args(synthetic_root, tmp_path)))
    atomic_save(make_checkpoint(build_model(config).state_dict(), config, "baseline"), tmp_path / "dense.pth")
    for source, message in ((pruned / "synthetic_disparse_channel_50_seg.pth", "holds a net extracted for ['seg']"),
                            (tmp_path / "dense.pth", "holds no architecture spec")):
        with pytest.raises(SystemExit) as exit_info:
            launch_training.main(tool_args(synthetic_root, tmp_path, "--method", "disparse_channel", "--ratio", "50",
                                           "--from", str(source), "--max-iters", "1"))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert [p.name for p in tmp_path.glob("*.pth")] == ["dense.pth"]
