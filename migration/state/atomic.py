"""Atomic, durable file writes and the state directory's errors.

A file is written to a temporary file, fsynced, renamed over the old one, and
the directory fsynced: a reader sees the old or the new content, never a mix,
whatever moment the process dies at.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from migration.errors import StateError


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that it is never partially visible."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def state_dir_error(directory: Path, exc: OSError) -> StateError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StateError(
            f"state directory {directory} is not writable ({exc.strerror}); "
            "fix its permissions or pass --state-dir DIR"
        )
    if exc.errno == errno.ENOSPC:
        return StateError(f"no space left for the state in {directory}; free some disk and run again")
    return StateError(f"cannot write state in {directory}: {exc.strerror or exc}")
