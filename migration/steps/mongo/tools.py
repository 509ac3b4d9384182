"""Running MongoDB Database Tools (mongodump, mongorestore) when a plan asks for them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from migration.errors import StepError
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
    """Run a tool to completion (killed on SIGINT/SIGTERM); return its redacted output.

    A non-zero exit is a StepError quoting the last line of its output.
    """
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ctx.workdir,
            env=ctx.env,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    ctx.check_stop()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
        output.seek(0)
        text = ctx.redact(output.read().decode("utf-8", "replace"))
    tail = str(text)[-TAIL_CHARS:]
    for line in tail.splitlines():
        ctx.log.info(what, line=line)
    if proc.returncode != 0:
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        raise StepError(f"{Path(argv[0]).name} failed with exit code {proc.returncode} ({what}): {last}")
    return tail
