"""Lottery-ticket style iterative magnitude pruning with weight rewinding (`--method lth`).

Config section `lth`: `rounds` R, `rewind_iter` k, `iters_per_round` n (what `--max-iters` sets).
Target sparsity s = --ratio / 100.

* Round 0 trains the dense net for n steps; the weights (and BN buffers) after step k are kept as
  the rewind point (`{dest}/rewind_{name}.pth`; k = 0 means the initial weights).
* Round r = 1..R: from the previous round's final weights, keep the largest magnitudes among the
  survivors over every prunable weight together (`prune_utils.lth`: round(N * (1 - s) ** (r / R)) stay,
  exactly round(N * (1 - s)) after the last round). Then rewind: every weight, bias and BN buffer is
  set back to the rewind point, the masks are applied, and the net trains n steps with fixed masks (a
  fresh Adam and LR schedule each round: the usual "rewind the weights, restart the optimiser").
* Rounds 0..R-1 write `best_/last_/final_{name}_round{r}.pth`; the last round writes the run's own
  `best_/last_/final_{name}.pth`, which launch_training.py then evaluates.

Resume: rounds whose `final_` file exists are done; the round in progress resumes from its `last_`
file, so `--resume` continues the whole procedure. `--stop-after N` applies to each round's step N.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Mapping, Optional

import torch

from engine.distributed import barrier
from engine.trainer import CKPT_KINDS, Trainer, TrainResult
from fileio import CheckpointError, atomic_save, load_checkpoint, load_model_state, make_checkpoint
from prune_utils.lth import global_magnitude_masks, keep_schedule
from prune_utils.masks import prunable_parameters, sparsity as mask_sparsity
from prune_utils.sparse_training import StaticSparsity
from prune_utils.structure import TaskStructure

from .base import Method, RunFiles, TrainingRun


class IterativeMagnitudePruning(Method):
    iterations_key = ("lth", "iters_per_round")

    def __init__(self, name: str, summary: str) -> None:
        self.name, self.summary = name, summary

    def round_files(self, files: RunFiles, r: int, rounds: int) -> RunFiles:
        return files if r == rounds else files.derived(f"_round{r}")

    def rewind_path(self, files: RunFiles) -> Path:
        return files.dest / f"rewind_{files.name}.pth"

    def trainer_runs(self, files: RunFiles, config: Mapping) -> list[RunFiles]:
        rounds = int(config["lth"]["rounds"])
        return [self.round_files(files, r, rounds) for r in range(rounds + 1)]

    def training_files(self, files: RunFiles, config: Mapping) -> list[Path]:
        return super().training_files(files, config) + [self.rewind_path(files)]

    def train(self, run: TrainingRun) -> TrainResult:
        """Run (or resume) the whole procedure; returns the last round's `TrainResult`."""
        config, model, ctx, files = run.config, run.model, run.ctx, run.files
        lth = config["lth"]
        rounds, rewind_iter, iters = int(lth["rounds"]), int(lth["rewind_iter"]), int(lth["iters_per_round"])
        if iters <= 0:
            raise ValueError(f"config key 'lth.iters_per_round' must be positive, got {iters}")
        if not 0 <= rewind_iter <= iters:
            raise ValueError(f"config key 'lth.rewind_iter' must be in [0, lth.iters_per_round={iters}], "
                             f"got {rewind_iter}")
        rewind_path = self.rewind_path(files)
        prunable = TaskStructure.from_model(model).params          # every prunable weight, in layer order
        counts = keep_schedule(sum(prunable_parameters(model)[n].numel() for n in prunable), run.ratio, rounds)
        options = self.train_options(config, max_iters=iters, val_split=run.val_split, seed=run.seed,
                                     stop_after=run.stop_after, progress=run.progress)

        def save_rewind(state: Mapping[str, torch.Tensor], iteration: int) -> None:
            if ctx.is_main:
                atomic_save(make_checkpoint(state, config, self.name, iteration=iteration,
                                            name=f"rewind_{files.name}"), rewind_path)

        result: Optional[TrainResult] = None
        masks = None
        for r in range(rounds + 1):
            round_files = self.round_files(files, r, rounds)
            if run.resume and round_files.checkpoint("final").is_file():
                continue                                   # this round is done
            in_progress = run.resume and round_files.checkpoint("last").is_file()
            if r > 0 and not in_progress:
                prev = load_checkpoint(self.round_files(files, r - 1, rounds).checkpoint("final"),
                                       list(config["tasks"]), list(config["num_classes"]))
                load_model_state(model, prev["model"], source=f"LTH round {r - 1}")
                weights = prunable_parameters(model)
                masks = global_magnitude_masks({n: weights[n] for n in prunable}, counts[r - 1], prev.get("masks"))
                if not rewind_path.is_file():
                    raise CheckpointError(f"LTH rewind point {rewind_path} is missing (round 0 did not reach "
                                          f"iteration {rewind_iter}?)")
                load_model_state(model, load_checkpoint(rewind_path)["model"], source=str(rewind_path))
            elif r > 0:
                masks = load_checkpoint(round_files.checkpoint("last"))["masks"]
            if r == 0 and rewind_iter == 0 and not in_progress:
                save_rewind(model.state_dict(), 0)

            def on_step(trainer: Trainer) -> None:
                if trainer.iteration == rewind_iter:
                    save_rewind(trainer.model.state_dict(), rewind_iter)

            controller = StaticSparsity(masks) if r > 0 else None
            extra = {**run.extra_state, "lth_round": r, "lth_rounds": rounds, "target_ratio": float(run.ratio)}
            trainer = Trainer(model, config, run.train_loader, run.loss_fn, run.device, name=round_files.name,
                              dest=files.dest, method=self.name, val_loader=run.val_loader, controller=controller,
                              ctx=ctx, options=options, extra_state=extra,
                              on_step=on_step if r == 0 and rewind_iter > 0 else None)
            result = trainer.fit(resume=in_progress)
            if controller is not None:
                controller.detach()
            del trainer
            gc.collect()
            barrier()
            if result.stopped_early:
                return result
            if r > 0 and ctx.is_main:
                print(f"LTH round {r}/{rounds}: sparsity {100 * mask_sparsity(masks):.2f}%")
        if result is None:                                # everything was already done
            result = TrainResult(files.name, iters, None, None,
                                 {k: files.checkpoint(k) for k in CKPT_KINDS})
            last = load_checkpoint(result.paths["last"])
            result.best_value, result.best_iteration = last.get("best_value"), last.get("best_iteration")
        return result
