"""Running a MongoDB Database Tool: output kept redacted, failures and stops handled."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from migration.errors import Interrupted, StepError
from migration.secrets import Redactor
from migration.steps.base import StepContext, StepParams
from migration.steps.mongo.tools import run_tool


def _ctx(tmp_path: Path) -> StepContext[StepParams]:
    return StepContext(step_id="dump", params=StepParams(), workdir=tmp_path, redact=Redactor(["hunter22"]))


def _tool(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake_tool.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def test_run_tool_returns_its_output_masked(tmp_path: Path) -> None:
    argv = _tool(tmp_path, "import sys\nprint('dumped 3 documents')\nprint('pw hunter22', file=sys.stderr)\n")
    text = run_tool(_ctx(tmp_path), argv, "mongodump things")
    assert "dumped 3 documents" in text and "pw ***" in text and "hunter22" not in text


def test_run_tool_failure_quotes_the_last_line(tmp_path: Path) -> None:
    argv = _tool(
        tmp_path, "import sys\nprint('Failed: auth with hunter22 refused', file=sys.stderr)\nsys.exit(4)\n"
    )
    with pytest.raises(StepError) as caught:
        run_tool(_ctx(tmp_path), argv, "mongorestore things")
    program = Path(sys.executable).name
    assert str(caught.value) == (
        f"{program} failed with exit code 4 (mongorestore things): Failed: auth with *** refused"
    )


def test_run_tool_stops_the_tool_on_a_stop_request(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = _tool(
        tmp_path, f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    ctx = _ctx(tmp_path)
    timer = threading.Timer(1.0, ctx.stop_flag.set, args=("SIGTERM",))
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="SIGTERM"):
        run_tool(ctx, argv, "mongodump things")
    assert time.monotonic() - started < 20
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] in "ZX"
