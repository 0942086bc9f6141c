"""The lock on a run's folder: one run at a time trains into an out_dir.

A run holds an exclusive `fcntl.flock` on `<out_dir>/.run.lock` from its setup to its end. The
kernel drops the lock when the process ends, however it ends (SIGKILL included), so a killed
run's restart finds the folder free and no stale lock ever needs clearing by hand. The file
holds the holder's pid and host, which a second run names in its one-line refusal; without the
lock the second run would "resume" the first's live resume.pt and both would write it.

With several ranks (distributed.py) rank 0 holds the lock for the run and every rank learns
whether it got it, so that all stop together. A fused group's members (fused.py) each lock
their own folder. The lock file is removed when the run ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from dgkd_core.errors import TrainingError

__all__ = ["LOCK_FILE", "FolderInUse", "RunFolderLock", "lock_run_folder"]

LOCK_FILE = ".run.lock"

log = logging.getLogger("dgkd_core.training.trainer")


class FolderInUse(TrainingError):
    """Another live run holds the folder's lock; the message names its pid."""


# The descriptors of the locks this process holds. A forked child (a DataLoader worker) shares
# each, and would hold the lock after its parent is killed until it notices: it closes its
# copies at once, which leaves the parent's lock as it is.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunFolderLock:
    """The held lock on one run folder (`acquire`), until `release` or the process's end."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, folder: str | os.PathLike) -> "RunFolderLock | None":
        """Lock `folder` (which exists) or raise FolderInUse naming the holder; None (with a
        warning) where its file system has no locks."""
        path = Path(folder) / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
                os.close(fd)
                raise FolderInUse(
                    f"{folder} is in use by another run ({holder}, lock {path}); wait for it "
                    "to end or stop it, or give this run another out_dir") from None
            except OSError as err:  # a file system without locks: warn, do not stop the run
                os.close(fd)
                log.warning("cannot lock %s (%s); a second run in this folder would not be "
                            "stopped", path, err.strerror or err)
                return None
            # The previous holder removes the file as it releases: a lock taken on that removed
            # file guards nothing (a third run would lock a new file), so open it again.
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        _HELD.add(fd)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in this order: see `acquire`)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None


def lock_run_folder(folder: str | os.PathLike, dist) -> RunFolderLock | None:
    """Rank 0's lock on `folder` (None on the other ranks); FolderInUse on every rank where
    rank 0 could not take it. `dist`: the run's `Distributed`, its process group started."""
    lock, problem = None, None
    if dist.is_main:
        try:
            lock = RunFolderLock.acquire(folder)
        except FolderInUse as err:
            problem = str(err)
    if dist.agree_stop(problem) is not None:  # a collective: every rank stops, not only rank 0
        raise FolderInUse(problem or f"{folder} is in use by another run (rank 0's log names "
                                     "its pid); wait for it to end, or give another out_dir")
    return lock
