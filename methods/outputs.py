"""What a tool does with its outputs before the work starts: prove the destination takes files, hold the
lock of the outputs' name, clear what interrupted saves left, and never destroy a finished run silently.

Every tool that writes under `--dest` runs its work inside `claim_outputs`, which, on the rank that writes
(rank 0 under torchrun; every other rank skips it):

1. checks `--dest` is (or can become) a writable folder, each output file's name is not taken by a folder,
   and each extra folder (`logs/`, `tb/`) is a folder or can be made one: a one-line `WriteError` before
   any scoring, training or evaluating (docs/RELIABILITY.md);
2. takes `fileio.OutputLock(dest, name)`: a second run writing the same name in the same folder is refused
   with a one-line error naming the holder, so the `.pth`, `.compact.pth`, reports and metrics of one run
   always belong together;
3. removes the temporary files (`.{file}.*.tmp`) a killed save of these outputs left behind.

`check_fresh_start` is launch_training.py's guard: a folder that already holds checkpoints of the name is
refused unless `--resume` continues them or `--overwrite` removes them first.
"""
from __future__ import annotations

import contextlib
import glob
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

from engine.distributed import launch_rank
from fileio import OutputLock, check_folder, check_target, read_json, remove_stale_temporaries


class RunExistsError(ValueError):
    """The destination holds a finished or interrupted run of the same name; one-line message with the choices."""


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def claim_outputs(dest: str | Path, name: str, files: Sequence[Path], folders: Sequence[Path] = (),
                  what: str = "--dest") -> Iterator[Optional[OutputLock]]:
    """Pre-flight checks, the lock of `name` in `dest` and stale-temporary clean-up around a tool's work
    (see the module docstring); yields the lock (None on ranks other than 0, which write nothing)."""
    if launch_rank()[0] != 0:
        yield None
        return
    dest = check_folder(dest, what)
    for folder in folders:
        check_folder(folder, "output folder", create=False)
    for path in files:
        check_target(path)
    with OutputLock(dest, name) as lock:
        stale = lock.stale_note()
        if stale:
            _note(stale)
        for tmp in remove_stale_temporaries(files):
            _note(f"note: removed {tmp}, a temporary file left by an interrupted save")
        yield lock


def check_fresh_start(checkpoints: Sequence[Path], logs: Sequence[Path], dest: str | Path, name: str, *,
                      resume: bool, overwrite: bool) -> None:
    """Refuse to start training over the checkpoints of a run of the same name, unless asked.

    `--resume` needs at least one of them; `--overwrite` removes them, with the run's logs and the
    metrics files evaluated from them, before the new run writes anything (so a new run interrupted early
    cannot leave the old run's `best_` or `final_` beside its own `last_`)."""
    existing = [path for path in checkpoints if path.is_file()]
    if resume:
        if not existing:
            raise RunExistsError(f"cannot resume: {dest} holds no checkpoint of {name} (expected "
                                 f"{checkpoints[0].parent / ('last_' + name + '.pth')}); run without --resume first")
        return
    if not existing:
        return
    if not overwrite:
        shown = ", ".join(path.name for path in existing[:4]) + (f" (+{len(existing) - 4} more)"
                                                                 if len(existing) > 4 else "")
        raise RunExistsError(f"{dest} already holds a run of {name} ({shown}); pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another --dest")
    for path in existing + metrics_from(Path(dest), name, checkpoints):
        path.unlink()
    for log in logs:
        if log.is_dir():
            shutil.rmtree(log)
        elif log.is_file():
            log.unlink()
    _note(f"note: --overwrite removed the previous run of {name} in {dest} ({len(existing)} checkpoint(s))")


def metrics_from(dest: Path, name: str, checkpoints: Sequence[Path]) -> list[Path]:
    """The metrics files of `name` in `dest` that were evaluated from one of `checkpoints` (their recorded
    `checkpoint`), plus `metrics_{name}.json` itself (files written before provenance was recorded)."""
    sources = {str(path.resolve()) for path in checkpoints}
    found = []
    for path in sorted(dest.glob(f"metrics_{glob.escape(name)}*.json")):
        try:
            recorded = read_json(path, "metrics file", dict).get("checkpoint")
        except ValueError:
            recorded = None
        if path.name == f"metrics_{name}.json" or (recorded and str(Path(recorded).resolve()) in sources):
            found.append(path)
    return found
