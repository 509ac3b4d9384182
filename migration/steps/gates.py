"""The ``confirm`` step type: a human gate."""

from __future__ import annotations

import contextlib
import getpass
import os
import select
import sys
import termios
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from migration.errors import StepError
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.registry import register

# A mistyped confirmation at 2 a.m. should not roll back a migration: ask again.
MAX_ATTEMPTS = 3
_POLL_SECONDS = 0.2


def operator_name(env: dict[str, str]) -> str:
    """Who is at the keyboard: ``$USER``/``$LOGNAME``, else the account name."""
    for name in ("USER", "LOGNAME", "USERNAME"):
        if env.get(name):
            return env[name]
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@register
class Confirm(Step["Confirm.Params"]):
    """Ask the operator to confirm before going on.

    On a terminal the message is shown on stderr and the answer read from the
    terminal: with ``expect``, the operator must type that text exactly (three
    tries); otherwise ``y``/``yes``. An empty answer, end of input or anything else
    declines, and the step fails. Without a terminal the step fails unless the run
    was started with ``--yes``. Outputs who confirmed (``--yes`` or the user name)
    and when.

    Example:
        ```yaml
        - id: go-live
          uses: confirm
          with:
            message: "Validation passed. Restart production on {{ vars.host }}?"
            expect: RESUME PRODUCTION
        ```
    """

    name = "confirm"
    outside_effects = True
    outputs = {
        "confirmed_by": "'--yes' or the operator's user name",
        "confirmed_at": "UTC time of the confirmation",
    }

    class Params(StepParams):
        message: str = Field(description="what the operator is asked")
        expect: str | None = Field(
            default=None, description="text the operator must type exactly (default: y/yes)"
        )

    def run(self, ctx: StepContext[Confirm.Params]) -> dict[str, Any]:
        p = ctx.params
        message = ctx.redact(p.message)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        if ctx.assume_yes:
            ctx.log.info("confirmed by --yes", message=message)
            return {"confirmed_by": "--yes", "confirmed_at": now}
        if not ctx.interactive:
            raise StepError(
                f"confirmation needed ({message!r}) but there is no terminal to ask on; "
                "pass --yes to confirm non-interactively"
            )
        self._ask(ctx, message)
        user = operator_name(ctx.env)
        ctx.log.info("confirmed", message=message, by=user)
        return {
            "confirmed_by": user,
            "confirmed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def preview(self, ctx: StepContext[Confirm.Params]) -> str:
        p = ctx.params
        how = f"type {p.expect!r}" if p.expect else "answer y/yes"
        if ctx.assume_yes:
            then = "confirmed by --yes"
        elif ctx.interactive:
            then = "on this terminal"
        else:
            then = "would FAIL: no terminal and no --yes"
        return f"would ask the operator: {ctx.redact(p.message)!r} ({how}); {then}"

    def _ask(self, ctx: StepContext[Confirm.Params], message: str) -> None:
        expect = ctx.params.expect
        prompt = f"Type {expect!r} to continue (Enter to decline): " if expect else "Continue? [y/N] "
        sys.stderr.write(f"\n{message}\n")
        lines = _TerminalLines(ctx)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            sys.stderr.write(prompt)
            sys.stderr.flush()
            answer = lines.readline()
            if answer is None:
                raise StepError(f"not confirmed: end of input at the prompt ({message!r})")
            answer = answer.strip()
            if expect is None:
                if answer.lower() in ("y", "yes"):
                    return
                raise StepError(f"not confirmed: the operator answered {answer or 'nothing'!r}")
            if answer == expect:
                return
            if not answer:
                raise StepError(f"not confirmed: the operator declined ({message!r})")
            if attempt < MAX_ATTEMPTS:
                sys.stderr.write(f"That does not match {expect!r} exactly.\n")
        raise StepError(f"not confirmed: {MAX_ATTEMPTS} answers did not match {expect!r} ({message!r})")


class _TerminalLines:
    """Lines from stdin's file descriptor, waiting in short slices so SIGINT/SIGTERM stop it.

    Reads the descriptor directly (no hidden buffer that select() cannot see). Input
    typed before the question was shown is discarded first: a stray Enter or a
    pasted answer must never confirm a gate the operator has not read.
    """

    def __init__(self, ctx: StepContext[Any]) -> None:
        self.ctx = ctx
        self.fd = sys.stdin.fileno()
        self.pending = b""
        if os.isatty(self.fd):
            with contextlib.suppress(termios.error):
                termios.tcflush(self.fd, termios.TCIFLUSH)

    def readline(self) -> str | None:
        """One line without its newline, or None at end of input."""
        while b"\n" not in self.pending:
            self.ctx.check_stop()
            ready, _, _ = select.select([self.fd], [], [], _POLL_SECONDS)
            if not ready:
                continue
            chunk = os.read(self.fd, 4096)
            if not chunk:
                if not self.pending:
                    return None
                break
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode("utf-8", "replace")
