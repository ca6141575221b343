"""Config loading: every dataset file validates, overrides are typed, bad values give one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.config import DATASETS, ConfigError, load_config, task_classes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_validates(dataset):
    config = load_config(dataset)
    assert config["dataset"] == dataset
    assert len(config["tasks"]) == len(config["num_classes"]) == len(config["loss_weights"])


def test_reference_values_are_in_the_configs():
    nyu, city, tk = load_config("nyuv2"), load_config("cityscapes"), load_config("taskonomy")
    assert task_classes(nyu) == {"seg": 40, "sn": 3} and nyu["loss_weights"] == [1.0, 20.0]
    assert (nyu["data"]["crop_h"], nyu["data"]["image_shape"], nyu["train"]["max_iters"]) == (321, [480, 640], 20000)
    assert (nyu["train"]["lr"], nyu["train"]["lr_decay_every"], nyu["train"]["lr_decay_rate"]) == (1e-3, 4000, 0.5)
    assert (nyu["dynamic"]["end"], nyu["dynamic"]["interval"], nyu["retrain"]["lr"]) == (15000, 50, 1e-5)
    assert task_classes(city) == {"seg": 19, "depth": 1} and city["train"]["lr"] == 1e-4
    assert tk["loss_weights"] == [1.0, 3.0, 2.0, 7.0, 7.0] and tk["train"]["max_iters"] == 100000
    assert (tk["dynamic"]["end"], tk["dynamic"]["interval"], tk["retrain"]["iters"]) == (75000, 250, 4000)
    assert tk["pruning"]["pt_saliency"] == "grad_weight2" and nyu["pruning"]["pt_saliency"] == "magnitude"
    assert nyu["pruning"]["paper_keep_ratios"]["disparse_static"][90] == 0.080
    assert city["pruning"]["paper_keep_ratios"]["disparse_pt"][30] == 0.644
    assert tk["pruning"]["paper_keep_ratios"]["disparse_static"][90] == 0.097


def test_overrides_are_typed_and_dotted():
    config = load_config("nyuv2", overrides=["train.lr=1e-4", "model.width_mult=0.25",
                                             "tasks=[seg]", "num_classes=[40]", "loss_weights=[1]"])
    assert config["train"]["lr"] == 1e-4 and config["model"]["width_mult"] == 0.25
    assert config["tasks"] == ["seg"]


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("DISPARSE_DATA", raising=False)
    assert load_config("nyuv2")["data_root"] is None
    assert load_config("synthetic")["data_root"] == str(ROOT / "data" / "synthetic")
    monkeypatch.setenv("DISPARSE_DATA", str(tmp_path / "env"))
    assert load_config("nyuv2")["data_root"] == str(tmp_path / "env")
    assert load_config("nyuv2", data_root=str(tmp_path / "cli"))["data_root"] == str(tmp_path / "cli")


@pytest.mark.parametrize("overrides,message", [
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train.lr=fast"], "'train.lr' must be int or float"),
    (["train.max_iters=1.5"], "'train.max_iters' must be int"),
    (["num_classes=[40]"], "'tasks', 'num_classes', 'loss_weights' must have the same length"),
    (["tasks=[seg, colour]"], "unknown task 'colour'"),
    (["eval.metrics_compat=paper"], "must be one of standard, adashare"),
    (["model.channels_last=1"], "'model.channels_last' must be bool"),
    (["oops"], "--set expects key=value"),
])
def test_bad_overrides_raise_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
        load_config("nyuv2", overrides=overrides)
    assert "\n" not in str(info.value)


def test_bad_config_file(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "nyuv2.yaml").read_text())
    config["train"]["colour"] = "red"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="unknown config key 'train.colour'"):
        load_config(config_file=path)
    del config["train"]["colour"]
    del config["dynamic"]["end"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="'dynamic.end' is missing"):
        load_config(config_file=path)
    path.write_text("tasks: [seg\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file=path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=tmp_path / "absent.yaml")


@pytest.mark.parametrize("args,message", [
    (["--dataset", "nyuv2", "--set", "loss_weights=[1, 2, 3]"], "must have the same length"),
    (["--dataset", "nyuv2", "--set", "train.lr=x"], "'train.lr' must be int or float"),
    (["--config", "missing.yaml"], "config file not found"),
])
def test_cli_reports_bad_config_in_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "engine.config", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_prints_resolved_config():
    proc = subprocess.run([sys.executable, "-m", "engine.config", "--dataset", "cityscapes", "--set", "train.lr=2e-4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["train"]["lr"] == 2e-4
