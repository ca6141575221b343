"""The seams of docs/ARCHITECTURE.md: the task structure, the method registry (names, file names, --max-iters
keys, training options), arbiters serving static pruning and growth alike, and the tools' main(argv) -> int."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.config import load_config
from methods.registry import METHODS, get_method, method_names, pruning_methods
from prune_utils.arbiters import ARBITERS, get_arbiter, select_growth
from prune_utils.structure import TaskStructure


class Toy(nn.Module):
    """A hand-written multitask net: a shared trunk and a two-layer head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Conv2d(4, 2, 1), nn.Conv2d(2, 1, 1)) for t in ("a", "b")})


def test_structure_from_the_module_tree():
    s = TaskStructure.from_model(Toy())
    assert s.tasks == ("a", "b")
    assert s.shared == ("backbone.0.weight", "backbone.2.weight")
    assert s.own("b") == ("heads.b.0.weight", "heads.b.1.weight")
    assert s.pool("a") == ("backbone.0.weight", "backbone.2.weight", "heads.a.0.weight", "heads.a.1.weight")
    assert [s.part(n) for n in s.params] == ["backbone", "backbone", "a", "a", "b", "b"]
    assert s.side_layers == frozenset() and s.fully_shared()


def test_structure_core_constructor_and_errors():
    # ownership by mapping: a weight used by two of three tasks is shared, but not by all of them
    s = TaskStructure({"trunk": {"a", "b", "c"}, "ab": {"a", "b"}, "head_c": {"c"}}, ["a", "b", "c"])
    assert s.shared == ("trunk", "ab") and s.pool("c") == ("trunk", "head_c") and not s.fully_shared()
    with pytest.raises(ValueError, match="no task uses"):
        TaskStructure({"w": set()}, ["a"])
    with pytest.raises(ValueError, match="not among the tasks"):
        TaskStructure({"w": {"z"}}, ["a"])
    with pytest.raises(ValueError, match="no head for task"):
        s.pool("d")
    with pytest.raises(ValueError, match="not a prunable weight"):
        s.part("nope")
    with pytest.raises(ValueError, match="backbone. module and .heads. mapping"):
        TaskStructure.from_model(nn.Linear(2, 2))


def test_registry_lists_every_method_once_with_its_file_names(tmp_path):
    channel = ("disparse_channel", "channel_snip", "channel_taylor", "channel_magnitude", "uniform")
    assert method_names() == ("baseline", "disparse_static", "disparse_pt", "disparse_dynamic", "snip", "random",
                              "magnitude", "rigl", "lth", *channel)
    assert pruning_methods() == ("disparse_static", "disparse_pt", "snip", "random", "magnitude", *channel)
    assert method_names(lambda m: m.structured) == channel
    assert get_method("disparse_channel").files(tmp_path, "nyuv2", 50).pruned == tmp_path / "nyuv2_disparse_channel_50.pth"
    files = get_method("disparse_static").files(tmp_path, "nyuv2", 92.5)
    assert files.pruned == tmp_path / "nyuv2_disparse_static_92.5.pth"
    assert files.checkpoint("best") == tmp_path / "best_nyuv2_disparse_static_92.5.pth"
    assert files.metrics == tmp_path / "metrics_nyuv2_disparse_static_92.5.json"
    assert get_method("baseline").files(tmp_path, "nyuv2", 90).name == "nyuv2_baseline"
    assert get_method("snip").files(tmp_path, "cityscapes", 90.0).name == "cityscapes_snip_90"
    with pytest.raises(ValueError, match="unknown method"):
        get_method("grasp")


def test_max_iters_and_training_options_per_method():
    config = load_config("synthetic")
    for name, key in (("baseline", ("train", "max_iters")), ("disparse_pt", ("retrain", "iters")),
                      ("lth", ("lth", "iters_per_round")), ("rigl", ("train", "max_iters"))):
        get_method(name).set_iterations(config, 7)
        assert config[key[0]][key[1]] == 7, name
    with pytest.raises(ValueError, match="must be positive"):
        get_method("baseline").set_iterations(config, 0)
    config["retrain"].update(iters=11, lr=2e-5)
    pt = get_method("disparse_pt").train_options(config, seed=3)
    assert (pt.max_iters, pt.lr, pt.constant_lr, pt.seed) == (11, 2e-5, True, 3)
    static = get_method("disparse_static").train_options(config)
    assert (static.max_iters, static.lr, static.constant_lr) == (7, config["train"]["lr"], False)


def test_start_files_and_sources_are_checked_before_any_work(tmp_path):
    files = get_method("snip").files(tmp_path, "synthetic", 90)
    with pytest.raises(ValueError, match=r"pruned checkpoint not found: .*synthetic_snip_90\.pth"):
        get_method("snip").start_file(files, None)
    assert get_method("disparse_dynamic").start_file(files, None) is None
    with pytest.raises(ValueError, match=r"dense checkpoint not found: .*final_synthetic_baseline\.pth"):
        get_method("disparse_pt").dense_source(tmp_path, "synthetic", None)
    assert get_method("disparse_static").dense_source(tmp_path, "synthetic", None) is None
    with pytest.raises(ValueError, match="not made by create_pruned_net"):
        get_method("rigl").prune(None, {}, None, None, None, None, None)


def test_one_arbiter_object_decides_masks_and_growth():
    # static: majority of three keeps the positions with at least two votes
    votes = {t: {"w": torch.tensor(m)} for t, m in (("a", [1, 1, 0, 0]), ("b", [1, 0, 1, 0]), ("c", [0, 1, 1, 0]))}
    assert ARBITERS["majority"](votes)["w"].tolist() == [True, True, True, False]
    # growth through the same object. Ranks by descending score: a -> (0, 3, 1, 2), b -> (2, 1, 3, 0).
    # majority of 2 tasks = 1 vote: order by the best rank (0, 1, 1, 0), then rank sum, then index -> 0, 3
    a, b = torch.tensor([4.0, 1.0, 3.0, 2.0]), torch.tensor([2.0, 3.0, 1.0, 4.0])
    candidates = torch.tensor([True, True, True, True])
    grown = ARBITERS["majority"].select_growth(candidates, [a, b], 2)
    assert grown.tolist() == select_growth(candidates, [a, b], 2, quorum=1).tolist() == [0, 3]
    # a quorum of 2: order by the worse rank (2, 3, 3, 2), then rank sum (2 and 2), then index -> 0
    assert get_arbiter(2).select_growth(candidates, [a, b], 1).tolist() == [0]
    with pytest.raises(ValueError, match="no vote threshold"):
        ARBITERS["mean_score"].select_growth(candidates, [a, b], 1)


def test_tools_main_returns_zero_and_exits_two_on_user_errors(tmp_path, capsys):
    import eval_pruned_net
    import iou_analysis

    with pytest.raises(SystemExit) as exc:
        iou_analysis.main(["--dataset", "synthetic", "--from", str(tmp_path / "absent.pth")])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: checkpoint not found")
    with pytest.raises(SystemExit) as exc:
        eval_pruned_net.main(["--dataset", "synthetic"])
    assert exc.value.code == 2
    assert "give --checkpoint PATH" in capsys.readouterr().err
    assert all(Path(f"{tool}.py").is_file() for tool in ("launch_training", "create_pruned_net", "eval_pruned_net",
                                                        "iou_analysis", "static_similarity"))
    assert set(METHODS) == set(method_names())
