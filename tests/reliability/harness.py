"""Test-side tools: start the instrumented ``migration``, stop it on a boundary, check the aftermath.

Two launchers run :mod:`driver`: :class:`SubprocessLauncher` (a fresh
interpreter per run, exactly as users run it) and :class:`ForkLauncher` (a
fork server that imported everything once: a real separate process per run,
a second cheaper). Both give a :class:`Launched` with the pid of the migration
process itself, to signal.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from helpers import cli_env

DRIVER = Path(__file__).resolve().parent / "driver.py"

# What the suite did (kill points, fuzzed plans...), printed at the end of the session.
TALLY: Counter[str] = Counter()


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


class Launched(Protocol):
    pid: int

    def wait(self, timeout: float = 120) -> Outcome: ...

    def poll(self) -> bool: ...


class Launcher(Protocol):
    def start(self, cwd: Path, args: list[str], env: Mapping[str, str]) -> Launched: ...


def _outputs(folder: Path) -> tuple[Path, Path]:
    tag = uuid.uuid4().hex[:8]
    return folder / f"out-{tag}.txt", folder / f"err-{tag}.txt"


@dataclass
class _Sub:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    pid: int = 0

    def __post_init__(self) -> None:
        self.pid = self.proc.pid

    def wait(self, timeout: float = 120) -> Outcome:
        code = self.proc.wait(timeout)
        return Outcome(code, self.out.read_text(errors="replace"), self.err.read_text(errors="replace"))

    def poll(self) -> bool:
        return self.proc.poll() is not None


class SubprocessLauncher:
    """``python driver.py ARGS`` in a new interpreter."""

    def __init__(self, io_dir: Path) -> None:
        self.io_dir = io_dir

    def start(self, cwd: Path, args: list[str], env: Mapping[str, str]) -> Launched:
        out, err = _outputs(self.io_dir)
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, str(DRIVER), *args],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        return _Sub(proc, out, err)


@dataclass
class _Forked:
    server: ForkLauncher
    pid: int
    out: Path
    err: Path
    code: int | None = None

    def wait(self, timeout: float = 120) -> Outcome:
        if self.code is None:
            self.code = self.server.wait(self.pid, timeout)
        return Outcome(self.code, self.out.read_text(errors="replace"), self.err.read_text(errors="replace"))

    def poll(self) -> bool:
        if self.code is not None:
            return True
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return True
        return stat[stat.rfind(")") + 2 :].split()[0] in ("Z", "X")


class ForkLauncher:
    """One fork server (``driver.py --fork-server``); each run is a fork of it."""

    def __init__(self, io_dir: Path) -> None:
        self.io_dir = io_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--fork-server"],
            env=cli_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def start(self, cwd: Path, args: list[str], env: Mapping[str, str]) -> Launched:
        out, err = _outputs(self.io_dir)
        answer = self._ask(
            {
                "op": "spawn",
                "cwd": str(cwd),
                "args": args,
                "env": dict(env),
                "stdout": str(out),
                "stderr": str(err),
            }
        )
        return _Forked(self, int(answer["pid"]), out, err)

    def wait(self, pid: int, timeout: float) -> int:
        forked = _Forked(self, pid, Path(), Path())
        deadline = time.monotonic() + timeout
        while not forked.poll():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                self._ask({"op": "wait", "pid": pid})
                raise AssertionError(f"migration pid {pid} did not finish within {timeout}s")
            time.sleep(0.01)
        return int(self._ask({"op": "wait", "pid": pid})["code"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


# -- a workspace: one plan, its state, its side effects -------------------------------------


@dataclass
class Workspace:
    """A working directory with a plan, run through one launcher.

    ``run()`` to completion; ``start(pause_at=KEY)`` and ``wait_paused()`` to stop a
    run right after a given event. Every state file seen is parsed (it must always be).
    """

    root: Path
    plan_name: str
    launcher: Launcher
    env: dict[str, str] = field(default_factory=dict)
    plan_file: str = "plan.yaml"
    extra_args: list[str] = field(default_factory=list)
    drop_env: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hooks = self.root / ".reliability"
        self.hooks.mkdir(parents=True, exist_ok=True)
        self.exec_log = self.hooks / "executions.log"
        self.states_seen = 0

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def args(self, command: str = "run") -> list[str]:
        return [command, self.plan_file, "--state-dir", "state", "--log-format", "json", *self.extra_args]

    def launcher_argv(self) -> list[str]:
        """The command line of the instrumented ``migration`` (for runs needing special set-up)."""
        return [sys.executable, str(DRIVER)]

    def process_env(self, pause_at: str | None = None) -> dict[str, str]:
        env = cli_env(self.env, drop=self.drop_env)
        env["RELIABILITY_DIR"] = str(self.hooks)
        env["RELIABILITY_EXEC_LOG"] = str(self.exec_log)
        env.pop("RELIABILITY_PAUSE_AT", None)
        if pause_at:
            env["RELIABILITY_PAUSE_AT"] = pause_at
        return env

    def start(self, pause_at: str | None = None, command: str = "run") -> Launched:
        (self.hooks / "paused").unlink(missing_ok=True)
        (self.hooks / "release").unlink(missing_ok=True)
        return self.launcher.start(self.root, self.args(command), self.process_env(pause_at))

    def run(self, command: str = "run", timeout: float = 180) -> Outcome:
        return self.start(command=command).wait(timeout)

    def paused_at(self, proc: Launched) -> str | None:
        """The key ``proc`` is paused at right now, if it is paused."""
        try:
            info = json.loads((self.hooks / "paused").read_text())
        except (OSError, ValueError):
            return None
        return str(info["key"]) if info.get("pid") == proc.pid else None

    def wait_paused(self, proc: Launched, timeout: float = 120) -> str:
        """Until ``proc`` sits in its pause point; returns the key. Reads the state all along."""
        deadline = time.monotonic() + timeout
        while True:
            self.read_state()
            key = self.paused_at(proc)
            if key is not None:
                return key
            if proc.poll():
                outcome = proc.wait()
                raise AssertionError(
                    f"migration exited ({outcome.code}) before its pause point: {outcome.stderr[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no pause point reached within {timeout}s")
            time.sleep(0.01)

    def release(self) -> None:
        """Let a paused process go on (it removes the ``paused`` marker before it does)."""
        (self.hooks / "release").touch()
        deadline = time.monotonic() + 10
        while (self.hooks / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.001)

    def read_state(self) -> dict[str, Any] | None:
        """The current state document; a state file that does not parse fails the test."""
        pointer = self.state_dir / self.plan_name / "current"
        if not pointer.exists():
            return None
        run_id = pointer.read_text().strip()
        path = self.state_dir / self.plan_name / f"{run_id}.json"
        text = path.read_text()
        try:
            state: dict[str, Any] = json.loads(text)
        except ValueError as exc:
            raise AssertionError(f"state file {path} is not valid JSON: {exc}: {text[:300]!r}") from exc
        self.states_seen += 1
        return state

    def executions(self) -> list[tuple[int, str, str]]:
        """(pid, start|end, step id) in the order steps ran."""
        if not self.exec_log.exists():
            return []
        out = []
        for line in self.exec_log.read_text().splitlines():
            pid, what, step = line.split(" ", 2)
            out.append((int(pid), what, step))
        return out

    def starts(self) -> Counter[str]:
        return Counter(step for _, what, step in self.executions() if what == "start")

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        folder = self.state_dir / self.plan_name
        run_id = run_id or (folder / "current").read_text().strip()
        path = folder / f"{run_id}.events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def all_steps(state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for phase in state["phases"]:
        yield from phase["steps"]
    yield from state["rollback"]["steps"]


def done_steps(state: dict[str, Any]) -> set[str]:
    """Steps the state records as completed: they must never run again."""
    return {s["id"] for s in all_steps(state) if s["status"] in ("succeeded", "skipped")}


def step_statuses(state: dict[str, Any]) -> dict[str, str]:
    return {s["id"]: s["status"] for s in all_steps(state)}


def kill_and_reap(proc: Launched, sig: signal.Signals = signal.SIGKILL, timeout: float = 60) -> Outcome:
    os.kill(proc.pid, sig)
    return proc.wait(timeout)


# -- small disks ---------------------------------------------------------------------------


# -- in-process runs (click's CliRunner) ---------------------------------------------------

WATCHDOG_S = 30.0


@dataclass
class Invocation:
    code: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[list[bool]]:
    """Interrupt the main thread if a call hangs (it then ends as exit 130, and the flag is set)."""
    fired: list[bool] = []

    def fire() -> None:
        fired.append(True)
        _thread.interrupt_main()

    timer = threading.Timer(seconds, fire)
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def invoke(workdir: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Invocation:
    """``migration ARGS`` through click's CliRunner, in ``workdir``, as a fresh process would see it."""
    from click.testing import CliRunner

    from migration import cli, log
    from migration.secrets import Redactor

    log._redactor = Redactor()  # what a new process starts with
    base: dict[str, str | None] = {"MIGRATION_STATE_DIR": None, "NO_COLOR": "1", "MIGRATION_FUZZ_UNSET": None}
    runner = CliRunner(env={**base, **(env or {})})
    with contextlib.chdir(workdir), _watchdog(WATCHDOG_S) as fired:
        result = runner.invoke(cli.main, list(args), catch_exceptions=True)
    assert not fired, f"migration {' '.join(args)} hung for {WATCHDOG_S}s"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return Invocation(result.exit_code, result.stdout, result.stderr)
