r"""Channel pruning (structured DiSparse): methods that remove whole channels and write a smaller dense net.

| method | network scored | channel scores | selection |
|---|---|---|---|
| `disparse_channel` | fresh net (or `--from`) | per task, each task's own loss: `snip` (default; `taylor` with `--from`) or `--saliency taylor/magnitude` | per-task top-k over backbone + own head, backbone by the arbiter |
| `channel_snip`, `channel_taylor`, `channel_magnitude` | fresh net (or `--from`) | the weighted summed loss (magnitude: group L1) | one global ranking |
| `uniform` | – | group L1, to pick the channels inside a group | every width scaled alike |

`create_pruned_net.py --macs-ratio R` (or `--params-ratio R`) searches the selection so that R % of the
MACs (counted at the config's crop) or of the parameters go, within 1 point, and writes
`{dataset}_{method}_{R}.pth`: the smaller net's weights with its `architecture` spec, `macs_removed`,
`params_removed` and the per-group `channels` report (docs/ARCHITECTURE.md contract 11; no masks, no
pickled modules). `--tasks T` also writes the net extracted for those tasks. `launch_training.py` builds the
net from the spec and trains it densely (no sparsity controller); every other tool builds it the same way
(`methods.pipeline.open_net`). docs/CHANNELS.md describes groups, scores, selection and extraction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from engine.config import loss_weights, restrict_tasks
from fileio import CheckpointError
from prune_utils.channel_groups import channel_groups
from prune_utils.channel_importance import get_channel_importance
from prune_utils.channel_pruning import (CHECKPOINT_KEYS, ChannelPruneResult, extract_tasks, get_channel_method,
                                         method_importance, prune_channels, score_for_method)
from prune_utils.structure import TaskStructure

from .base import PruneRequest, PruneResult, RunFiles, TrainingRun
from .oneshot import OneShotPruning
from .outputs import claim_outputs
from .pipeline import open_net, pruned_outputs, write_pruned_net


def mac_input_size(config: Mapping) -> tuple[int, int]:
    """The input MACs are counted at: the config's training crop (the fraction removed barely depends on it)."""
    return int(config["data"]["crop_h"]), int(config["data"]["crop_w"])


def as_prune_result(pruned: ChannelPruneResult, importance: Optional[str], reads_data: bool = False) -> PruneResult:
    """A smaller dense net as the registry's result: no masks, the net itself, its checkpoint entries."""
    return PruneResult(masks=None, sparsity=0.0, keep_ratio=None, saliency=importance or "", model=pruned.model,
                       entries=pruned.checkpoint_fields(), reads_data=reads_data)


class ChannelPruning(OneShotPruning):
    """A method whose create_pruned_net.py step removes channels (`prune_utils.channel_pruning`) and whose
    training is plain dense training of the smaller net the file describes."""

    structured = True
    target_flag = "--macs-ratio"

    def __init__(self, name: str, summary: str) -> None:
        self.channel_method = get_channel_method(name)
        super().__init__(name, summary, saliency=self.channel_method.importance or "snip",
                         per_task=self.channel_method.selection == "per_task")

    # ---------------------------------------------------------------- create_pruned_net.py
    def check_request(self, request: PruneRequest) -> None:
        if not request.structured:
            raise ValueError(f"{self.name} removes channels: give --macs-ratio R or --params-ratio R (percent of the "
                             f"MACs or parameters removed) instead of a sparsity or keep ratio")
        method_importance(self.name, request.saliency)      # a baseline's fixed importance cannot be changed

    def importance(self, request: PruneRequest) -> str:
        """The channel importance: the method's own, `--saliency`, or snip on a fresh net (as disparse_static)
        and taylor on a trained one (snip would score a Xavier re-draw, not the trained weights)."""
        if request.saliency is None and self.channel_method.importance is None:
            return "taylor" if request.from_trained else "snip"
        return method_importance(self.name, request.saliency)

    def paper_keep_ratio(self, config: Mapping, ratio_percent: float) -> float:
        raise ValueError(f"--paper-keep-ratios does not apply to {self.name} (give --macs-ratio or --params-ratio)")

    def reads_data(self, config: Mapping, request: PruneRequest) -> bool:
        """Uniform thinning and group magnitude need no batches; the gradient importances do."""
        return (self.channel_method.selection != "uniform"
                and get_channel_importance(self.importance(request)).needs_data)

    def prune(self, model: nn.Module, config: Mapping, request: PruneRequest, batches: Any, loss_fn: Any,
              device: torch.device, generator: torch.Generator, progress: Optional[bool] = None,
              structure: Optional[TaskStructure] = None) -> PruneResult:
        """Score `model`'s channel groups, select at the MACs or parameter target, remove; `model` is unchanged."""
        self.check_request(request)
        importance = self.importance(request)
        groups = channel_groups(model)
        scores = None                      # uniform thinning ranks nothing
        if self.channel_method.selection != "uniform":
            scores = score_for_method(model, groups, self.name, batches, loss_fn, list(config["tasks"]),
                                      importance=importance, loss_weights=loss_weights(config),
                                      num_batches=request.num_batches, device=device, generator=generator,
                                      mode=request.scoring_mode, progress=progress)
        pruned = prune_channels(model, scores, method=self.name, arbiter=request.arbiter,
                                macs_removed=request.macs_removed, params_removed=request.params_removed,
                                input_size=mac_input_size(config), importance=importance, groups=groups)
        return as_prune_result(pruned, importance, reads_data=self.reads_data(config, request))

    def extract(self, net: nn.Module, entries: Mapping[str, Any], tasks: Sequence[str],
                config: Mapping) -> tuple[PruneResult, dict]:
        """The net for `tasks` only (their heads and the shared channels they chose themselves) and the config
        restricted to them; `entries` are the checkpoint entries of a channel-pruned net (or empty for a dense
        one: then only the other heads go)."""
        sub = extract_tasks(net, tasks, entries.get("channels"), input_size=mac_input_size(config))
        return as_prune_result(sub, None), restrict_tasks(config, tasks)

    # ---------------------------------------------------------------- launch_training.py
    def start(self, run: TrainingRun) -> None:
        """Replace `run.model` by the net the start file describes; its spec and report go into every checkpoint."""
        opened = open_net(run.start_file, run.config, run.device, allow_extracted=False)
        if "architecture" not in opened.weights.meta:
            raise CheckpointError(f"{run.start_file} holds no architecture spec (not a channel-pruned net): make one "
                                  f"with create_pruned_net.py --method {self.name} --macs-ratio R")
        run.model = opened.model
        run.extra_state.update({k: opened.weights.meta[k] for k in CHECKPOINT_KEYS if k in opened.weights.meta})
        return None


def write_extracted(method: ChannelPruning, files: RunFiles, net: nn.Module, entries: Mapping[str, Any],
                    tasks: Sequence[str], config: Mapping, method_name: str, extra: Mapping[str, Any]) -> Path:
    """Write `{files.name}_{T1-T2}.pth`: `net` (a channel-pruned net with its checkpoint `entries`, or a dense
    one) extracted for `tasks`, with its per-group report; returns the path."""
    sub, sub_config = method.extract(net, entries, tasks, config)
    path = write_pruned_net(files.derived(f"_{'-'.join(tasks)}"), sub.model, sub_config, method_name, sub,
                            {**extra, "extracted_tasks": list(tasks)})
    print(f"extracted for {', '.join(tasks)}: {100 * sub.entries['macs_removed']:.2f}% of the MACs and "
          f"{100 * sub.entries['params_removed']:.2f}% of the parameters of the dense {'+'.join(tasks)} net removed "
          f"-> {path}")
    return path


def extract_file(method: ChannelPruning, path: str | Path, tasks: Sequence[str], config: Mapping, dest: str | Path,
                 device: Any = "cpu", extra: Optional[Mapping[str, Any]] = None) -> Path:
    """The net in `path` (channel-pruned, trained or not, or dense) extracted for `tasks`, written as
    `{dest}/{file stem}_{T1-T2}.pth` and recorded under the file's own method."""
    source = Path(path)
    files = RunFiles(Path(dest), source.name[:-4] if source.name.endswith(".pth") else source.stem)
    extracted = files.derived(f"_{'-'.join(tasks)}")
    with claim_outputs(extracted.dest, extracted.name, pruned_outputs(extracted, False)):
        opened = open_net(path, config, device)
        return write_extracted(method, files, opened.model, opened.weights.meta, tasks, opened.config,
                               opened.weights.meta.get("method") or method.name, {**(extra or {}), "source": str(source)})
