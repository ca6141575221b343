"""Lottery-ticket style iterative magnitude pruning with weight rewinding (`--method lth`).

Config section `lth`: `rounds` R, `rewind_iter` k, `iters_per_round` n. Target sparsity s = --ratio / 100.

* Round 0 trains the dense net for n steps; the weights (and BN buffers) after step k are kept as
  the rewind point (`{dest}/rewind_{name}.pth`; k = 0 means the initial weights).
* Round r = 1..R: from the previous round's final weights, prune globally (over all prunable
  weights: every Conv2d/Linear weight, backbone and heads together) the smallest magnitudes among the
  survivors so that round(N * (1 - s) ** (r / R)) weights stay; i.e. each round removes the fraction
  1 - (1 - s) ** (1 / R) of the remaining weights, and the last round keeps exactly round(N * (1 - s)),
  so the final sparsity is the ratio (to within 1/N). Ties in magnitude: lower flat index first (stable
  sort in the concatenated `prunable_parameters` order). Then rewind: every weight, bias and BN buffer
  is set back to the rewind point, the masks are applied, and the net trains n steps with fixed masks
  (a fresh Adam and LR schedule each round: the usual "rewind the weights, restart the optimiser").
* Rounds 0..R-1 write `best_/last_/final_{name}_round{r}.pth`; the last round writes the run's own
  `best_/last_/final_{name}.pth`, which launch_training.py then evaluates.

Resume: rounds whose `final_` file exists are done; the round in progress resumes from its `last_`
file, so `--resume` continues the whole procedure. `--stop-after N` applies to each round's step N.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from fileio import CheckpointError, atomic_save, load_checkpoint, load_model_state, make_checkpoint
from .distributed import DistContext, barrier
from .trainer import Trainer, TrainOptions, TrainResult, checkpoint_path


def keep_schedule(total: int, ratio: float, rounds: int) -> list[int]:
    """Weights kept after each round r = 1..R: round(total * (1 - s) ** (r / R)), s = ratio / 100."""
    if rounds < 1:
        raise ValueError(f"config key 'lth.rounds' must be at least 1, got {rounds}")
    if not 0 < ratio < 100:
        raise ValueError(f"LTH ratio must be in (0, 100), got {ratio}")
    density = 1.0 - ratio / 100.0
    counts = [int(round(total * density ** (r / rounds))) for r in range(1, rounds + 1)]
    counts[-1] = int(round(total * density))
    for i in range(1, len(counts)):            # never grow back
        counts[i] = min(counts[i], counts[i - 1])
    return counts


@torch.no_grad()
def global_magnitude_masks(weights: Mapping[str, torch.Tensor], n_keep: int,
                           previous: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Keep the `n_keep` largest |w| over all `weights` together, only among `previous` survivors.

    Ties: lower position in the concatenation (dict order, then flat index) wins. Exact count.
    """
    names = list(weights)
    scores = []
    for n in names:
        s = weights[n].detach().abs().float().reshape(-1).cpu()
        if previous is not None:
            s = s.masked_fill(~previous[n].reshape(-1).cpu().bool(), -1.0)   # pruned stay pruned
        scores.append(s)
    flat = torch.cat(scores)
    alive = int((flat >= 0).sum())
    if n_keep > alive:
        raise ValueError(f"cannot keep {n_keep} weights: only {alive} survive the previous round")
    order = torch.sort(flat, descending=True, stable=True).indices[:n_keep]
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order] = True
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for n in names:
        numel = weights[n].numel()
        out[n] = keep[offset:offset + numel].reshape(weights[n].shape).clone()
        offset += numel
    return out


def _round_name(name: str, r: int, rounds: int) -> str:
    return name if r == rounds else f"{name}_round{r}"


def run_lth(model: nn.Module, config: Mapping, train_loader: Any, val_loader: Any, loss_fn: Any,
            device: torch.device, *, ctx: DistContext, name: str, dest: str | Path, ratio: float, seed: int = 0,
            resume: bool = False, val_split: str = "test", progress: Optional[bool] = None,
            stop_after: Optional[int] = None) -> TrainResult:
    """Run (or resume) the whole LTH procedure; returns the last round's `TrainResult`."""
    from prune_utils.masks import prunable_parameters, sparsity as mask_sparsity
    from prune_utils.sparse_training import StaticSparsity

    lth = config["lth"]
    rounds, rewind_iter, iters = int(lth["rounds"]), int(lth["rewind_iter"]), int(lth["iters_per_round"])
    if iters <= 0:
        raise ValueError(f"config key 'lth.iters_per_round' must be positive, got {iters}")
    if not 0 <= rewind_iter <= iters:
        raise ValueError(f"config key 'lth.rewind_iter' must be in [0, lth.iters_per_round={iters}], got {rewind_iter}")
    dest = Path(dest)
    rewind_path = dest / f"rewind_{name}.pth"
    total = sum(p.numel() for p in prunable_parameters(model).values())
    counts = keep_schedule(total, ratio, rounds)
    options = TrainOptions.from_config(config, max_iters=iters, val_split=val_split, seed=seed,
                                       stop_after=stop_after, progress=progress)

    def save_rewind(state: Mapping[str, torch.Tensor], iteration: int) -> None:
        if ctx.is_main:
            atomic_save(make_checkpoint(state, config, "lth", iteration=iteration, name=f"rewind_{name}"),
                        rewind_path)

    result: Optional[TrainResult] = None
    masks = None
    for r in range(rounds + 1):
        rname = _round_name(name, r, rounds)
        final = checkpoint_path(dest, "final", rname)
        if resume and final.is_file():
            continue                                   # this round is done
        in_progress = resume and checkpoint_path(dest, "last", rname).is_file()
        if r > 0 and not in_progress:
            prev = load_checkpoint(checkpoint_path(dest, "final", _round_name(name, r - 1, rounds)),
                                   list(config["tasks"]), list(config["num_classes"]))
            load_model_state(model, prev["model"], source=f"LTH round {r - 1}")
            masks = global_magnitude_masks(prunable_parameters(model), counts[r - 1], prev.get("masks"))
            if not rewind_path.is_file():
                raise CheckpointError(f"LTH rewind point {rewind_path} is missing (round 0 did not reach "
                                      f"iteration {rewind_iter}?)")
            load_model_state(model, load_checkpoint(rewind_path)["model"], source=str(rewind_path))
        elif r > 0:
            masks = load_checkpoint(checkpoint_path(dest, "last", rname))["masks"]
        if r == 0 and rewind_iter == 0 and not in_progress:
            save_rewind(model.state_dict(), 0)

        def on_step(trainer: Trainer) -> None:
            if trainer.iteration == rewind_iter:
                save_rewind(trainer.model.state_dict(), rewind_iter)

        controller = StaticSparsity(masks) if r > 0 else None
        extra = {"lth_round": r, "lth_rounds": rounds, "target_ratio": float(ratio)}
        trainer = Trainer(model, config, train_loader, loss_fn, device, name=rname, dest=dest, method="lth",
                          val_loader=val_loader, controller=controller, ctx=ctx, options=options,
                          extra_state=extra, on_step=on_step if r == 0 and rewind_iter > 0 else None)
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
        result = TrainResult(name, iters, None, None,
                             {k: checkpoint_path(dest, k, name) for k in ("best", "last", "final")})
        last = load_checkpoint(result.paths["last"])
        result.best_value, result.best_iteration = last.get("best_value"), last.get("best_iteration")
    return result
