"""What `--resume` takes from the checkpoint and what from the command line, said out loud.

A resumed run restores the optimizer, the LR schedule, the RNG states, the data position and the seed
from `last_{name}.pth`; the settings that feed those (the learning rate and its schedule, weight decay,
`--seed`) are therefore ignored when they changed, and every other changed setting (batch size, crop,
loss weights, ...) applies from the resumed step on, so the run no longer ends where an uninterrupted one
would. Both are reported as warnings instead of passing silently. A `--max-iters` below the iterations
already done cannot be honoured and is an error.
"""
from __future__ import annotations

from typing import Any, Mapping

from fileio import CheckpointError, to_plain

from .config import flatten

class ResumeError(CheckpointError):
    """`--resume` could not continue (no `last_` file, or one that does not fit this run)."""


# Restored from the checkpoint's optimizer / scheduler state: a new value has no effect.
RESTORED_FROM_CHECKPOINT = ("train.lr", "train.weight_decay", "train.lr_decay_every", "train.lr_decay_rate",
                            "retrain.lr")
# Meant to change between the interrupted and the resumed run, with no effect on the result.
FREE_TO_CHANGE = ("data_root", "data.num_workers", "train.max_iters", "retrain.iters", "lth.iters_per_round",
                  "train.val_every", "train.save_every", "train.log_every", "dist.timeout_s")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def resume_notes(saved: Mapping[str, Any], config: Mapping[str, Any], saved_seed: Any, seed: int,
                 source: Any) -> list[str]:
    """The warnings for resuming the run saved with config `saved` and seed `saved_seed` under `config` and
    `seed` (empty when nothing that matters changed)."""
    before, now = flatten(to_plain(saved)), flatten(to_plain(config))   # as stored: plain keys
    changed = [key for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
    restored = [key for key in changed if key in RESTORED_FROM_CHECKPOINT]
    applied = [key for key in changed if key not in RESTORED_FROM_CHECKPOINT and key not in FREE_TO_CHANGE]
    notes = []
    ignored = [f"{key} {_show(now.get(key))} (the run's {_show(before.get(key))} is kept)" for key in restored]
    if saved_seed is not None and int(saved_seed) != int(seed):
        ignored.append(f"--seed {seed} (the run's seed {saved_seed} is kept)")
    if ignored:
        notes.append(f"--resume from {source} ignores {'; '.join(ignored)}: the optimizer, LR schedule, RNG and "
                     f"data order are restored from the checkpoint")
    if applied:
        shown = "; ".join(f"{key} {_show(before.get(key))} -> {_show(now.get(key))}" for key in applied)
        notes.append(f"--resume from {source} with changed settings ({shown}): they apply from here on, so the run "
                     f"will not end where an uninterrupted one would")
    return notes


def check_iterations(done: int, max_iters: int, source: Any) -> None:
    """A resumed run cannot stop before the iterations it has already done."""
    if max_iters < done:
        raise ResumeError(f"cannot resume {source} with {max_iters} iterations: it has done {done} already "
                          f"(--max-iters / the iterations setting must be at least {done})")
