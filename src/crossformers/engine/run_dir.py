"""A training run folder that survives a kill at any instant: the run lock, the epoch commit and its recovery.

Layout of a run folder ``RUN``::

    config.json            the options of the run
    last/  best/           checkpoints (see :mod:`crossformers.engine.checkpoint_io`)
    metrics.csv  metrics.jsonl  curves.png
    .lock                  (while a training process writes the folder) the run lock
    .commit/               (only while an epoch is being committed) staging area and journal

**One commit per epoch.** Everything an epoch produces (``last/``, ``best/`` when it improved, the metric files with
its row, ``curves.png``) is first written into ``.commit/new/`` and flushed to disk. Then the journal
``.commit/journal.json`` (the epoch and the list of items) is written atomically with ``os.replace``: this single
rename is the commit point. Afterwards each item is moved into ``RUN`` (a directory it replaces is first moved to
``.commit/old/``), the journal is removed and ``.commit/`` deleted.

**Recovery** (:meth:`RunFolder.recover`, run by every training process that takes the lock, before it reads
anything): with a journal, the commit is rolled forward (the items still in ``.commit/new/`` are moved in, which is
idempotent); without one, the epoch never committed and ``.commit/`` is discarded, so the run continues from the
previous epoch's ``last/`` and repeats that epoch bit-identically. Either way ``RUN`` then looks exactly like a run
that was never interrupted.

**The lock** is ``fcntl.flock`` on ``RUN/.lock``, taken without waiting: a second writer on the same folder fails at
once with :class:`RunLockedError` and touches nothing. The lock file is removed when the run ends (a process that
opened the file just before is detected by comparing inodes and retries), so it is only left behind by a killed run,
where it is harmless: the kernel released its lock.

**Fault points** (test only): when the environment variable ``CROSSFORMERS_FAULT_POINT`` is ``NAME:EPOCH``, the
process sends itself ``SIGKILL`` when it reaches the point ``NAME`` while committing epoch ``EPOCH`` (1-based);
``NAME:EPOCH:stop`` sends ``SIGSTOP`` instead (the process freezes, holding the lock, until ``SIGCONT``). The names
are listed in :data:`FAULT_POINTS`. The fault-injection tests use it to stop a real training process at every step
of a commit; it is never set in normal use.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint_io import _fsync_path, _recover, atomic_write_text
from .errors import TrainingError

__all__ = ["RunFolder", "RunLockedError", "COMMIT_ITEMS", "FAULT_POINTS", "fault_point"]

LOCK_FILE = ".lock"
COMMIT_DIR = ".commit"
JOURNAL_FILE = "journal.json"
#: What an epoch commit may move into the run folder, in this order.
COMMIT_ITEMS = ("last", "best", "metrics.jsonl", "metrics.csv", "curves.png")
#: Every fault point of one commit, in the order they are reached (``swap-*`` only when the directory existed,
#: ``*-best`` only when the epoch improved the best val top-1, metrics / curves only at an epoch end).
FAULT_POINTS = ("stage-last", "stage-best", "stage-metrics", "journal", "swap-last", "apply-last", "swap-best",
                "apply-best", "apply-metrics.jsonl", "apply-metrics.csv", "apply-curves.png", "unjournal")
FAULT_ENV = "CROSSFORMERS_FAULT_POINT"

log = logging.getLogger("crossformers.train")

# run folders locked by this process: a forked child (a DataLoader worker) closes its copies of their lock files, so
# the lock dies with the training process even while its workers are still winding down
_LOCKED: set[RunFolder] = set()


def _drop_inherited_locks() -> None:
    for folder in list(_LOCKED):
        if folder._fd is not None:
            with contextlib.suppress(OSError):
                os.close(folder._fd)
        folder._fd, folder._held = None, False
    _LOCKED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def fault_point(name: str, epoch: int) -> None:
    """Test-only hook: kill (or stop) this process here if ``$CROSSFORMERS_FAULT_POINT`` is ``name:epoch[:stop]``.

    Costs one environment lookup when unset; see the module docs.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[:2] == [name, str(epoch)]:
        os.kill(os.getpid(), signal.SIGSTOP if parts[2:] == ["stop"] else signal.SIGKILL)


class RunLockedError(TrainingError):
    """Another process holds the run folder's lock (the message names the folder and, if known, that process)."""


class RunFolder:
    """The run folder ``path``: its exclusive lock, epoch commits, and recovery from an interrupted commit.

    Args:
        path: the run directory (``--output``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._held = False
        #: directories :meth:`lock` created, deepest first (removed by :meth:`remove_created_dirs` if still empty)
        self.created_dirs: list[Path] = []

    # ------------------------------------------------------------------------------------------------ lock
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._held

    def lock(self) -> bool:
        """Take the exclusive lock of the run folder without waiting, creating the folder if needed.

        Returns:
            True if this call created the folder.

        Raises:
            RunLockedError: another process holds the lock.
            OutputExistsError: ``path`` exists and is not a directory.
        """
        import fcntl

        from .errors import OutputExistsError

        if self.path.exists() and not self.path.is_dir():
            raise OutputExistsError(f"output path {self.path} is a file, not a directory: choose a new --output "
                                    "(a directory path)")
        missing = [d for d in (self.path, *self.path.parents) if not d.exists()]
        created = False
        try:
            self.path.mkdir(parents=True)
            created = True
            self.created_dirs = missing
        except FileExistsError:
            if not self.path.is_dir():
                raise OutputExistsError(f"output path {self.path} is a file, not a directory: choose a new --output "
                                        "(a directory path)") from None
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    # a file system without locks (some network mounts): run unprotected rather than not at all
                    log.warning("cannot lock %s (%s): nothing stops a second training process from writing into "
                                "%s at the same time", self.lock_path, e.strerror or e, self.path)
                    break
                holder = ""
                try:
                    holder = os.read(fd, 200).decode("utf-8", "replace").strip()
                except OSError:
                    pass
                os.close(fd)
                who = f" ({holder})" if holder else ""
                raise RunLockedError(
                    f"run directory {self.path} is in use by another training process{who}: wait for it to finish, "
                    "or choose another --output") from None
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        self._held = True
        _LOCKED.add(self)
        return created

    def unlock(self) -> None:
        """Remove the lock file and release the lock (no-op if not held)."""
        if not self._held:
            return
        import fcntl

        try:
            self.lock_path.unlink(missing_ok=True)
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._held = False
            _LOCKED.discard(self)

    def remove_created_dirs(self) -> None:
        """Remove the directories :meth:`lock` created, if they are (still) empty; for a run that failed to start."""
        for d in self.created_dirs:
            try:
                d.rmdir()
            except OSError:
                break
        self.created_dirs = []

    # ------------------------------------------------------------------------------------------------ commit
    @property
    def commit_dir(self) -> Path:
        return self.path / COMMIT_DIR

    def begin(self) -> Path:
        """Start a commit: a fresh, empty staging directory (``.commit/new``) to write the epoch's items into."""
        self._require_lock()
        shutil.rmtree(self.commit_dir, ignore_errors=True)
        new = self.commit_dir / "new"
        new.mkdir(parents=True)
        return new

    def commit(self, items: Sequence[str], epoch: int) -> None:
        """Commit the staged ``items`` (names from :data:`COMMIT_ITEMS`, written by the caller into :meth:`begin`'s
        directory and flushed) as one unit; ``epoch`` (1-based) labels the journal and the fault points."""
        self._require_lock()
        items = [i for i in COMMIT_ITEMS if i in items]
        _fsync_path(self.commit_dir / "new")
        atomic_write_text(self.commit_dir / JOURNAL_FILE, json.dumps({"epoch": int(epoch), "items": items}) + "\n")
        _fsync_path(self.commit_dir)
        fault_point("journal", epoch)
        self._apply(items, epoch)

    def _apply(self, items: Sequence[str], epoch: int) -> None:
        new, old = self.commit_dir / "new", self.commit_dir / "old"
        for item in items:
            src, dst = new / item, self.path / item
            if not src.exists():
                continue  # moved in by the interrupted apply this one completes
            if src.is_dir() and dst.exists():
                old.mkdir(exist_ok=True)
                shutil.rmtree(old / item, ignore_errors=True)
                os.replace(dst, old / item)
                fault_point(f"swap-{item}", epoch)
            os.replace(src, dst)
            fault_point(f"apply-{item}", epoch)
        _fsync_path(self.path)
        (self.commit_dir / JOURNAL_FILE).unlink(missing_ok=True)
        _fsync_path(self.commit_dir)
        fault_point("unjournal", epoch)
        shutil.rmtree(self.commit_dir, ignore_errors=True)

    def _require_lock(self) -> None:
        if not self._held:
            raise RuntimeError(f"the lock of {self.path} is not held")

    # ------------------------------------------------------------------------------------------------ recovery
    def recover(self) -> str | None:
        """Repair what an interrupted run left (needs the lock): complete a journaled commit, discard an unjournaled
        one, and remove the temporary files of atomic writes.

        Returns:
            What was done, for the log: ``'completed the interrupted commit of epoch N'`` (rolled forward),
            ``'discarded an uncommitted epoch'`` (rolled back), ``'removed the leftovers of a completed commit'``;
            None when there was nothing to repair (temporary files are removed silently).

        Raises:
            CheckpointError: the journal is unreadable (it is only ever replaced atomically, so something else
                changed it): the message says what to check.
        """
        self._require_lock()
        action = None
        journal = self.commit_dir / JOURNAL_FILE
        if journal.is_file():
            try:
                data = json.loads(journal.read_text())
                epoch, items = int(data["epoch"]), list(data["items"])
                if not all(isinstance(i, str) and i in COMMIT_ITEMS for i in items):
                    raise ValueError(f"unknown items {items}")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"the commit journal {journal} of an interrupted epoch is unreadable ({e}): it was changed by "
                    f"something else than crossformers; inspect {self.commit_dir}, then delete it to continue from "
                    f"the run's last/ checkpoint") from None
            self._apply(items, epoch)
            action = f"completed the interrupted commit of epoch {epoch}"
        elif self.commit_dir.exists():
            staged = (self.commit_dir / "new").is_dir() and any((self.commit_dir / "new").iterdir())
            shutil.rmtree(self.commit_dir)
            action = ("discarded an uncommitted epoch" if staged
                      else "removed the leftovers of a completed commit")
        for name in ("last", "best"):  # backups / temp dirs of direct checkpoint writes (older versions)
            _recover(self.path / name)
        for pattern in (".config.json.*.tmp", ".metrics.jsonl.*.tmp", ".metrics.csv.*.tmp", ".curves.png.*.tmp"):
            for stale in self.path.glob(pattern):
                stale.unlink(missing_ok=True)
        return action
