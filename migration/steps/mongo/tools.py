"""Running MongoDB Database Tools (mongodump, mongorestore) when a plan asks for them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from migration.errors import StepError
from migration.steps._subprocess import last_line, run_command
from migration.steps.base import StepContext

TAIL_CHARS = 2000


def find_tool(ctx: StepContext[Any], name: str) -> str:
    """The path of ``name`` on the step's PATH, or a StepError saying how to get it."""
    found = shutil.which(name, path=ctx.env.get("PATH", os.defpath))
    if found is None:
        raise StepError(
            f"tool: {name} was asked for, but {name} is not on PATH; install MongoDB "
            "Database Tools (or run scripts/mongotools.py) or use tool: native"
        )
    return found


def run_tool(ctx: StepContext[Any], argv: list[str], what: str) -> str:
    """Run a tool to completion (its process group killed on SIGINT/SIGTERM); return its redacted output.

    A non-zero exit is a StepError quoting the last line of its output.
    """
    result = run_command(
        argv,
        cwd=ctx.workdir,
        env=ctx.env,
        timeout=None,
        redact=ctx.redact.text,
        log=ctx.log.bind(tool=what),
        stop_flag=ctx.stop_flag,
    )
    # The Database Tools write progress and errors to stderr.
    text = "\n".join(part for part in (result.stdout, result.stderr) if part)[-TAIL_CHARS:]
    if result.exit_code != 0:
        last = last_line(result.stderr) or last_line(result.stdout)
        raise StepError(f"{Path(argv[0]).name} failed with exit code {result.exit_code} ({what}): {last}")
    return text
