"""One lock per output name in a folder, so that two runs never write the files of one network at once.

`OutputLock(folder, name)` holds `{folder}/.{name}.lock` for the life of a run. The lock is an exclusive
`fcntl.flock` on that file: the kernel drops it the moment its process ends, however it ends (kill -9
included), so a lock can never outlive its run. The file itself records the holder (pid, host, start
time, command line): a second run is refused with a one-line `OutputLocked` error that names it. A file
left by a run that was killed names a pid that no longer holds the lock: it is stale, taken over with a
note (`stale_note`), and never blocks anyone.

Refusing, not waiting, is deliberate: the second run usually repeats the first by mistake (the same
command in two terminals, a re-submitted job), and waiting would then redo or undo the first run's work.

Releasing removes the file. A run that opened the file just before it was removed may lock the removed
file; `acquire` checks that the locked file is still the one at the path, and retries otherwise.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional

from .atomic import WriteError, file_mode

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]


class OutputLocked(ValueError):
    """Another live run holds the lock of these outputs; one-line message naming it."""


def lock_path(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder) / f".{name}.lock"


def _holder_text(info: dict[str, Any]) -> str:
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host"):
        parts.append(f"on {info['host']}")
    if info.get("started"):
        parts.append(f"since {info['started']}")
    command = " ".join(str(a) for a in info.get("argv") or [])
    return " ".join(parts) + (f": {command[:160]}" if command else "")


class OutputLock:
    """The lock of the outputs named `name` in `folder` (a context manager).

    `stale`: what the lock file said when it was taken over from a run that had ended without removing
    it (killed), else None."""

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        self.path = lock_path(folder, name)
        self.name = name
        self.stale: Optional[dict[str, Any]] = None
        self._fd: Optional[int] = None

    def _read(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        try:
            info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            info = {}
        return info if isinstance(info, dict) else {}

    def acquire(self) -> "OutputLock":
        if fcntl is None:  # pragma: no cover
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
            except OSError as exc:
                raise WriteError(self.path, f"cannot create the lock file ({exc.strerror})",
                                 exc.errno or errno.EIO) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise OutputLocked(f"another run is writing the {self.name} outputs in {self.path.parent} "
                                   f"({_holder_text(holder) or 'holder unknown'}); wait for it to end or use "
                                   f"another --dest (lock file {self.path})") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:                  # released and removed between our open and our lock: retry
                os.close(fd)
                continue
            previous = self._read(fd)
            if previous.get("pid") is not None:   # its holder ended (the kernel dropped its lock)
                self.stale = previous
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)          # while still locked: nobody can take a file that is going away
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def stale_note(self) -> Optional[str]:
        """A line about the lock file this run took over from an ended run, if any."""
        if self.stale is None:
            return None
        return (f"note: took over {self.path}, left by a run that ended without releasing it "
                f"({_holder_text(self.stale)})")

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
