"""Child processes that never outlive a stopped, interrupted or timed-out step.

Every child runs in its own session (so its own process group): a timeout, a
SIGINT/SIGTERM of ``migration`` or an exception signals the whole group, then
escalates to SIGKILL, so grandchildren started by a shell die too. Output is read
without threads, logged line by line (redacted) and kept as bounded tails.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from migration.errors import Interrupted, StepError
from migration.steps.base import StopFlag

TAIL_CHARS = 4000
# Raw bytes kept per stream (4000 characters of UTF-8 need up to 16000): redaction
# runs over all of it before the tail is cut, so a secret straddling the cut can
# never leak half-masked.
_BUFFER_BYTES = 16 * 1024 + 4096
_MAX_LINE_BYTES = 8192
TERM_GRACE_SECONDS = 5.0
# After the command exits, how long to wait for background children holding its pipes.
_PIPE_DRAIN_SECONDS = 2.0
_POLL_SECONDS = 0.1

Command = list[str] | str


def build_argv(command: Command, shell: bool | str) -> list[str]:
    """The argv to execute: a list as is; a string through ``/bin/sh -c`` (or the named shell)."""
    if isinstance(command, str):
        program = "/bin/sh" if shell is True or not shell else str(shell)
        return [program, "-c", command]
    return list(command)


def command_text(command: Command) -> str:
    """A copy-pasteable rendering of a command for logs, previews and errors."""
    return command if isinstance(command, str) else shlex.join(command)


def scalar_text(value: Any) -> Any:
    """A YAML/template scalar (3000, true, null) as the text a process sees; others unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return value


def stringify_env(values: Mapping[str, Any]) -> dict[str, str]:
    """Environment values from YAML (ints, bools) as the strings a process sees."""
    return {str(name): str(scalar_text(value)) for name, value in values.items()}


def stringify_argv(value: Any) -> Any:
    """An argv list may hold numbers (``"{{ vars.port }}"`` renders to an int): make them text."""
    if isinstance(value, (list, tuple)):
        return [scalar_text(item) for item in value]
    return value


def spawn_error(argv: list[str], cwd: Path, exc: OSError, redact: Callable[[str], str]) -> StepError:
    """One line saying why a command could not start at all."""
    program = redact(argv[0]) if argv else "?"
    if isinstance(exc, FileNotFoundError):
        if not cwd.is_dir():
            return StepError(f"working directory {cwd} does not exist")
        return StepError(f"command not found: {program} (not on PATH and not a file)")
    if isinstance(exc, PermissionError):
        return StepError(f"cannot execute {program}: permission denied")
    return StepError(f"cannot start {program}: {redact(str(exc))}")


# --- process groups -------------------------------------------------------------------


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, pgid, start_time)`` of a live pid from ``/proc``, or None if there is none.

    ``start_time`` is in clock ticks since boot: with the pid it identifies one
    process for good, so a reused pid is never mistaken for the one we started.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    rest = text[text.rfind(")") + 2 :].split()
    return rest[0], int(rest[2]), int(rest[19])


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            return [pgid]
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def terminate_group(
    pgid: int,
    grace: float = TERM_GRACE_SECONDS,
    child: subprocess.Popen[Any] | None = None,
) -> str | None:
    """SIGTERM the group, SIGKILL whatever is left after ``grace`` seconds.

    ``child`` (our own child, the group leader) is reaped while waiting so it does
    not linger as a zombie. Returns the last signal sent, or None if the group was
    already gone.
    """
    if child is not None:
        child.poll()
    if not group_members(pgid):
        return None
    _signal_group(pgid, signal.SIGTERM)
    if _wait_group_gone(pgid, grace, child):
        return "SIGTERM"
    _signal_group(pgid, signal.SIGKILL)
    _wait_group_gone(pgid, 5.0, child)
    return "SIGKILL"


def _wait_group_gone(pgid: int, seconds: float, child: subprocess.Popen[Any] | None) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if child is not None:
            child.poll()
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# --- running a command to completion -------------------------------------------------


@dataclass
class Completed:
    """What a finished (or killed) command left behind. Tails are redacted."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


class _Stream:
    """Splits one pipe into logged lines and keeps a bounded tail."""

    def __init__(self, name: str, log: Any, redact: Callable[[str], str], log_lines: bool) -> None:
        self.name = name
        self.log = log
        self.redact = redact
        self.log_lines = log_lines
        self.tail = bytearray()
        self.partial = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.tail += chunk
        if len(self.tail) > _BUFFER_BYTES:
            del self.tail[: len(self.tail) - _BUFFER_BYTES]
        self.partial += chunk
        while True:
            newline = self.partial.find(b"\n")
            if newline < 0:
                break
            self._emit(bytes(self.partial[:newline]))
            del self.partial[: newline + 1]
        if len(self.partial) > _MAX_LINE_BYTES:
            self._emit(bytes(self.partial))
            self.partial.clear()

    def finish(self) -> None:
        if self.partial:
            self._emit(bytes(self.partial))
            self.partial.clear()

    def _emit(self, raw: bytes) -> None:
        if self.log_lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.log.info("output", stream=self.name, line=self.redact(line))

    def text(self) -> str:
        full = self.redact(self.tail.decode("utf-8", "replace")).rstrip("\n")
        return full[-TAIL_CHARS:]


def run_command(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float | None,
    redact: Callable[[str], str],
    log: Any,
    stop_flag: StopFlag,
    grace: float = TERM_GRACE_SECONDS,
    log_lines: bool = True,
) -> Completed:
    """Run ``argv`` to completion with stdin closed, streaming its output to ``log``.

    On timeout the process group is killed and ``timed_out`` is set. On a stop
    request (``stop_flag``) or any exception raised meanwhile (the runner's signal
    handler may raise :class:`Interrupted` here) the group is killed before the
    exception propagates. Raises StepError if the command cannot start.
    """
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    streams: dict[int, tuple[IO[bytes], _Stream]] = {}
    timed_out = False
    completed = False
    exited_at: float | None = None
    proc: subprocess.Popen[bytes] | None = None
    # Everything from the spawn on is inside the try: an Interrupted raised by the
    # signal handler right after Popen returns still stops the group it started.
    try:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise spawn_error(argv, cwd, exc, redact) from exc
        pgid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        streams[proc.stdout.fileno()] = (proc.stdout, _Stream("stdout", log, redact, log_lines))
        streams[proc.stderr.fileno()] = (proc.stderr, _Stream("stderr", log, redact, log_lines))
        for fd, (_, stream) in streams.items():
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ, stream)
        while True:
            if selector.get_map():
                for key, _ in selector.select(timeout=_POLL_SECONDS):
                    stream = key.data
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if chunk:
                        stream.feed(chunk)
                    else:
                        selector.unregister(key.fd)
                        stream.finish()
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(_POLL_SECONDS)
            now = time.monotonic()
            if proc.poll() is not None:
                if not selector.get_map():
                    break
                if exited_at is None:
                    exited_at = now
                elif now - exited_at > _PIPE_DRAIN_SECONDS:
                    log.warning(
                        "command exited but background processes still hold its output; "
                        "not waiting for them (use process.start for services)"
                    )
                    break
            if stop_flag.is_set():
                raise Interrupted(
                    f"interrupted by {stop_flag.signal_name or 'a signal'}; "
                    f"stopped {redact(command_text(argv))}"
                )
            if timeout is not None and not timed_out and now - started > timeout:
                timed_out = True
                log.warning("timeout: killing the process group", timeout_s=timeout, pgid=pgid)
                terminate_group(pgid, grace, proc)
        completed = True
    finally:
        # On an exception (Interrupted, ...) nothing of the command may keep running.
        # After a normal exit, processes it deliberately left in the background
        # (``nohup x &``) are its business.
        if proc is not None and (not completed or proc.poll() is None):
            terminate_group(proc.pid, grace, proc)
        for fd, (pipe, stream) in streams.items():
            if fd in selector.get_map():
                stream.finish()
            pipe.close()
        selector.close()
    return Completed(
        exit_code=proc.returncode,
        stdout=streams_text(streams, "stdout"),
        stderr=streams_text(streams, "stderr"),
        timed_out=timed_out,
        seconds=round(time.monotonic() - started, 3),
    )


def streams_text(streams: dict[int, tuple[IO[bytes], _Stream]], name: str) -> str:
    for _, stream in streams.values():
        if stream.name == name:
            return stream.text()
    return ""


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of ``text``, shortened: the usual reason a command failed."""
    for line in reversed(text.splitlines()):
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""
