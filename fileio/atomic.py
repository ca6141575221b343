"""Atomic file writes: the one place that writes a file so that a failure never leaves half of it.

Every writer goes through `atomic_write`: the content is written to a temporary file
`.{name}.XXXXXXXX.tmp` in the target's folder (same file system, so the rename is atomic), flushed,
fsynced, given the mode `0o666 & ~umask`, then renamed over the target. If anything fails (the writer
raises, the disk fills, the process is interrupted) the temporary file is removed and the target is left
as it was: the old file, or no file. Parent folders are created. JSON files are written by
`fileio.json_file.atomic_write_json` on top of these.

The rename alone makes a write safe against a killed process: the file is complete or absent. The fsync
adds safety against a crash of the whole machine (power loss, kernel panic) before the kernel has written
the data back, after which a renamed but unsynced file can be empty or cut short. It makes the writer
wait until the disk holds the whole file (most of a pruning run's finish, docs/BENCHMARKS.md (f)), so
`durable=False` skips it for large files that the same command regenerates exactly (create_pruned_net.py's
pruned net and its exports); training state, which a run resumes from and cannot recompute cheaply, is
always fsynced. A file cut short by such a crash is refused on load as unreadable or truncated
(docs/RELIABILITY.md).

Modes follow the umask, for new files and for replaced ones alike (a replaced file gets the mode a new
file would get, not the old file's): `mkstemp` alone would make every checkpoint 0600.

An operating-system failure (full disk, no permission, a file where a folder is expected, and the
RuntimeError torch's zip writer raises when its writes fail) becomes a `WriteError`: an `OSError` whose
message is one line naming the target and the reason. A temporary file left by a process that was killed
mid-save (SIGKILL leaves no chance to clean up) is removed by `remove_stale_temporaries`, which a tool
calls for the files it is about to write while it holds their lock (`fileio.lock`).
"""
from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

TEMP_SUFFIX = ".tmp"
# The RuntimeError texts of torch's zip writer when a write fails (a full disk, mostly).
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed writing", "enforce fail at inline_container", "file write failed")
_REASONS = {
    errno.ENOSPC: "no space left on device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
}


class WriteError(OSError):
    """A file or folder could not be written; `str()` is one line naming the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str, code: int = errno.EIO) -> None:
        super().__init__(code, reason, os.fspath(path))
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


def current_umask() -> int:
    """The process umask, read without changing it where the system tells (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from `open()`: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def os_failure(path: str | os.PathLike, exc: OSError) -> WriteError:
    """The one-line `WriteError` for an OS error met while writing `path`."""
    if isinstance(exc, WriteError):
        return exc
    path = Path(path)
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += f"; {_free_space(path.parent)}"
    return WriteError(path, reason, exc.errno or errno.EIO)


def write_failure(path: str | os.PathLike, exc: BaseException) -> WriteError | None:
    """`os_failure` for an OS error, a `WriteError` for torch's zip-writer RuntimeError (a failed write, most
    likely a full disk), None for any other exception (a bug or a user error: raised as it is)."""
    if isinstance(exc, OSError):
        return os_failure(path, exc)
    if isinstance(exc, RuntimeError) and any(text in str(exc) for text in _TORCH_WRITE_FAILURES):
        detail = str(exc).strip().splitlines()[0][:120]
        return WriteError(path, f"the write failed, most likely a full disk ({_free_space(Path(path).parent)}; "
                                f"torch: {detail})", errno.EIO)
    return None


def check_folder(folder: str | os.PathLike, what: str = "folder", create: bool = True) -> Path:
    """Prove that files can be written in `folder`: a one-line `WriteError` naming it when it is a file, lies
    under a file, or cannot be written to (a probe file is created and removed). `create=False` leaves a
    missing folder uncreated and probes the nearest existing one above it instead. Tools run this before
    the expensive work, so that a run does not fail at its first save."""
    folder = Path(folder)
    existing = next((part for part in (folder, *folder.parents) if part.exists()), Path("."))
    if not existing.is_dir():
        where = "it is a file" if existing == folder else f"{existing} is a file"
        raise WriteError(folder, f"{what} is not a folder ({where})", errno.ENOTDIR)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            existing = folder
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=TEMP_SUFFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WriteError(folder, f"{what} is not writable ({os_failure(folder, exc).reason})",
                         exc.errno or errno.EIO) from None
    return folder


def check_target(path: str | os.PathLike) -> Path:
    """A one-line `WriteError` when an output file's name is taken by a folder (the rename would fail)."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(path, "a folder of that name is in the way (expected a file)", errno.EISDIR)
    return path


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporary files `atomic_write` may have left beside `path` (`.{name}.*.tmp`)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))


def remove_stale_temporaries(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove the temporary files of interrupted saves of `paths`; returns the ones removed.

    Only safe while nobody else writes those files: the tools call it holding the outputs' lock."""
    removed = []
    for path in paths:
        for tmp in temporaries_of(path):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], durable: bool = True) -> Path:
    """Call `write(handle)` on a temporary binary file beside `path`, fsync (when `durable`), then rename it
    to `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise os_failure(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), file_mode())
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        failure = write_failure(path, exc)
        if failure is not None and failure is not exc:
            raise failure from exc
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, newlines written as given (no platform translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike, durable: bool = True) -> Path:
    """`torch.save(obj)` written atomically (checkpoints, compact exports); `durable` as in `atomic_write`."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle), durable)
