"""The per-plan lock: ``STATE_DIR/<plan-name>/lock``, an fcntl lock plus pid and host."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from migration.errors import LockedError
from migration.state.atomic import now_iso, state_dir_error
from migration.state.host import host_name


class PlanLock:
    """An exclusive ``fcntl`` lock on ``<plan>/lock`` holding the owner's pid and host.

    The kernel releases the lock when the process dies, however it dies; the pid
    and host left in the file then tell the next run whose run it is taking over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.previous_owner: dict[str, Any] | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise state_dir_error(self.path.parent, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._live_owner(fd)
            os.close(fd)
            who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
            since = f" since {owner['since']}" if owner.get("since") else ""
            raise LockedError(
                f"plan is locked by another live run ({who}{since}); wait for it to finish "
                f"or stop that process ({self.path})"
            ) from None
        owner = self._read(fd)
        if owner.get("pid"):
            self.previous_owner = owner
        record = {"pid": os.getpid(), "host": host_name(), "since": now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def takeover_message(self) -> str | None:
        """The line the design promises when a dead process's lock is taken over, or None."""
        previous = self.previous_owner
        if not previous:
            return None
        return f"previous run, pid {previous.get('pid')} on host {previous.get('host')}, died; resuming"

    def is_held(self) -> bool | None:
        """Whether a live process holds the lock, from ``/proc/locks`` (read-only; None if unknown).

        Taking the lock to find out would race a run starting at that moment.
        """
        try:
            st = self.path.stat()
            table = Path("/proc/locks").read_text()
        except FileNotFoundError:
            return False if self.path.parent.exists() and Path("/proc/locks").exists() else None
        except OSError:
            return None
        wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        for line in table.splitlines():
            fields = line.split()
            if len(fields) < 6 or fields[1] != "FLOCK" or fields[2] == "->":
                continue
            try:
                major, minor, inode = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                    return True
            except ValueError:
                continue
        return False

    def _live_owner(self, fd: int) -> dict[str, Any]:
        """The holder's record. A winner that has just taken the lock may not have
        written it yet (the file still names a dead predecessor, or nothing): wait
        briefly for a record naming a live process on this host."""
        owner: dict[str, Any] = {}
        for _ in range(40):
            owner = self._read(fd)
            pid, host = owner.get("pid"), owner.get("host")
            if pid and host and host != host_name():
                return owner
            if isinstance(pid, int) and pid > 0:
                try:
                    os.kill(pid, 0)
                    return owner
                except ProcessLookupError:
                    pass
                except PermissionError:
                    return owner
            time.sleep(0.05)
        return owner

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            value = json.loads(text) if text else {}
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied, not deleted: unlinking a lock file others may hold open races.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
