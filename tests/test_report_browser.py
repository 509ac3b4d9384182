"""The HTML report in a real browser: Debian's Chromium, headless, reading the page offline.

The DOM Chromium builds must have the phases, steps and attempts as table rows, the
failures marked by class, and no Markdown markup in its text. Chromium comes from
``scripts/bootstrap.sh`` (``apt-get install chromium``); without it the test skips
saying so.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import migration, write_plan
from test_report_run import parse

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PLAN = """
name: browser-demo
rollback:
  - {id: undo, uses: shell, with: {command: [echo, undone]}}
phases:
  - id: prepare
    steps:
      - id: crashy
        uses: shell
        with: {command: "[ -e crashed ] || { touch crashed; sleep 0.2; kill -9 $PPID; }", shell: true}
      - id: flaky
        uses: shell
        retries: 1
        retry_delay: 0.1
        with: {command: "[ -e flaked ] || { touch flaked; exit 3; }", shell: true}
  - id: check
    steps:
      - id: count
        uses: shell
        with: {command: [echo, "**not bold** `not code` <b>not markup</b>"]}
    checkpoint:
      - that: "steps.count.outputs.exit_code == 1"
        message: a failing condition
"""


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={cwd / 'chromium-profile'}",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap.sh installs Debian's package)"
)
def test_chromium_renders_the_report_with_rows_and_highlighted_failures(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN)
    args = ["run", "plan.yaml", "--state-dir", "state", "--log-format", "json"]
    assert migration(tmp_path, *args).returncode == -signal.SIGKILL
    resumed = migration(tmp_path, *args)
    assert resumed.returncode == 3, resumed.stderr[-2000:]  # checkpoint failed, rolled back
    page = tmp_path / "report.html"
    report = migration(tmp_path, "report", "plan.yaml", "--format", "html", "--state-dir", "state")
    assert report.returncode == 0, report.stderr
    page.write_text(report.stdout, encoding="utf-8")

    dumped = _chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = parse(dumped.stdout)
    text = "".join(dom.text)
    assert "Migration report: browser-demo" in text
    for markup in ("**", "`", "- [FAIL]", "|---"):
        assert markup not in text.replace("**not bold** `not code`", ""), markup
    assert "<b>not markup</b>" in text  # escaped: shown, never parsed as a tag
    assert not any(tag == "b" for tag, _ in dom.tags)
    rows = [(cls.split(), cells) for cls, cells in dom.rows]
    assert ["phase"] in [cls for cls, cells in rows if cells[:1] == ["prepare"]]
    attempts = [(cls, cells[1], cells[3]) for cls, cells in rows if "attempt" in cls]
    assert (["attempt", "fail"], "attempt 1", "crashed") in attempts
    assert (["attempt", "fail"], "attempt 1", "failed") in attempts
    assert (["attempt"], "attempt 2", "succeeded") in attempts
    assert ["phase", "fail"] in [cls for cls, cells in rows if cells[:1] == ["check"]]
    failed_conditions = [a for t, a in dom.tags if t == "li" and a.get("class") == "fail"]
    assert failed_conditions, "the failed checkpoint condition is not highlighted"

    shot = tmp_path / "report.png"
    taken = _chromium(f"--screenshot={shot}", "--window-size=1200,900", page.as_uri(), cwd=tmp_path)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
