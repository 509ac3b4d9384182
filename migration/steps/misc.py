"""Small step types: ``notify``, ``python``, ``sleep`` and ``require``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from migration.errors import MigrationError, StepError
from migration.steps._subprocess import (
    command_text,
    last_line,
    run_command,
    stringify_argv,
    stringify_env,
)
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.http import RequestFailed, check_url, fetch, learn_header_secrets
from migration.steps.registry import register

# --- notify ------------------------------------------------------------------------


@register
class Notify(Step["Notify.Params"]):
    """Tell the team: post to a webhook or run a command.

    With ``url``, POSTs ``{"text": text}`` as JSON (Slack and Mattermost incoming
    webhooks accept this as is); any answer but 2xx fails the step. With
    ``command`` (an argv list), runs it with the text in the environment variable
    ``MIGRATION_NOTIFY_TEXT``; a non-zero exit fails the step. Secrets in the text
    are masked before it leaves. Add ``continue_on_error: true`` to the step if a
    failed notification should not stop the migration.

    Example:
        ```yaml
        - id: tell-team
          uses: notify
          with:
            url: "{{ env.SLACK_WEBHOOK_URL }}"
            text: "Migration {{ run.id }}: production is live again"
        - id: tell-ops
          uses: notify
          with:
            command: [sh, -c, 'logger -t migration "$MIGRATION_NOTIFY_TEXT"']
            text: bank details migration done
        ```
    """

    name = "notify"

    class Params(StepParams):
        text: str = Field(description="the message")
        url: str | None = Field(default=None, description="webhook to POST {text} to as JSON")
        command: list[str] | None = Field(
            default=None, description="argv run with the text in $MIGRATION_NOTIFY_TEXT"
        )
        headers: dict[str, str] = Field(default_factory=dict, description="webhook headers")
        timeout: float = Field(default=30.0, gt=0, description="seconds")

        @field_validator("url")
        @classmethod
        def _url(cls, value: str | None) -> str | None:
            return None if value is None else check_url(value)

        @field_validator("command", mode="before")
        @classmethod
        def _argv_strings(cls, value: Any) -> Any:
            return stringify_argv(value)

        @field_validator("headers", mode="before")
        @classmethod
        def _header_strings(cls, value: Any) -> Any:
            return stringify_env(value) if isinstance(value, dict) else value

        @model_validator(mode="after")
        def _one_target(self) -> Notify.Params:
            if (self.url is None) == (self.command is None):
                raise ValueError("give exactly one of url (webhook) or command")
            if self.command is not None and not self.command:
                raise ValueError("command is an empty list")
            return self

    def run(self, ctx: StepContext[Notify.Params]) -> dict[str, Any]:
        p = ctx.params
        learn_header_secrets(ctx, p.headers)
        text = ctx.redact(p.text)
        if p.url is not None:
            where = ctx.redact(p.url)
            payload = json.dumps({"text": text}).encode()
            headers = {"Content-Type": "application/json", **p.headers}
            try:
                answer = fetch(p.url, method="POST", headers=headers, data=payload, timeout=p.timeout)
            except RequestFailed as exc:
                raise StepError(f"notify: POST {where}: {ctx.redact(str(exc))}") from exc
            if not 200 <= answer.status < 300:
                body = " ".join(answer.text().split())[:200]
                raise StepError(
                    f"notify: POST {where}: expected a 2xx status, got {answer.status}"
                    + (f": {ctx.redact(body)}" if body else ""),
                    outputs={"status": answer.status},
                )
            ctx.log.info("notified", url=where, status=answer.status)
            return {"status": answer.status}
        assert p.command is not None
        result = run_command(
            p.command,
            cwd=ctx.workdir,
            env={**ctx.env, "MIGRATION_NOTIFY_TEXT": text},
            timeout=p.timeout,
            redact=ctx.redact.text,
            log=ctx.log,
            stop_flag=ctx.stop_flag,
        )
        shown = ctx.redact(command_text(p.command))
        if result.timed_out:
            raise StepError(f"notify: {shown} timed out after {p.timeout:g}s")
        if result.exit_code != 0:
            reason = last_line(result.stderr) or last_line(result.stdout)
            raise StepError(
                f"notify: {shown} exited with code {result.exit_code}" + (f": {reason}" if reason else ""),
                outputs={"exit_code": result.exit_code},
            )
        return {"exit_code": result.exit_code}

    def preview(self, ctx: StepContext[Notify.Params]) -> str:
        p = ctx.params
        target = (
            f"POST to {ctx.redact(p.url)}"
            if p.url is not None
            else f"run {ctx.redact(command_text(p.command or []))}"
        )
        return f"would notify ({target}): {ctx.redact(p.text)!r}"


# --- python ------------------------------------------------------------------------

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def check_function_spec(value: str) -> str:
    if not _SPEC.match(value):
        raise ValueError(f"expected 'module:function' (e.g. mypkg.fixes:run), got {value!r}")
    return value


def import_search_paths(workdir: Path, env: dict[str, str]) -> list[str]:
    """The working directory, then ``PYTHONPATH`` entries (relative ones from ``workdir``)."""
    paths = [str(workdir)]
    for entry in (env.get("PYTHONPATH") or "").split(os.pathsep):
        if entry:
            paths.append(str(workdir / entry) if not os.path.isabs(entry) else entry)
    return paths


def load_function(spec: str, workdir: Path, env: dict[str, str]) -> Callable[..., Any]:
    """Import ``module:function`` with the working directory and PYTHONPATH on sys.path.

    Raises StepError naming the module and the function when it cannot be found.
    """
    check_function_spec(spec)
    module_name, _, attr_path = spec.partition(":")
    for entry in reversed(import_search_paths(workdir, env)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise StepError(
                f"cannot import {spec}: no module named {module_name!r} (searched {workdir} and PYTHONPATH)"
            ) from exc
        raise StepError(f"cannot import {spec}: module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise StepError(
            f"cannot import {spec}: module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise StepError(f"cannot import {spec}: module {module_name!r} has no {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise StepError(f"{spec} is not a function (it is a {type(target).__name__})")
    return target


def _json_safe(value: Any) -> Any:
    """Outputs must survive the state file: unknown types become strings."""
    return json.loads(json.dumps(value, default=str))


@register
class Python(Step["Python.Params"]):
    """Call a Python function ``module:function`` with keyword arguments.

    The module is imported with the working directory and ``PYTHONPATH`` on
    ``sys.path``. ``params`` are passed as keyword arguments, plus ``ctx`` (the step
    context: ``ctx.log``, ``ctx.check_stop()``...) if the function has a parameter
    of that name. A returned dict becomes the outputs; another value becomes
    ``{"result": value}``; None gives no outputs. An exception fails the step with
    its message (the traceback is logged); raise ``migration.errors.StepError`` for
    a clean one-line failure.

    Example:
        ```yaml
        - id: count-orphans
          uses: python
          with:
            function: scripts.checks:count_orphans
            params: {collection: PropertyBankDetails, limit: 100}
        ```
    """

    name = "python"

    class Params(StepParams):
        function: str = Field(description="'module:function' to call")
        params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")

        @field_validator("function")
        @classmethod
        def _spec(cls, value: str) -> str:
            return check_function_spec(value)

    def run(self, ctx: StepContext[Python.Params]) -> dict[str, Any]:
        p = ctx.params
        function = load_function(p.function, ctx.workdir, ctx.env)
        kwargs = dict(p.params)
        try:
            accepts_ctx = "ctx" in inspect.signature(function).parameters
        except (TypeError, ValueError):
            accepts_ctx = False
        if accepts_ctx:
            kwargs["ctx"] = ctx
        ctx.log.info("calling", function=p.function)
        printed = io.StringIO()
        try:
            # stdout is for machine-readable output; what the function prints is logged, masked.
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                result = function(**kwargs)
        except MigrationError:
            raise
        except Exception as exc:
            ctx.log.error(
                "python function failed",
                function=p.function,
                traceback=ctx.redact(traceback.format_exc()),
            )
            raise StepError(f"{p.function} raised {type(exc).__name__}: {ctx.redact(str(exc))}") from exc
        finally:
            for line in printed.getvalue().splitlines():
                ctx.log.info("output", line=ctx.redact(line))
        if result is None:
            return {}
        outputs = result if isinstance(result, dict) else {"result": result}
        return dict(ctx.redact(_json_safe(outputs)))

    def preview(self, ctx: StepContext[Python.Params]) -> str:
        p = ctx.params
        module_name = p.function.partition(":")[0]
        args = ", ".join(f"{k}={v!r}" for k, v in p.params.items())
        text = f"would call {p.function}({ctx.redact(args)})"
        # Locate the module without executing it (importing may have side effects).
        saved = list(sys.path)
        try:
            sys.path[:0] = import_search_paths(ctx.workdir, ctx.env)
            found = importlib.util.find_spec(module_name) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path[:] = saved
        return text if found else text + f"; WARNING: module {module_name!r} not found"


# --- sleep -------------------------------------------------------------------------


@register
class Sleep(Step["Sleep.Params"]):
    """Wait a number of seconds (interrupted at once by SIGINT/SIGTERM).

    Example:
        ```yaml
        - id: let-connections-drain
          uses: sleep
          with: {seconds: 30}
        ```
    """

    name = "sleep"

    class Params(StepParams):
        seconds: float = Field(ge=0, description="how long to wait")

    def run(self, ctx: StepContext[Sleep.Params]) -> dict[str, Any]:
        ctx.log.info("sleeping", seconds=ctx.params.seconds)
        ctx.wait(ctx.params.seconds)
        return {"seconds": ctx.params.seconds}

    def preview(self, ctx: StepContext[Sleep.Params]) -> str:
        return f"would wait {ctx.params.seconds:g}s"


# --- require -----------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")
# "x", "*" or the multiplication sign U+00D7, as in the design's "k \u00d7 figure".
_TIMES = re.compile("\\s*[x*\u00d7]\\s*", re.IGNORECASE)


def parse_size(value: int | float | str) -> int:
    """Bytes from ``10737418240``, ``"10GB"``, ``"512MiB"`` or ``"2 x 5GB"`` (a product).

    ``KB/MB/GB/TB`` are powers of 1000; ``KiB/MiB/GiB/TiB`` and bare ``K/M/G/T``
    powers of 1024.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"size must not be negative: {value!r}")
        return int(value)
    total = 1.0
    for factor in _TIMES.split(value.strip()):
        match = _QUANTITY.match(factor)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS:
            raise ValueError(f"not a size: {value!r} (use bytes, '10GB', '512MiB' or '2 x 5GB')")
        total *= float(match.group(1)) * _UNITS[unit]
    return int(total)


def format_size(n: int | float) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent: a backup folder may not exist yet."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


class FreeDisk(StepParams):
    path: str = Field(default=".", description="a path on the disk to check")
    # A size string is accepted and converted; the schema says so for editors. A
    # template (checked at load time, before rendering) stays a string until then.
    required: Annotated[
        int | str,
        WithJsonSchema(
            {
                "type": ["integer", "string"],
                "description": "bytes needed: 1000000, '10GB', '512MiB' or '2 x 5GB'",
            }
        ),
    ] = Field(alias="bytes")

    @field_validator("required", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | str:
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            return value
        if not isinstance(value, (int, float, str)):
            raise ValueError(f"not a size: {value!r}")
        return parse_size(value)

    @property
    def required_bytes(self) -> int:
        return parse_size(self.required)


@register
class Require(Step["Require.Params"]):
    """Check the machine has what the plan needs: commands, variables, free disk.

    Everything is checked, then the step fails with one line listing all that is
    missing. ``free_disk`` takes a path (it need not exist yet; its nearest existing
    parent is measured) and ``bytes``: a number, a size such as ``10GB`` or
    ``512MiB``, or a product such as ``"2 x {{ steps.preflight.outputs.data_bytes }}"``.
    Outputs where each command was found, which variables were checked (never their
    values) and the free bytes measured.

    Example:
        ```yaml
        - id: prerequisites
          uses: require
          with:
            commands: [mongodump, mongorestore, yarn]
            env: [DATABASE_URL]
            free_disk: {path: backups, bytes: "2 x {{ steps.preflight.outputs.data_bytes }}"}
        ```
    """

    name = "require"

    class Params(StepParams):
        commands: list[str] = Field(default_factory=list, description="executables on PATH")
        env: list[str] = Field(default_factory=list, description="variables set and non-empty")
        free_disk: list[FreeDisk] = Field(
            default_factory=list, description="{path, bytes} (or a list of them): free space needed"
        )

        @field_validator("free_disk", mode="before")
        @classmethod
        def _one_or_many(cls, value: Any) -> Any:
            return [value] if isinstance(value, dict) else value if value is not None else []

    def run(self, ctx: StepContext[Require.Params]) -> dict[str, Any]:
        outputs, missing = self._check(ctx)
        if missing:
            raise StepError("missing: " + "; ".join(missing), outputs=outputs)
        ctx.log.info("requirements met", **{k: v for k, v in outputs.items() if k != "env"})
        return outputs

    def _check(self, ctx: StepContext[Require.Params]) -> tuple[dict[str, Any], list[str]]:
        p = ctx.params
        missing: list[str] = []
        search = ctx.env.get("PATH", os.defpath)
        found: dict[str, str] = {}
        absent = []
        for command in p.commands:
            where = shutil.which(command, path=search)
            if where:
                found[command] = where
            else:
                absent.append(command)
        if absent:
            missing.append("commands not on PATH: " + ", ".join(absent))
        unset = [name for name in p.env if not ctx.env.get(name)]
        if unset:
            missing.append("environment variables not set: " + ", ".join(unset))
        disks: list[dict[str, Any]] = []
        for disk in p.free_disk:
            try:
                required = disk.required_bytes
            except ValueError as exc:
                missing.append(f"free disk at {disk.path}: {exc}")
                continue
            target = ctx.path(disk.path)
            measured = existing_ancestor(target)
            try:
                free = shutil.disk_usage(measured).free
            except OSError as exc:
                missing.append(f"free disk at {target}: cannot measure ({exc.strerror or exc})")
                continue
            disks.append({"path": str(target), "free_bytes": free, "required_bytes": required})
            if free < required:
                missing.append(
                    f"free disk at {target}: {format_size(free)} free, need {format_size(required)}"
                )
        outputs: dict[str, Any] = {
            "commands": found,
            "env": [name for name in p.env if name not in unset],
            "free_disk": disks,
        }
        if disks:
            outputs["free_bytes"] = disks[0]["free_bytes"]
        return outputs, missing

    def preview(self, ctx: StepContext[Require.Params]) -> str:
        outputs, missing = self._check(ctx)
        parts = []
        if ctx.params.commands:
            parts.append("commands " + ", ".join(ctx.params.commands))
        if ctx.params.env:
            parts.append("env " + ", ".join(ctx.params.env))
        for disk in outputs["free_disk"]:
            parts.append(f"{format_size(disk['required_bytes'])} free at {disk['path']}")
        now = "would FAIL now: " + "; ".join(missing) if missing else "all present now"
        return f"would check {', '.join(parts) or 'nothing'}; {now}"
