"""What a method is: the `Method` base class, the run it is handed, and the file names it owns.

A method (`--method NAME`) decides, for both tools that take one:

* `create_pruned_net.py`: whether it makes a pruned file at all (`makes_pruned_file`), from which net
  (`dense_source`), which targets it takes (`check_request`: a sparsity, or for the `structured` channel
  methods a fraction of MACs or parameters removed), and how the masks (or the smaller net) are made (`prune`);
* `launch_training.py`: which config key `--max-iters` sets (`iterations_key`), the training options
  (`train_options`), the file it starts from (`start_file`), the sparsity controller the trainer gets
  (`start`), and how training runs (`train`: one `Trainer.fit`, or LTH's rounds);
* and the names of everything it writes (`files`): `{dataset}_{method}_{ratio}` (the pruned net),
  `best_` / `last_` / `final_` + that name (the trainer's checkpoints), `metrics_` + name + `.json`.

The methods themselves live in family modules (`oneshot`, `dynamic`, `lth`, `dense`) and are listed,
by name, in `methods/registry.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.controller import SparsityController
from engine.distributed import DistContext
from engine.trainer import CKPT_KINDS, Trainer, TrainOptions, TrainResult, checkpoint_path
from fileio import CheckpointError
from prune_utils.masks import MaskSet

def ratio_label(ratio: float) -> str:
    """File-name form of a ratio: `90` for 90.0, `92.5` otherwise (the original names use ints)."""
    return str(int(ratio)) if float(ratio).is_integer() else f"{ratio:g}"


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """`path`, or a one-line CheckpointError saying which file is missing (and how to make it)."""
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}{hint}")
    return path


@dataclass(frozen=True)
class RunFiles:
    """Every file name of one network: `name` and the paths under `dest` derived from it."""

    dest: Path
    name: str
    dataset: str = ""
    ratio: Optional[float] = None

    def sibling(self, suffix: str) -> Path:
        """`{dest}/{name}{suffix}`: the pruned net (`.pth`), its report (`_report.csv`), compact export, ..."""
        return self.dest / f"{self.name}{suffix}"

    @property
    def pruned(self) -> Path:
        """The pruned net create_pruned_net.py writes and launch_training.py starts from."""
        return self.sibling(".pth")

    def checkpoint(self, kind: str) -> Path:
        """`best_` / `last_` / `final_{name}.pth` (the trainer's checkpoints)."""
        return checkpoint_path(self.dest, kind, self.name)

    @property
    def metrics(self) -> Path:
        """The metrics of the default evaluation (test split, standard metrics): `metrics_{name}.json`."""
        return self.metrics_for()

    def metrics_for(self, split: str = "test", compat: str = "standard") -> Path:
        """`metrics_{name}[_{split}][_adashare].json`: each split and metric definition has its own file, so
        an evaluation of another kind never replaces the default one (contract 8)."""
        suffix = ("" if split == "test" else f"_{split}") + ("" if compat == "standard" else f"_{compat}")
        return self.dest / f"metrics_{self.name}{suffix}.json"

    def logs(self) -> list[Path]:
        """The run log and TensorBoard folder `engine.logging_utils.RunLogger` writes for this name."""
        return [self.dest / "logs" / f"{self.name}.jsonl", self.dest / "tb" / self.name]

    def derived(self, suffix: str) -> "RunFiles":
        """The files of a sub-run (e.g. an LTH round): `{name}{suffix}`."""
        return RunFiles(self.dest, f"{self.name}{suffix}", self.dataset, self.ratio)


@dataclass
class TrainingRun:
    """Everything `Method.start` / `Method.train` need, built by launch_training.py."""

    config: dict
    model: nn.Module                      # the config's net on its device, same on every rank (start may replace it)
    train_loader: DataLoader
    val_loader: Optional[DataLoader]
    loss_fn: Callable
    device: torch.device
    ctx: DistContext
    files: RunFiles
    ratio: Optional[float]                # target sparsity in percent (None for dense methods)
    seed: int = 0
    resume: bool = False
    val_split: str = "test"
    progress: Optional[bool] = None
    stop_after: Optional[int] = None
    start_file: Optional[Path] = None     # the file `start_file` chose (a pruned net), if any
    extra_state: dict = field(default_factory=dict)   # more entries for every checkpoint


@dataclass
class PruneRequest:
    """How to prune (create_pruned_net.py). Exactly one target: `target_sparsity` or `keep_ratio` (weight
    masks), `macs_removed` or `params_removed` (channel pruning); all fractions."""

    target_sparsity: Optional[float] = None
    keep_ratio: Optional[float] = None
    saliency: Optional[str] = None        # None: the method's default from the config
    arbiter: str = "unanimous"
    num_batches: int = 1
    scoring_mode: str = "batch_stats"
    macs_removed: Optional[float] = None
    params_removed: Optional[float] = None
    from_trained: bool = False            # the scored net is a trained one (--from), not a fresh one

    def __post_init__(self) -> None:
        targets = (self.target_sparsity, self.keep_ratio, self.macs_removed, self.params_removed)
        if sum(t is not None for t in targets) != 1:
            raise ValueError("give exactly one target: a sparsity (--ratio) or a keep ratio (--keep-ratio), or for "
                             "channel pruning a fraction of MACs (--macs-ratio) or of parameters (--params-ratio)")

    @property
    def structured(self) -> bool:
        """The target is a fraction of MACs or parameters removed (channel pruning)."""
        return self.macs_removed is not None or self.params_removed is not None


@dataclass
class PruneResult:
    """What a method's mask making produced.

    `masks` over the scored model's prunable weights (None when the method changes the architecture
    instead); `model`: a replacement net (a smaller dense one) or None (the scored model with `masks`
    applied); `entries`: more checkpoint entries (e.g. an architecture spec).
    """

    masks: Optional[MaskSet]
    sparsity: float
    keep_ratio: Optional[float]
    saliency: str
    info: dict[str, Any] = field(default_factory=dict)
    model: Optional[nn.Module] = None
    entries: dict[str, Any] = field(default_factory=dict)
    reads_data: bool = True               # the scores read training batches (False: data-free, e.g. magnitude)


class Method:
    """Base class of every method; the defaults describe dense training of the config's net."""

    name: str = ""
    summary: str = ""
    makes_pruned_file = False               # create_pruned_net.py makes the file training starts from
    per_task = False                        # per-task masks and an arbiter (vs one task-agnostic mask)
    structured = False                      # removes channels: a smaller dense net, MACs/params targets
    uses_ratio = True                       # --ratio names its files and sets its sparsity
    iterations_key: tuple[str, str] = ("train", "max_iters")   # the config key --max-iters sets

    # ---------------------------------------------------------------- names
    def network_name(self, dataset: str, ratio: Optional[float]) -> str:
        if not self.uses_ratio:
            return f"{dataset}_{self.name}"
        if ratio is None:
            raise ValueError(f"method {self.name!r} needs a ratio (--ratio) to name its files")
        return f"{dataset}_{self.name}_{ratio_label(ratio)}"

    def files(self, dest: str | Path, dataset: str, ratio: Optional[float]) -> RunFiles:
        return RunFiles(Path(dest), self.network_name(dataset, ratio), dataset, ratio if self.uses_ratio else None)

    # ---------------------------------------------------------------- training
    def set_iterations(self, config: dict, iterations: int) -> None:
        """Apply `--max-iters` to the config key this method trains for."""
        if iterations <= 0:
            raise ValueError(f"--max-iters must be positive, got {iterations}")
        section, key = self.iterations_key
        config[section][key] = int(iterations)

    def train_options(self, config: Mapping, **common: Any) -> TrainOptions:
        return TrainOptions.from_config(config, **common)

    def start_file(self, files: RunFiles, from_path: Optional[str]) -> Optional[Path]:
        """The file training starts from (checked to exist), or None for a fresh net."""
        return None

    def trainer_runs(self, files: RunFiles, config: Mapping) -> list[RunFiles]:
        """The names of every `Trainer` run of one training (LTH: one per round)."""
        return [files]

    def training_files(self, files: RunFiles, config: Mapping) -> list[Path]:
        """Every checkpoint a training run writes: what `--resume` continues and `--overwrite` replaces."""
        return [run.checkpoint(kind) for run in self.trainer_runs(files, config) for kind in CKPT_KINDS]

    def start(self, run: TrainingRun) -> Optional[SparsityController]:
        """Prepare `run.model` (load the start file into it, or replace it by the net the file describes)
        and return the trainer's controller (None: plain dense training)."""
        return None

    def train(self, run: TrainingRun) -> TrainResult:
        options = self.train_options(run.config, val_split=run.val_split, seed=run.seed,
                                     stop_after=run.stop_after, progress=run.progress)
        controller = self.start(run)
        extra = dict(run.extra_state)
        if run.start_file is not None:
            extra["source"] = str(run.start_file)
        if self.uses_ratio and run.ratio is not None:
            extra["target_ratio"] = float(run.ratio)
        trainer = Trainer(run.model, run.config, run.train_loader, run.loss_fn, run.device, name=run.files.name,
                          dest=run.files.dest, method=self.name, val_loader=run.val_loader, controller=controller,
                          ctx=run.ctx, options=options, extra_state=extra)
        return trainer.fit(resume=run.resume)

    # ---------------------------------------------------------------- pruning (create_pruned_net.py)
    def prune(self, model: nn.Module, config: Mapping, request: PruneRequest, batches: Any, loss_fn: Any,
              device: torch.device, generator: torch.Generator, progress: Optional[bool] = None,
              structure: Any = None) -> PruneResult:
        raise ValueError(f"method {self.name!r} is not made by create_pruned_net.py ({self.summary})")

    def check_request(self, request: PruneRequest) -> None:
        """Refuse a target this method cannot reach (before any work): weight masks take a sparsity or keep
        ratio, channel pruning a fraction of MACs or parameters."""
        if request.structured and not self.structured:
            raise ValueError(f"--macs-ratio / --params-ratio apply to the channel-pruning methods, not {self.name} "
                             f"(use --ratio R for its sparsity)")

    def reads_data(self, config: Mapping, request: PruneRequest) -> bool:
        """Whether `prune` reads training batches (the tool then makes them before the net)."""
        return True

    def dense_source(self, dest: str | Path, dataset: str, from_path: Optional[str]) -> Optional[Path]:
        """The trained net create_pruned_net.py prunes (checked to exist), or None for a fresh net."""
        return require_file(Path(from_path), "dense checkpoint") if from_path else None

    def paper_keep_ratio(self, config: Mapping, ratio_percent: float) -> float:
        raise ValueError(f"--paper-keep-ratios does not apply to {self.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


__all__ = ["Method", "PruneRequest", "PruneResult", "RunFiles", "TrainingRun",
           "ratio_label", "require_file"]
