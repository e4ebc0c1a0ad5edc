"""Run folders that no two writers share: unique default names, and a lock held while a run
trains in its folder.

The lock is an exclusive ``flock`` on ``run_dir/.lock`` (released by the kernel when its holder
exits, however it exits, so a crashed run never leaves its folder locked); the holder's pid is
written into the file for the message a second writer gets.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from contrastlab.engine.checkpoint import TEMPORARY_PREFIX, TEMPORARY_SUFFIX

LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """A run folder is in use by another process, or cannot be used as asked."""


def create_unique(base: Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``, ... if taken (exclusive creation:
    two runs started in the same second get different folders)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 10_000):
        candidate = base if number == 1 else base.with_name(f"{base.name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunFolderError(f"{base}: 10,000 run folders of this name exist; give --run-dir")


class RunLock:
    """The exclusive right to write into ``run_dir`` (created if missing) while held.

    Raises :class:`RunFolderError` when another process holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RunFolderError(f"{run_dir} is in use by another contrastlab process (pid {holder}); wait for it "
                                 "to finish, or give another --run-dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete what an interrupted atomic write left in ``run_dir`` (a process killed while
    writing a checkpoint); call only while holding the folder's :class:`RunLock`."""
    stale = sorted(run_dir.glob(f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
