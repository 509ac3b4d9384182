"""Processes a killed step left behind, found by a mark in their environment.

Every process a step starts carries ``MIGRATION_STEP=<run-id>/<step-id>``. After a
crash (SIGKILL, a power cut of the terminal...) the next attempt of that step
finds what the dead attempt left running and stops it before running again, so a
resume never runs two copies side by side.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

# Set in the environment of every process a step starts: "<run-id>/<step-id>". After a
# crash (SIGKILL, power loss of the terminal...) it finds what the dead attempt left running.
STEP_MARK = "MIGRATION_STEP"
LEFTOVER_GRACE_SECONDS = 5.0


def leftover_processes(mark: str) -> list[int]:
    """Live processes started by an earlier attempt of a step (their environment carries ``mark``)."""
    wanted = f"{STEP_MARK}={mark}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, a zombie, or not ours
            continue
    return found


def stop_leftovers(mark: str) -> list[int]:
    """SIGTERM what an earlier attempt left running, SIGKILL it after a grace period."""
    pids = leftover_processes(mark)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [pid for pid in pids if pid in leftover_processes(mark)]
        if not pids:
            break
    return pids
