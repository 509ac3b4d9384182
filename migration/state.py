"""Durable run state: atomic JSON writes, the per-plan lock, the events log.

Layout under ``STATE_DIR/<plan-name>/``: ``<run-id>.json`` (one per run),
``current`` (the latest run id), ``lock`` (fcntl lock + pid and host) and
``<run-id>.events.jsonl`` (every transition, structlog JSON lines).

A state file is written to a temporary file, fsynced, renamed over the old one,
and the directory fsynced: a reader sees the old or the new document, never a
mix, whatever moment the process dies at.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog

from migration.errors import LockedError, StateError
from migration.machine import PHASE_STATES, RUN_STATES
from migration.secrets import Redactor

SCHEMA_VERSION = 1
FINISHED = frozenset({"succeeded", "rolled_back", "abandoned"})
STEP_STATES = frozenset({"pending", "running", "succeeded", "failed", "skipped", "interrupted"})
ROLLBACK_STATES: frozenset[str | None] = frozenset({None, "running", "succeeded", "failed"})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _fsync_dir(directory: Path) -> None:
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
    _fsync_dir(path.parent)


def _state_dir_error(directory: Path, exc: OSError) -> StateError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StateError(
            f"state directory {directory} is not writable ({exc.strerror}); "
            "fix its permissions or pass --state-dir DIR"
        )
    if exc.errno == errno.ENOSPC:
        return StateError(f"no space left for the state in {directory}; free some disk and run again")
    return StateError(f"cannot write state in {directory}: {exc.strerror or exc}")


# -- the shape of a state file --------------------------------------------------------
# A state file that is valid JSON can still have been edited into something the
# runner cannot use (a list where a dict belongs, a step without an id, a status
# no machine knows). ``shape_problem`` names the first such problem in one linear
# pass of cheap type checks (load is on the hot path: no models built, nothing
# copied), so the operator gets one clear line instead of a TypeError later.

_RUN_KEYS = ("run_id", "status", "phases", "plan_digest", "plan_name", "started_at", "rollback")
_STEP_KEYS = ("id", "uses", "status", "attempts")
_MISSING = object()
_KIND_NAMES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
}


class _Shape(Exception):
    """One problem with the shape of a state document (the message says where)."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _KIND_NAMES.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _field(doc: dict[str, Any], key: str, kind: type, where: str, *, required: bool = False) -> Any:
    """``doc[key]`` if it is a ``kind`` (or absent or null, unless ``required``); else ``_Shape``."""
    value = doc.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise _Shape(f"{where}{key} is {'missing' if value is _MISSING else 'null'}")
        return None
    # A bool is an int to isinstance: never take one for a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Shape(f"{where}{key} is {_kind(value)}, not {_KIND_NAMES[kind]}")
    return value


def _ident(doc: dict[str, Any], where: str) -> str:
    value: str = _field(doc, "id", str, where, required=True)
    if not value:
        raise _Shape(f"{where}id is empty")
    return value


def _status(doc: dict[str, Any], allowed: Collection[str | None], where: str) -> None:
    value = doc.get("status")
    if not (value is None or isinstance(value, str)) or value not in allowed:  # a list is unhashable
        known = ", ".join(sorted(str(s) for s in allowed if s is not None))
        known += " or null" if None in allowed else ""
        raise _Shape(f"{where}status {_show(doc.get('status'))} is not one of {known}")


_STEP_TEXTS = ("error", "started_at", "finished_at", "reason", "phase")


def _step_ok(step: Any) -> bool:
    """The common case, fast (a state can hold thousands of steps): a well-formed step."""
    if type(step) is not dict:
        return False
    ident, status, attempts = step.get("id"), step.get("status"), step.get("attempts")
    if not (type(ident) is str and ident and type(step.get("uses")) is str):
        return False
    if not (type(status) is str and status in STEP_STATES and type(attempts) is int and attempts >= 0):
        return False
    for key in ("outputs", "progress"):
        value = step.get(key)
        if value is not None and type(value) is not dict:
            return False
    for key in _STEP_TEXTS:
        value = step.get(key)
        if value is not None and type(value) is not str:
            return False
    return True


def _check_step(step: Any, where: str) -> None:
    if _step_ok(step):
        return
    if not isinstance(step, dict):
        raise _Shape(f"{where} is {_kind(step)}, not an object")
    missing = [k for k in _STEP_KEYS if k not in step]
    if missing:
        raise _Shape(f"{where} has no {', '.join(missing)}")
    where += "."
    _ident(step, where)
    _field(step, "uses", str, where, required=True)
    _status(step, STEP_STATES, where)
    if _field(step, "attempts", int, where, required=True) < 0:
        raise _Shape(f"{where}attempts is negative")
    _field(step, "outputs", dict, where)
    _field(step, "progress", dict, where)
    for key in _STEP_TEXTS:
        _field(step, key, str, where)


def _check_steps(steps: list[Any], where: str) -> None:
    for i, step in enumerate(steps):
        _check_step(step, f"{where}[{i}]")


def _check_phase(phase: Any, where: str) -> None:
    if not isinstance(phase, dict):
        raise _Shape(f"{where} is {_kind(phase)}, not an object")
    where += "."
    _ident(phase, where)
    _status(phase, PHASE_STATES, where)
    _field(phase, "started_at", str, where)
    _field(phase, "finished_at", str, where)
    checkpoint = _field(phase, "checkpoint", dict, where)
    if checkpoint is not None:
        _field(checkpoint, "status", str, f"{where}checkpoint.")
        for j, result in enumerate(_field(checkpoint, "results", list, f"{where}checkpoint.") or ()):
            if not isinstance(result, dict):
                raise _Shape(f"{where}checkpoint.results[{j}] is {_kind(result)}, not an object")
    _check_steps(_field(phase, "steps", list, where, required=True), f"{where}steps")


def _check_state(state: Any) -> None:
    if not isinstance(state, dict):
        raise _Shape(f"it is {_kind(state)}, not an object")
    missing = [k for k in _RUN_KEYS if k not in state]
    if missing:
        raise _Shape(f"missing {', '.join(missing)}")
    if not _field(state, "run_id", str, "", required=True):
        raise _Shape("run_id is empty")
    _status(state, RUN_STATES, "")
    if state.get("interrupted_from") not in (None, *RUN_STATES):
        raise _Shape(f"interrupted_from {_show(state['interrupted_from'])} is not a run status")
    for key in ("plan_digest", "plan_name", "started_at"):
        _field(state, key, str, "", required=True)
    _field(state, "finished_at", str, "")
    _field(state, "schema_version", int, "")
    _field(state, "needs_operator", bool, "")
    _field(state, "downtime", dict, "")
    _field(state, "plan_changes", list, "")
    if (_field(state, "journal_seq", int, "") or 0) < 0:
        raise _Shape("journal_seq is negative")
    error = _field(state, "error", dict, "")
    if error is not None:
        _field(error, "message", str, "error.")
    for i, phase in enumerate(_field(state, "phases", list, "", required=True)):
        _check_phase(phase, f"phases[{i}]")
    rollback = _field(state, "rollback", dict, "", required=True)
    _status(rollback, ROLLBACK_STATES, "rollback.")
    for key in ("reason", "error", "started_at", "finished_at"):
        _field(rollback, key, str, "rollback.")
    for key in ("done", "remaining"):
        _field(rollback, key, list, "rollback.")
    _check_steps(_field(rollback, "steps", list, "rollback.", required=True), "rollback.steps")


def shape_problem(state: Any) -> str | None:
    """The first thing wrong with the shape of a state document, or None if it can be used."""
    try:
        _check_state(state)
    except _Shape as problem:
        return str(problem)
    return None


def _journal_problem(entry: Any) -> str | None:
    """What is wrong with one parsed journal line, or None."""
    try:
        if not isinstance(entry, dict):
            raise _Shape(f"it is {_kind(entry)}, not an object")
        _field(entry, "seq", int, "", required=True)
        step = _field(entry, "step", dict, "", required=True)
        _check_step(step, "step")
    except _Shape as problem:
        return str(problem)
    return None


class EventLog:
    """Audit trail: one JSON line per transition, rendered by structlog."""

    def __init__(self, path: Path, redact: Redactor) -> None:
        self.path = path
        self._redact = redact
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
        self._log = structlog.wrap_logger(
            structlog.WriteLogger(self._file),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(default=str),
            ],
        )

    def emit(self, event: str, **fields: Any) -> None:
        self._log.msg(event, **self._redact(fields))

    def close(self) -> None:
        self._file.close()


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
            raise _state_dir_error(self.path.parent, exc) from exc
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
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

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
            if pid and host and host != socket.gethostname():
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


class StateStore:
    """All state of one plan: runs, the ``current`` pointer, lock and events."""

    def __init__(self, state_dir: Path, plan_name: str, redact: Redactor | None = None) -> None:
        self.root = Path(state_dir)
        self.dir = self.root / plan_name
        self.plan_name = plan_name
        self.redact = redact or Redactor()
        self.lock = PlanLock(self.dir / "lock")
        self._events: EventLog | None = None
        self._seq = 0  # last journal entry written or replayed
        self._journal_entries = 0  # entries in the journal since the last full save
        self._last_size = 0  # bytes of the last full save
        self._journal: tuple[Path, int] | None = None  # open journal (path, fd), appended to
        self._unsynced = False  # journal bytes written but not yet fdatasync'ed

    # -- directory and lock -------------------------------------------------------
    def prepare(self) -> None:
        try:
            # Private from the top when we create it: runs record what the plan did.
            if not self.root.exists():
                self.root.mkdir(parents=True, mode=0o700)
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.dir / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise _state_dir_error(self.dir, exc) from exc

    def acquire(self) -> None:
        self.prepare()
        self.lock.acquire()

    def release(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        try:
            self.sync()
        finally:
            self._close_journal()
            self.lock.release()

    # -- runs ---------------------------------------------------------------------
    def run_path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.json"

    def current_run_id(self) -> str | None:
        pointer = self.dir / "current"
        try:
            text = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {pointer}: {exc.strerror}") from exc
        return text or None

    def load(self, run_id: str) -> dict[str, Any]:
        path = self.run_path(run_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise StateError(
                f"state file {path} named by {self.dir / 'current'} is missing; restore it from "
                f"backup, or {self._abandon_hint}"
            ) from exc
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from exc
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(
                f"state file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}); it was edited or damaged. Repair it (the events log "
                f"{path.with_suffix('').name}.events.jsonl records every step), or {self._abandon_hint}"
            ) from exc
        version = state.get("schema_version") if isinstance(state, dict) else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise StateError(
                f"state file {path} was written by a newer migration (schema "
                f"{version}); upgrade migration to resume it"
            )
        problem = shape_problem(state)
        if problem is None and state["run_id"] != run_id:
            problem = f"its run_id {_show(state['run_id'])} is not its file name's {_show(run_id)}"
        if problem is not None:
            raise StateError(
                f"state file {path} is not a migration state ({problem}); it was edited or damaged. "
                f"Repair it, or {self._abandon_hint}"
            )
        self._replay_journal(state)
        return state

    # -- the step journal ---------------------------------------------------------
    # A big state (hundreds of steps) costs ~10 ms to rewrite atomically; a step's
    # change appended to a journal and fdatasync'ed costs ~1 ms. Small states are
    # always rewritten whole, so for ordinary plans the JSON file is exact at
    # every moment; big ones journal step changes and compact every
    # COMPACT_EVERY entries and at every phase or run transition.
    #
    # A step's end may be journaled without its own fdatasync (``durable=False``):
    # the bytes are written at once (a killed process loses nothing), and the
    # fdatasync of the next change, which always comes before the next action
    # (the next step's "running" record, a phase transition), makes both durable.
    # A power cut in between re-runs that step, exactly as a power cut just before
    # its own fdatasync would have: one fdatasync per step instead of two.
    JOURNAL_THRESHOLD = 64 * 1024
    COMPACT_EVERY = 256

    def journal_path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.journal.jsonl"

    def _replay_journal(self, state: dict[str, Any]) -> None:
        path = self.journal_path(state["run_id"])
        applied = state.get("journal_seq") or 0
        self._seq = applied
        if not path.exists():
            return
        by_id = {st["id"]: st for phase in state["phases"] for st in phase["steps"]}
        by_id.update({st["id"]: st for st in state["rollback"]["steps"]})
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line: the write it records never completed
                problem = _journal_problem(entry)
                if problem is not None:
                    raise StateError(
                        f"journal {path} of the state file, line {number}: {problem}; it was edited or "
                        f"damaged. Repair it, or {self._abandon_hint}"
                    )
                if entry["seq"] <= applied:
                    continue
                target = by_id.get(entry["step"]["id"])
                if target is not None:
                    target.clear()
                    target.update(entry["step"])
                applied = entry["seq"]
                self._journal_entries += 1
        state["journal_seq"] = self._seq = applied

    @property
    def _abandon_hint(self) -> str:
        return f"set it aside and start a new run with: migration abandon {self.plan_name}"

    def set_aside(self, run_id: str) -> Path | None:
        """Rename a damaged state file (kept for the record) and drop the ``current`` pointer."""
        path = self.run_path(run_id)
        kept = path.with_name(f"{path.name}.damaged-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
        try:
            if path.exists():
                path.rename(kept)
            (self.dir / "current").unlink(missing_ok=True)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise _state_dir_error(self.dir, exc) from exc
        return kept if kept.exists() else None

    def load_current(self) -> dict[str, Any] | None:
        run_id = self.current_run_id()
        return self.load(run_id) if run_id else None

    def list_runs(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json") if not p.name.startswith("."))

    def _encode(self, value: Any) -> bytes:
        # Values are redacted as they enter the state (outputs, errors, progress,
        # checkpoint values); one cheap pass over the text catches URL passwords.
        text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
        return self.redact.text(text).encode() if "://" in text else text.encode()

    def save(self, state: dict[str, Any]) -> None:
        """Rewrite the whole state file atomically (and fold the journal into it)."""
        run_id = state["run_id"]
        state["journal_seq"] = self._seq
        data = self._encode(state)
        try:
            atomic_write(self.run_path(run_id), data)
            if self._journal_entries:
                os.truncate(self.journal_path(run_id), 0)
        except OSError as exc:
            raise _state_dir_error(self.dir, exc) from exc
        self._last_size = len(data)
        self._journal_entries = 0
        self._unsynced = False  # all of it is in the file just written and fsynced

    def save_step(self, state: dict[str, Any], step: dict[str, Any], *, durable: bool = True) -> None:
        """Persist a change of one step: durable when this returns (see above for ``durable=False``)."""
        if self._last_size < self.JOURNAL_THRESHOLD or self._journal_entries >= self.COMPACT_EVERY:
            self.save(state)
            return
        self._seq += 1
        line = self._encode({"seq": self._seq, "step": step}) + b"\n"
        try:
            fd = self._journal_fd(state["run_id"])
            os.write(fd, line)
            if durable:
                os.fdatasync(fd)
            self._unsynced = not durable
        except OSError as exc:
            raise _state_dir_error(self.dir, exc) from exc
        self._journal_entries += 1

    def sync(self) -> None:
        """Make journal entries written with ``durable=False`` durable."""
        if self._unsynced and self._journal is not None:
            try:
                os.fdatasync(self._journal[1])
            except OSError as exc:
                raise _state_dir_error(self.dir, exc) from exc
            self._unsynced = False

    def _journal_fd(self, run_id: str) -> int:
        path = self.journal_path(run_id)
        if self._journal is not None and self._journal[0] == path:
            return self._journal[1]
        self.sync()
        self._close_journal()
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._journal = (path, fd)
        if created:
            _fsync_dir(self.dir)  # the new file's name is durable too
        return fd

    def _close_journal(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(OSError):
                os.close(self._journal[1])
            self._journal = None

    def set_current(self, run_id: str) -> None:
        try:
            atomic_write(self.dir / "current", (run_id + "\n").encode())
        except OSError as exc:
            raise _state_dir_error(self.dir, exc) from exc

    # -- events -------------------------------------------------------------------
    def events_path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.events.jsonl"

    def open_events(self, run_id: str) -> EventLog:
        if self._events is None or self._events.path != self.events_path(run_id):
            if self._events is not None:
                self._events.close()
            self._events = EventLog(self.events_path(run_id), self.redact)
        return self._events

    def debug_log_path(self) -> Path:
        return self.dir / "debug.log"
