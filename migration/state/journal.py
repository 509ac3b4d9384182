"""The step journal: ``<run-id>.journal.jsonl``, step changes appended between full saves.

A big state (hundreds of steps) costs ~10 ms to rewrite atomically; a step's
change appended to a journal and fdatasync'ed costs ~1 ms. Small states are
always rewritten whole, so for ordinary plans the JSON file is exact at every
moment; big ones journal step changes and compact every ``COMPACT_EVERY``
entries and at every phase or run transition (see :class:`StateStore`).

A step's end may be journaled without its own fdatasync (``durable=False``):
the bytes are written at once (a killed process loses nothing), and the
fdatasync of the next change, which always comes before the next action (the
next step's "running" record, a phase transition), makes both durable. A power
cut in between re-runs that step, exactly as a power cut just before its own
fdatasync would have: one fdatasync per step instead of two.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from migration.errors import StateError
from migration.state.atomic import fsync_dir
from migration.state.document import RunDoc, StepDoc
from migration.state.shape import journal_problem


class Journal:
    """The open journal of one plan's runs: sequence numbers, appends, replay."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.seq = 0  # last entry written or replayed
        self.entries = 0  # entries since the last full save
        self._open: tuple[Path, int] | None = None  # (path, fd), appended to
        self._unsynced = False  # bytes written but not yet fdatasync'ed

    def path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.journal.jsonl"

    def replay(self, state: RunDoc, damaged_hint: str) -> None:
        """Apply the entries newer than the state's ``journal_seq`` to its steps."""
        path = self.path(state["run_id"])
        applied = state.get("journal_seq") or 0
        self.seq = applied
        if not path.exists():
            return
        by_id: dict[str, StepDoc] = {st["id"]: st for phase in state["phases"] for st in phase["steps"]}
        by_id.update({st["id"]: st for st in state["rollback"]["steps"]})
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line: the write it records never completed
                problem = journal_problem(entry)
                if problem is not None:
                    raise StateError(
                        f"journal {path} of the state file, line {number}: {problem}; it was edited or "
                        f"damaged. Repair it, or {damaged_hint}"
                    )
                if entry["seq"] <= applied:
                    continue
                target: Any = by_id.get(entry["step"]["id"])
                if target is not None:
                    target.clear()
                    target.update(entry["step"])
                applied = entry["seq"]
                self.entries += 1
        state["journal_seq"] = self.seq = applied

    def compacted(self, run_id: str) -> None:
        """The state file now holds everything: empty the journal."""
        if self.entries:
            os.truncate(self.path(run_id), 0)
        self.entries = 0
        self._unsynced = False  # all of it is in the file just written and fsynced

    def append(self, run_id: str, line: bytes, *, durable: bool) -> None:
        fd = self._fd(run_id)
        os.write(fd, line)
        if durable:
            os.fdatasync(fd)
        self._unsynced = not durable
        self.entries += 1

    def sync(self) -> None:
        """Make entries written with ``durable=False`` durable."""
        if self._unsynced and self._open is not None:
            os.fdatasync(self._open[1])
            self._unsynced = False

    def _fd(self, run_id: str) -> int:
        path = self.path(run_id)
        if self._open is not None and self._open[0] == path:
            return self._open[1]
        self.sync()
        self.close()
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._open = (path, fd)
        if created:
            fsync_dir(self.dir)  # the new file's name is durable too
        return fd

    def close(self) -> None:
        if self._open is not None:
            with contextlib.suppress(OSError):
                os.close(self._open[1])
            self._open = None
