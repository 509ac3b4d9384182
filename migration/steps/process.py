"""The ``process.start`` / ``process.stop`` step types: a service run detached.

``process.start`` launches the command in a new session (its own process group,
stdin from /dev/null, output appended to a log file), so it keeps running after
``migration`` exits. Its outputs identify the process for good: pid, process group,
the kernel's start time of the pid and the boot id. ``process.stop`` signals the
group only if the pid still belongs to that same process, so a pid reused by
another program after a reboot or a long pause is never killed.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from migration.errors import StepError
from migration.steps._subprocess import (
    TERM_GRACE_SECONDS,
    boot_id,
    build_argv,
    command_text,
    group_members,
    read_stat,
    spawn_error,
    terminate_group,
)
from migration.steps.base import Quoter, Step, StepContext, StepParams
from migration.steps.http import RequestFailed, UrlParam, fetch
from migration.steps.registry import register
from migration.steps.shell import CommandParams

LOG_DIR = Path(".migration") / "logs"
_READY_POLL_SECONDS = 0.5
_LOG_TAIL_BYTES = 4096

# Children started by this migration process, so stop (or a failed start) can reap
# them instead of leaving zombies. A resumed run in a new process does not need it.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def default_log_path(ctx: StepContext[Any]) -> Path:
    """``<workdir>/.migration/logs/<step id>.log``; appended to, one header per start."""
    return ctx.workdir / LOG_DIR / f"{ctx.step_id}.log"


def log_tail(path: Path, redact: Any, lines: int = 5) -> str:
    """The last lines of a log file, redacted and joined on one line."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - _LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return str(redact(" | ".join(kept)))


def _exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


@register
class ProcessStart(Step["ProcessStart.Params"]):
    """Start a long-running process (the app) detached, and wait until it is ready.

    The process gets its own session and process group, stdin from /dev/null, and
    its stdout and stderr appended to ``log`` (default
    ``.migration/logs/<step id>.log`` under the working directory). It survives the
    migration exiting. With ``ready_url`` the step waits, up to ``ready_timeout``
    seconds, until that URL answers 2xx or 3xx; without it, the process must stay up
    for ``settle`` seconds. If the process exits meanwhile, or never gets ready, the
    step fails with the last lines of its log (and stops what it started).
    Outputs ``pid``, ``pgid``, ``start_time``, ``boot_id``, ``log``: what
    ``process.stop`` needs to stop exactly this process later, even from a resumed run.
    The process writes its log itself, so secrets it prints are not masked there.

    Example:
        ```yaml
        - id: app
          uses: process.start
          with:
            command: [yarn, "start:prod"]
            cwd: ../vnp-dashboard-backend
            env: {NODE_ENV: production}
            ready_url: http://localhost:3000/
            ready_timeout: 120
        ```
    """

    name = "process.start"
    outside_effects = True
    # The service runs on the host that started it (see migration.hosts).
    host_local_outputs: ClassVar[dict[str, str]] = {"pid": "process"}
    outputs = {
        "pid": "process id",
        "pgid": "process group id",
        "start_time": "the process's start time in /proc (identifies it with pid)",
        "boot_id": "the kernel's boot id (a pid from before a reboot is not this process)",
        "host": "host name it runs on",
        "log": "path of its log file",
        "command": "the command, secrets masked",
        "started_at": "UTC time it was started",
        "ready_seconds": "seconds until ready_url answered",
        "exit_code": "its exit code, when it exited during start (the step then fails)",
    }

    class Params(CommandParams):
        log: str | None = Field(default=None, description="log file (default .migration/logs/<step id>.log)")
        ready_url: UrlParam | None = Field(default=None, description="URL that answers 2xx/3xx when up")
        ready_timeout: float = Field(default=60.0, gt=0, description="seconds to wait for ready")
        settle: float = Field(
            default=1.0, ge=0, description="without ready_url: seconds the process must stay up"
        )

    @classmethod
    def field_quoters(cls, raw_with: dict[str, Any]) -> dict[str, Quoter]:
        return {"command": Quoter.SHELL} if raw_with.get("shell") else {}

    def run(self, ctx: StepContext[ProcessStart.Params]) -> dict[str, Any]:
        p = ctx.params
        ctx.redact.add_env(p.env)
        cwd = p.working_directory(ctx)
        log_path = ctx.path(p.log) if p.log else default_log_path(ctx)
        shown = ctx.redact(command_text(p.command))
        argv = build_argv(p.command, p.shell)
        self._stop_earlier_attempt(ctx)
        if p.ready_url:
            # Something already answering would make "ready" a lie (an old
            # instance still shutting down, another service on the port).
            try:
                answer = fetch(p.ready_url, timeout=2.0)
            except RequestFailed:
                pass
            else:
                raise StepError(
                    f"{ctx.redact(p.ready_url)} already answers (status {answer.status}) before the "
                    "process is started: stop whatever serves it first"
                )
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = log_path.open("ab")
        except OSError as exc:
            raise StepError(f"cannot open log file {log_path}: {exc.strerror or exc}") from exc
        with log_file:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log_file.write(f"--- {stamp} step {ctx.step_id} started: {shown}\n".encode())
            log_file.flush()
            try:
                child = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env={**ctx.env, **p.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise spawn_error(argv, cwd, exc, ctx.redact.text) from exc
        _CHILDREN[child.pid] = child
        stat = read_stat(child.pid)
        outputs: dict[str, Any] = {
            "pid": child.pid,
            "pgid": child.pid,
            "start_time": stat[2] if stat else None,
            "boot_id": boot_id(),
            "host": socket.gethostname(),
            "log": str(log_path),
            "command": shown,
            "started_at": stamp,
        }
        ctx.log.info("process started", pid=child.pid, command=shown, log=str(log_path))
        # Durable before the wait: a migration killed while the service gets ready leaves
        # a record of it, and the next attempt stops it before starting another.
        ctx.progress(**{k: outputs[k] for k in ("pid", "pgid", "start_time", "boot_id")})
        try:
            self._wait_until_up(ctx, child, log_path, outputs)
        except BaseException:
            # A half-started service must not linger: a re-run would start a second one.
            terminate_group(child.pid, TERM_GRACE_SECONDS, child)
            with contextlib.suppress(Exception):
                ctx.progress()  # stopped: nothing for a later attempt to stop (its pid may be reused)
            raise
        return outputs

    @staticmethod
    def _stop_earlier_attempt(ctx: StepContext[ProcessStart.Params]) -> None:
        """Stop the service an interrupted attempt of this step started and never returned.

        The runner already stops what carries this step's ``MIGRATION_STEP`` mark; this
        also covers a service that rewrote its environment (pid and start time match).
        """
        earlier = ctx.resume
        if "pid" not in earlier or earlier.get("start_time") is None:
            return
        # Only the very process it recorded (pid and start time): a group whose leader
        # is gone may be someone else's by now, and members that carry this step's
        # mark were already stopped by the runner.
        verdict, _ = _identify(earlier)
        if verdict != "running":
            return
        pgid = int(earlier.get("pgid") or earlier["pid"])
        ctx.log.warning("stopping the service an interrupted attempt started", pid=earlier["pid"])
        terminate_group(pgid, TERM_GRACE_SECONDS, None)
        if group_members(pgid):
            raise StepError(
                f"the service an interrupted attempt started (process group {pgid}) does not stop; "
                f"stop it first (ps -o pid,stat,cmd -g {pgid})"
            )

    def _wait_until_up(
        self,
        ctx: StepContext[ProcessStart.Params],
        child: subprocess.Popen[bytes],
        log_path: Path,
        outputs: dict[str, Any],
    ) -> None:
        p = ctx.params
        started = time.monotonic()
        limit = p.ready_timeout if p.ready_url else p.settle
        last = "no answer yet"
        while True:
            code = child.poll()
            if code is not None:
                tail = log_tail(log_path, ctx.redact)
                waiting = f" before {ctx.redact(p.ready_url)} answered" if p.ready_url else ""
                raise StepError(
                    f"process {_exit_description(code)} during start{waiting}"
                    + (f"; last log lines: {tail}" if tail else "")
                    + f" (log: {log_path})",
                    outputs={**outputs, "exit_code": code},
                )
            elapsed = time.monotonic() - started
            if p.ready_url:
                try:
                    answer = fetch(p.ready_url, timeout=max(0.5, min(5.0, limit - elapsed)))
                    if 200 <= answer.status < 400:
                        elapsed = time.monotonic() - started
                        ctx.log.info("process ready", pid=child.pid, seconds=round(elapsed, 2))
                        outputs["ready_seconds"] = round(elapsed, 3)
                        return
                    last = f"status {answer.status}"
                except RequestFailed as exc:
                    last = str(exc)
                elapsed = time.monotonic() - started
                if elapsed >= limit:
                    raise StepError(
                        f"{ctx.redact(p.ready_url)} not ready after {p.ready_timeout:g}s "
                        f"(last: {ctx.redact(last)}); stopped the process (log: {log_path})",
                        outputs=outputs,
                    )
            elif elapsed >= limit:
                return
            ctx.wait(min(_READY_POLL_SECONDS, max(0.0, limit - elapsed)))

    def preview(self, ctx: StepContext[ProcessStart.Params]) -> str:
        p = ctx.params
        cwd = ctx.path(p.cwd) if p.cwd else ctx.workdir
        log_path = ctx.path(p.log) if p.log else default_log_path(ctx)
        text = f"would start detached: {ctx.redact(command_text(p.command))}; in {cwd}; log {log_path}"
        if p.ready_url:
            text += f"; then wait up to {p.ready_timeout:g}s for {ctx.redact(p.ready_url)}"
        return text


def _identify(started: dict[str, Any]) -> tuple[str, str | None]:
    """Is the recorded process still there? ``(verdict, note)``.

    Verdicts: ``running`` (the same process), ``leftovers`` (its leader is gone but
    members of its group live on), ``gone``.
    """
    pid = int(started["pid"])
    pgid = int(started.get("pgid") or pid)
    recorded_boot = started.get("boot_id")
    current_boot = boot_id()
    if recorded_boot and current_boot and recorded_boot != current_boot:
        return "gone", f"the machine rebooted since pid {pid} was started; nothing to stop"
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()
    stat = read_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        # Linux keeps a pid number allocated while a process group of that id has
        # members, so members found here belong to the group we started.
        if group_members(pgid):
            return "leftovers", f"pid {pid} had exited; stopped what was left of its group"
        return "gone", f"pid {pid} already exited; nothing to stop"
    recorded_start = started.get("start_time")
    if recorded_start is not None and stat[2] != int(recorded_start):
        return "gone", (
            f"pid {pid} now belongs to another process (start time {stat[2]}, "
            f"recorded {recorded_start}); the started process is gone; not touching it"
        )
    return "running", None


@register
class ProcessStop(Step["ProcessStop.Params"]):
    """Stop a process started by a ``process.start`` step, by that step's id.

    Sends SIGTERM to the process group, then SIGKILL if anything is left after
    ``timeout`` seconds. The process is identified by pid *and* start time (and boot
    id), so a pid since reused by another program is left alone. Stopping a process
    that is already gone succeeds with a ``note``, so a resumed run or a rollback can
    run this step again safely.

    Example:
        ```yaml
        - id: stop-app
          uses: process.stop
          with: {id: app, timeout: 20}
        ```
    """

    name = "process.stop"
    outside_effects = True
    step_id_params: ClassVar[tuple[str, ...]] = ("id",)
    undo_verb = "stop"
    outputs = {
        "stopped": "true when a running process was stopped",
        "pid": "process id of the start step's process (null if it recorded none)",
        "signal": "the last signal sent: SIGTERM, SIGKILL or null",
        "note": "why nothing was stopped, or how the process was identified",
        "seconds": "how long stopping took",
        "exit_code": "its exit code, when known",
    }

    class Params(StepParams):
        id: str = Field(description="id of the process.start step")
        timeout: float = Field(default=10.0, ge=0, description="seconds between SIGTERM and SIGKILL")

    def run(self, ctx: StepContext[ProcessStop.Params]) -> dict[str, Any]:
        p = ctx.params
        started = ctx.outputs_of.get(p.id) or {}
        if "pid" not in started:
            missing = f"step {p.id!r} recorded no process (it did not run or did not complete)"
            ctx.log.warning("nothing to stop", note=missing)
            return {"stopped": False, "pid": None, "signal": None, "note": missing}
        pid = int(started["pid"])
        pgid = int(started.get("pgid") or pid)
        verdict, note = _identify(started)
        if verdict == "gone":
            ctx.log.info("nothing to stop", pid=pid, note=note)
            return {"stopped": False, "pid": pid, "signal": None, "note": note}
        child = _CHILDREN.get(pid)
        ctx.log.info("stopping process", pid=pid, pgid=pgid, timeout_s=p.timeout)
        began = time.monotonic()
        sent = terminate_group(pgid, p.timeout, child)
        outputs: dict[str, Any] = {
            "stopped": True,
            "pid": pid,
            "signal": sent,
            "note": note,
            "seconds": round(time.monotonic() - began, 3),
        }
        if child is not None and child.poll() is not None:
            outputs["exit_code"] = child.returncode
            _CHILDREN.pop(pid, None)
        if group_members(pgid):
            raise StepError(
                f"process group {pgid} survived SIGKILL (stuck in the kernel?); "
                f"check with: ps -o pid,stat,cmd -g {pgid}",
                outputs=outputs,
            )
        if sent == "SIGKILL":
            ctx.log.warning("process ignored SIGTERM; killed", pid=pid, timeout_s=p.timeout)
        return outputs

    def preview(self, ctx: StepContext[ProcessStop.Params]) -> str:
        p = ctx.params
        started = ctx.outputs_of.get(p.id) or {}
        if "pid" not in started:
            return f"would stop the process started by step {p.id!r}"
        verdict, note = _identify(started)
        if verdict == "gone":
            return f"nothing to stop: {note}"
        return (
            f"would stop pid {started['pid']} (step {p.id!r}, {verdict}) with SIGTERM to its "
            f"process group, SIGKILL after {p.timeout:g}s"
        )
