"""The ``shell`` step type: run a command and check its exit code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from migration.errors import StepError
from migration.steps._subprocess import (
    Command,
    build_argv,
    command_text,
    last_line,
    run_command,
    stringify_argv,
    stringify_env,
)
from migration.steps.base import Quoter, Step, StepContext, StepParams
from migration.steps.registry import register

# A whole-value template ("{{ vars.argv }}") may render to a list: judge it after rendering.
_SINGLE_TEMPLATE = re.compile(r"\s*\{\{.*\}\}\s*", re.DOTALL)


def check_command(command: Command, shell: bool | str) -> None:
    """A command is an argv list, or a string together with ``shell: true``."""
    if isinstance(command, str):
        if not shell and not _SINGLE_TEMPLATE.fullmatch(command):
            raise ValueError(
                "command is a string: set `shell: true` to run it with /bin/sh, or give an argv list"
            )
        if not command.strip():
            raise ValueError("command is empty")
    else:
        if not command:
            raise ValueError("command is an empty list")
        if shell:
            raise ValueError("`shell: true` needs command as one string, not a list")


class CommandParams(StepParams):
    """The parameters of every step that runs a command (``shell``, ``process.start``)."""

    command: list[str] | str = Field(description="argv list, or a string run by the shell when `shell: true`")
    shell: bool | str = Field(
        default=False, description="true for /bin/sh, or the path of another shell (bash)"
    )
    cwd: str | None = Field(default=None, description="working directory (default: where migration started)")
    env: dict[str, Any] = Field(default_factory=dict, description="extra environment variables")

    @field_validator("command", mode="before")
    @classmethod
    def _argv_strings(cls, value: Any) -> Any:
        return stringify_argv(value)

    @field_validator("env")
    @classmethod
    def _env_strings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return stringify_env(value)

    @model_validator(mode="after")
    def _command_shape(self) -> CommandParams:
        check_command(self.command, self.shell)
        return self

    def working_directory(self, ctx: StepContext[Any]) -> Path:
        """``cwd`` resolved against the run's directory; one that does not exist fails the step."""
        cwd = ctx.path(self.cwd) if self.cwd else ctx.workdir
        if not cwd.is_dir():
            raise StepError(f"working directory {cwd} does not exist")
        return cwd


@register
class Shell(Step["Shell.Params"]):
    """Run a command; fail unless its exit code is expected.

    The command is an argv list (no shell involved), or a string run by ``/bin/sh -c``
    when ``shell: true`` (then every templated value is shell-quoted before the shell
    sees it). Stdin is closed, so a tool that prompts fails instead of hanging. Output
    is streamed to the log line by line; the last 4000 characters of stdout and stderr
    become outputs. Secrets are masked everywhere. On timeout, or when the migration is
    interrupted, the command's whole process group is terminated (SIGTERM, then SIGKILL).

    Example:
        ```yaml
        - id: build
          uses: shell
          with:
            command: [yarn, build]
            cwd: ../vnp-dashboard-backend
            timeout: 600
        - id: stop-app
          uses: shell
          with:
            command: "pm2 stop {{ vars.app_name }} || true"
            shell: true
            env: {PM2_HOME: /srv/pm2}
            ok_codes: [0]
        ```
    """

    name = "shell"
    outside_effects = True
    undo_verb = "run"
    outputs = {
        "exit_code": "the command's exit code",
        "stdout": "last 4000 characters of its standard output, secrets masked",
        "stderr": "last 4000 characters of its standard error, secrets masked",
        "seconds": "how long it ran",
        "timed_out": "true when it was killed at its timeout (the step then fails)",
    }

    class Params(CommandParams):
        timeout: float | None = Field(
            default=None, gt=0, description="seconds before the process group is killed"
        )
        ok_codes: list[int] = Field(default_factory=lambda: [0], description="exit codes that pass")

    @classmethod
    def field_quoters(cls, raw_with: dict[str, Any]) -> dict[str, Quoter]:
        return {"command": Quoter.SHELL} if raw_with.get("shell") else {}

    def run(self, ctx: StepContext[Shell.Params]) -> dict[str, Any]:
        p = ctx.params
        ctx.redact.add_env(p.env)
        cwd = p.working_directory(ctx)
        argv = build_argv(p.command, p.shell)
        shown = ctx.redact(command_text(p.command))
        log = ctx.log
        log.info("running command", command=shown, cwd=str(cwd))
        result = run_command(
            argv,
            cwd=cwd,
            env={**ctx.env, **p.env},
            timeout=p.timeout,
            redact=ctx.redact.text,
            log=log,
            stop_flag=ctx.stop_flag,
        )
        outputs: dict[str, Any] = {
            "exit_code": result.exit_code,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "seconds": result.seconds,
        }
        if result.timed_out:
            outputs["timed_out"] = True
            raise StepError(
                f"command timed out after {p.timeout:g}s and was killed (with its process group): {shown}",
                outputs=outputs,
            )
        if result.exit_code not in p.ok_codes:
            reason = last_line(result.stderr) or last_line(result.stdout)
            expected = ", ".join(str(c) for c in p.ok_codes)
            raise StepError(
                f"command exited with code {result.exit_code} (expected {expected}): {shown}"
                + (f": {reason}" if reason else ""),
                outputs=outputs,
            )
        log.info("command finished", exit_code=result.exit_code, seconds=result.seconds)
        return outputs

    def preview(self, ctx: StepContext[Shell.Params]) -> str:
        p = ctx.params
        cwd = ctx.path(p.cwd) if p.cwd else ctx.workdir
        how = f" via {build_argv(p.command, p.shell)[0]}" if isinstance(p.command, str) else ""
        parts = [f"would run{how}: {ctx.redact(command_text(p.command))}", f"in {cwd}"]
        if p.env:
            parts.append("with env " + ", ".join(sorted(p.env)))
        if p.timeout:
            parts.append(f"timeout {p.timeout:g}s")
        if p.ok_codes != [0]:
            parts.append("ok codes " + ", ".join(str(c) for c in p.ok_codes))
        return "; ".join(parts)
