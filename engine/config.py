"""Configuration: one YAML per dataset, `--set key=value` overrides, validation with one-line errors.

A config is a plain nested dict (so it can be stored in checkpoints as plain types). The schema is
the set of keys in `configs/nyuv2.yaml`-style files: `SCHEMA` below names every key and its type, so
a typo or a wrong type fails at start-up with the key's dotted name rather than deep inside a run.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from fileio.normals import ENCODED_NORMALS_DATASETS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
DATA_ENV_VAR = "DISPARSE_DATA"
DATASETS = ("nyuv2", "cityscapes", "taskonomy", "synthetic")
TASK_NAMES = ("seg", "sn", "depth", "keypoint", "edge")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


_NUM = (int, float)
_OPT_STR = (str, type(None))

# Dotted key -> accepted types. `dict` leaves are free-form mappings validated separately.
SCHEMA: dict[str, Any] = {
    "dataset": str, "data_root": _OPT_STR, "tasks": list, "num_classes": list, "loss_weights": list,
    "model.width_mult": _NUM, "model.channels_last": bool, "model.dropout": _NUM,
    "data.crop_h": int, "data.crop_w": int, "data.image_shape": list, "data.batch_size": int,
    "data.test_batch_size": int, "data.num_workers": int, "data.mirror_normals": bool, "data.drop_last": bool,
    "data.cache": bool,
    "loss.normals_space": str,
    "train.max_iters": int, "train.lr": _NUM, "train.weight_decay": _NUM, "train.lr_decay_every": int,
    "train.lr_decay_rate": _NUM, "train.val_every": int, "train.save_every": int, "train.log_every": int,
    "train.precision": str, "train.lr_schedule": str, "train.warmup_iters": int, "train.tensorboard": bool,
    "retrain.iters": int, "retrain.lr": _NUM,
    "dynamic.end": int, "dynamic.interval": int, "dynamic.drop_fraction": _NUM, "dynamic.growth_splits": int,
    "pruning.num_batches": int, "pruning.batch_size": int, "pruning.saliency": str, "pruning.pt_saliency": str,
    "pruning.arbiter": str, "pruning.iou_keep_ratio": _NUM, "pruning.paper_keep_ratios": dict,
    "lth.rounds": int, "lth.rewind_iter": int, "lth.iters_per_round": int,
    "analysis.num_batches": int,
    "eval.metrics_compat": str, "eval.delta_m_definition": str,
    "taskonomy.unlabelled": str, "taskonomy.normals_where_depth_invalid": str, "taskonomy.rgb_interpolation": str,
    "synthetic.n_train": int, "synthetic.n_test": int, "synthetic.size": list, "synthetic.seed": int,
    "synthetic.scene_kind": str,
    "dist.timeout_s": (int, float, type(None)),
}
OPTIONAL_SECTIONS = ("synthetic", "taskonomy", "dist")
# Keys that may be absent (their defaults apply: the generator's scene kind, head dropout 0.5, no cache, the
# step schedule, no warm-up, TensorBoard on).
OPTIONAL_KEYS = ("synthetic.scene_kind", "model.dropout", "data.cache", "train.lr_schedule", "train.warmup_iters",
                 "train.tensorboard")
CHOICES = {
    "dataset": DATASETS, "train.precision": ("fp32", "bf16", "amp"), "train.lr_schedule": ("step", "cosine"),
    "eval.metrics_compat": ("standard", "adashare"), "eval.delta_m_definition": ("task_mean", "metric_mean"),
    "loss.normals_space": ("decoded", "encoded"),
    "taskonomy.unlabelled": ("ignore", "class0"), "taskonomy.normals_where_depth_invalid": ("mask", "keep"),
    "taskonomy.rgb_interpolation": ("area", "nearest"), "synthetic.scene_kind": ("shared", "disentangled"),
}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested config as `{dotted key: value}` (free-form `dict` leaves of the schema stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and SCHEMA.get(dotted) is not dict:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _type_name(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate(config: Mapping) -> None:
    """Raise ConfigError (one line, naming the key) for unknown keys, wrong types or inconsistent lists."""
    flat = flatten(config)
    for key in flat:
        if key not in SCHEMA:
            raise ConfigError(f"unknown config key {key!r}")
    for key, types in SCHEMA.items():
        if key.split(".")[0] in OPTIONAL_SECTIONS and key.split(".")[0] not in config:
            continue
        if key not in flat:
            if key in OPTIONAL_KEYS:
                continue
            raise ConfigError(f"config key {key!r} is missing")
        value = flat[key]
        if isinstance(value, bool) and types is not bool and bool not in (types if isinstance(types, tuple) else ()):
            raise ConfigError(f"config key {key!r} must be {_type_name(types)}, got {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"config key {key!r} must be {_type_name(types)}, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    tasks, classes, weights = config["tasks"], config["num_classes"], config["loss_weights"]
    if not tasks:
        raise ConfigError("config key 'tasks' must list at least one task")
    if len({len(tasks), len(classes), len(weights)}) != 1:
        raise ConfigError(f"config keys 'tasks', 'num_classes', 'loss_weights' must have the same length, "
                          f"got {len(tasks)}, {len(classes)}, {len(weights)}")
    for task in tasks:
        if task not in TASK_NAMES:
            raise ConfigError(f"config key 'tasks': unknown task {task!r} (expected some of {', '.join(TASK_NAMES)})")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"config key 'tasks' lists a task twice: {tasks}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in classes):
        raise ConfigError(f"config key 'num_classes' must hold positive ints, got {classes}")
    if not all(isinstance(w, _NUM) and not isinstance(w, bool) for w in weights):
        raise ConfigError(f"config key 'loss_weights' must hold numbers, got {weights}")
    shape = config["data"]["image_shape"]
    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError(f"config key 'data.image_shape' must be [height, width], got {shape}")
    if flat["loss.normals_space"] == "encoded" and config["dataset"] not in ENCODED_NORMALS_DATASETS:
        raise ConfigError(f"config key 'loss.normals_space': 'encoded' exists only for datasets whose original "
                          f"normals were encoded PNGs ({', '.join(ENCODED_NORMALS_DATASETS)}); "
                          f"{config['dataset']} normals are already decoded in the original")
    for key in ("data.crop_h", "data.crop_w", "data.batch_size", "data.test_batch_size", "train.max_iters",
                "pruning.num_batches", "analysis.num_batches", "pruning.batch_size", "dynamic.interval", "dynamic.growth_splits"):
        if flat[key] <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {flat[key]}")
    if "model.dropout" in flat and not 0 <= flat["model.dropout"] < 1:
        raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {flat['model.dropout']}")
    if flat.get("train.warmup_iters", 0) < 0:
        raise ConfigError(f"config key 'train.warmup_iters' must be >= 0, got {flat['train.warmup_iters']}")
    if not 0 < flat["model.width_mult"] <= 4:
        raise ConfigError(f"config key 'model.width_mult' must be in (0, 4], got {flat['model.width_mult']}")
    timeout = flat.get("dist.timeout_s")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"config key 'dist.timeout_s' must be a positive number of seconds or null, got {timeout}")
    _check_paper_keep_ratios(flat["pruning.paper_keep_ratios"])


def _check_paper_keep_ratios(table: Any) -> None:
    """`pruning.paper_keep_ratios`: method -> {sparsity in percent: per-task keep ratio in (0, 1]}."""
    key = "pruning.paper_keep_ratios"
    if not isinstance(table, Mapping):
        raise ConfigError(f"config key {key!r} must map method names to {{sparsity: keep ratio}} tables, got {table!r}")
    for method, ratios in table.items():
        if not isinstance(ratios, Mapping):
            raise ConfigError(f"config key '{key}.{method}' must map sparsities in percent to keep ratios, "
                              f"got {ratios!r}")
        for sparsity, keep in ratios.items():
            where = f"{key}.{method}.{sparsity}"
            try:
                level = float(sparsity)
            except (TypeError, ValueError):
                raise ConfigError(f"config key {where!r}: the sparsity must be a number in percent, "
                                  f"got {sparsity!r}") from None
            if not 0 < level < 100:
                raise ConfigError(f"config key {where!r}: the sparsity must be in (0, 100) percent, got {sparsity!r}")
            if isinstance(keep, bool) or not isinstance(keep, _NUM) or not 0 < keep <= 1:
                raise ConfigError(f"config key {where!r} must be a keep ratio in (0, 1], got {keep!r}")


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so `1e-4`, `true`, `[seg, sn]` get their types)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key not in SCHEMA:
        raise ConfigError(f"unknown config key {key!r} in --set {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:   # malformed YAML, or a tag such as !!python/object that safe_load refuses
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise ConfigError(f"--set {key}: the value {raw!r} is not valid YAML ({problem}); quote strings, "
                          f"write lists as [a, b]") from None
    if SCHEMA[key] is _NUM or SCHEMA[key] == _NUM:
        # YAML reads `1e-4` (no dot) as a string: accept it as the float it plainly means.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
    return key, value


def config_path_for(dataset: str) -> Path:
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
    return CONFIG_DIR / f"{dataset}.yaml"


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def resolve_data_root(config: dict, cli_root: str | None) -> None:
    """`--data-root`, then $DISPARSE_DATA, then the file's value; relative paths are project-relative."""
    root = cli_root or os.environ.get(DATA_ENV_VAR) or config.get("data_root")
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_absolute() and not cli_root and not os.environ.get(DATA_ENV_VAR):
            path = PROJECT_ROOT / path
        root = str(path)
    config["data_root"] = root


def load_config(dataset: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: Iterable[str] = (), data_root: str | None = None) -> dict:
    """The resolved, validated config for `--dataset NAME` or `--config FILE`, with `--set` overrides."""
    if config_file is None and dataset is None:
        raise ConfigError("give --dataset NAME or --config FILE")
    config = read_yaml(Path(config_file) if config_file else config_path_for(dataset))
    if dataset is not None and config_file is not None and config.get("dataset") != dataset:
        raise ConfigError(f"--dataset {dataset!r} does not match the config file's dataset {config.get('dataset')!r}")
    config = copy.deepcopy(config)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(config, key, value)
    validate(config)
    resolve_data_root(config, data_root)
    return config


def task_classes(config: Mapping) -> dict[str, int]:
    """Ordered task -> output channels, as `MultiTaskNet` takes it."""
    return dict(zip(config["tasks"], config["num_classes"]))


def loss_weights(config: Mapping) -> dict[str, float]:
    return {t: float(w) for t, w in zip(config["tasks"], config["loss_weights"])}


def task_list(text: str | None, config: Mapping, flag: str = "tasks") -> list[str] | None:
    """A comma-separated list of the config's tasks (e.g. `--tasks seg,depth`) in the config's order, or None."""
    if text is None:
        return None
    tasks = [t for t in text.split(",") if t]
    if not tasks or any(t not in config["tasks"] for t in tasks) or len(set(tasks)) != len(tasks):
        raise ConfigError(f"{flag} must name distinct tasks of the config ({','.join(config['tasks'])}), got {text!r}")
    return [t for t in config["tasks"] if t in tasks]


def restrict_tasks(config: Mapping, tasks: Sequence[str]) -> dict:
    """A copy of `config` for a subset of its tasks (in the config's order): `tasks`, `num_classes` and
    `loss_weights` keep those tasks' entries. For a net extracted for some tasks (docs/CHANNELS.md)."""
    unknown = [t for t in tasks if t not in config["tasks"]]
    if unknown or not tasks:
        raise ConfigError(f"tasks {list(tasks)} are not a non-empty subset of the config's {list(config['tasks'])}")
    keep = [i for i, t in enumerate(config["tasks"]) if t in tasks]
    restricted = copy.deepcopy(dict(config))
    for key in ("tasks", "num_classes", "loss_weights"):
        restricted[key] = [config[key][i] for i in keep]
    return restricted


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and adjust a config: --dataset, --config, --set, --data-root."""
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="dataset name; loads configs/<dataset>.yaml")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="config YAML to use instead of configs/<dataset>.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted keys, YAML-typed (e.g. --set train.lr=1e-4); repeatable")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="dataset root; overrides $DISPARSE_DATA and the config's data_root")


def config_from_args(args: argparse.Namespace) -> dict:
    """The config `add_config_arguments`' flags describe."""
    return load_config(dataset=args.dataset, config_file=args.config, overrides=args.overrides,
                       data_root=args.data_root)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m engine.config --dataset NAME [--set k=v]`: print the resolved, validated config."""
    parser = argparse.ArgumentParser(description="Print the resolved configuration (after --set overrides and "
                                                 "data-root resolution).")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:          # the one error a config can have: one line, exit 2 (as every tool)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
