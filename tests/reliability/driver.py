"""The ``migration`` command, instrumented for the reliability suite.

Run as a script it behaves exactly like ``python -m migration.cli`` (same click
entry point, exit codes, output), plus two test hooks driven by the environment:

``RELIABILITY_PAUSE_AT``
    Event keys, comma-separated (``step:backup:running``, ``phase:p1:start``,
    ``run:succeed``, ``checkpoint:p1``...; see :func:`event_key`), or
    ``progress:<step-id>:<n>``. Right after the first event with one of those keys
    is written to the events log (so after the state change it records was
    persisted), or right after the n-th ``ctx.progress()`` of that step in this
    process was persisted, the process writes ``$RELIABILITY_DIR/paused`` (its pid
    and the key) and blocks until ``$RELIABILITY_DIR/release`` appears; then the
    same at the next key. A test SIGKILLs it there: a kill that lands exactly on a step
    boundary (or a progress report inside a step), every time.
``RELIABILITY_LOCK_WRITE_DELAY``
    Seconds to stall right after taking the plan lock (``flock``) and before
    writing the owner record into it, as a descheduled process on a busy machine
    would; ``$RELIABILITY_DIR/locked`` is written when the stall starts.
``RELIABILITY_EXEC_LOG``
    Every ``Step.run`` appends ``<pid> start <step-id>`` when it begins and
    ``<pid> end <step-id>`` when it returns: the record of which steps really
    executed, in which process.

``python driver.py --fork-server`` imports everything once and then starts each
run by ``fork()`` (requests as JSON lines on stdin): the same code in a real
separate process, without paying a second of imports per run.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from migration import cli, state  # noqa: E402
from migration.state import lock as state_lock  # noqa: E402
from migration.steps import base  # noqa: E402
from migration.steps.registry import step_types  # noqa: E402

PAUSE_TIMEOUT_S = 300.0
PAUSE_TIMEOUT_EXIT = 97


def event_key(event: str, fields: dict[str, Any]) -> str:
    """``run:<transition>``, ``phase:<id>:<transition>``, ``step:<id>:<dest>``, ``checkpoint:<phase>``."""
    if event == "run":
        return f"run:{fields.get('transition')}"
    if event == "phase":
        return f"phase:{fields.get('phase')}:{fields.get('transition')}"
    if event == "step":
        return f"step:{fields.get('step')}:{fields.get('dest')}"
    if event == "checkpoint":
        return f"checkpoint:{fields.get('phase')}"
    return event


def _wanted() -> set[str]:
    return set(filter(None, os.environ.get("RELIABILITY_PAUSE_AT", "").split(",")))


def _pause_here(key: str) -> None:
    folder = Path(os.environ.get("RELIABILITY_DIR", "."))
    release = folder / "release"
    marker = folder / "paused"
    tmp = folder / f".paused.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "key": key}))
    tmp.replace(marker)
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while not release.exists():
        if time.monotonic() > deadline:
            os._exit(PAUSE_TIMEOUT_EXIT)
        time.sleep(0.005)
    marker.unlink(missing_ok=True)  # first: once "release" is gone, so is the marker
    release.unlink()


class _SlowFlock:
    """Stands in for ``fcntl`` inside ``migration.state.lock`` (see RELIABILITY_LOCK_WRITE_DELAY)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(fcntl, name)

    @staticmethod
    def flock(fd: int, operation: int) -> None:
        fcntl.flock(fd, operation)
        delay = float(os.environ.get("RELIABILITY_LOCK_WRITE_DELAY") or 0)
        if delay and operation & fcntl.LOCK_EX:
            (Path(os.environ.get("RELIABILITY_DIR", ".")) / "locked").write_text(str(os.getpid()))
            time.sleep(delay)


def install_hooks() -> None:
    """Wrap EventLog.emit (pause points), every step type's run (execution log), the lock."""
    state_lock.fcntl = _SlowFlock()  # type: ignore[assignment]
    original_emit = state.EventLog.emit
    paused: list[str] = []

    @functools.wraps(original_emit)
    def emit(self: state.EventLog, event: str, **fields: Any) -> None:
        original_emit(self, event, **fields)
        key = event_key(event, fields)
        if key in _wanted() and key not in paused:
            paused.append(key)
            _pause_here(key)

    state.EventLog.emit = emit  # type: ignore[method-assign]

    original_progress = base.StepContext.progress
    reports: dict[str, int] = {}

    @functools.wraps(original_progress)
    def progress(self: base.StepContext[Any], **fields: Any) -> None:
        original_progress(self, **fields)
        reports[self.step_id] = reports.get(self.step_id, 0) + 1
        key = f"progress:{self.step_id}:{reports[self.step_id]}"
        if key in _wanted() and key not in paused:
            paused.append(key)
            _pause_here(key)

    base.StepContext.progress = progress  # type: ignore[method-assign]

    for cls in step_types().values():
        if getattr(cls.run, "_reliability_wrapped", False):
            continue
        cls.run = _recorded(cls.run)  # type: ignore[method-assign]


def _record(line: str) -> None:
    path = os.environ.get("RELIABILITY_EXEC_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{os.getpid()} {line}\n".encode())
        finally:
            os.close(fd)


def _recorded(run: Any) -> Any:
    @functools.wraps(run)
    def wrapper(self: Any, ctx: Any) -> Any:
        _record(f"start {ctx.step_id}")
        outputs = run(self, ctx)
        _record(f"end {ctx.step_id}")
        return outputs

    wrapper._reliability_wrapped = True  # type: ignore[attr-defined]
    return wrapper


def run_cli(args: list[str]) -> int:
    """The click entry point as ``migration ARGS`` runs it; returns the exit code."""
    try:
        cli.main.main(args, prog_name="migration")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the requested ``migration`` process, never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fd 0 lives as long as the process
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = run_cli(request["args"])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def fork_server() -> None:
    """Serve ``{"op": "spawn", ...}`` and ``{"op": "wait", "pid": N}`` requests, one JSON line each."""
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            out.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer: dict[str, Any] = {"pid": pid}
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            answer = {"pid": request["pid"], "code": os.waitstatus_to_exitcode(status)}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


def main() -> None:
    install_hooks()
    if sys.argv[1:] == ["--fork-server"]:
        fork_server()
        return
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
