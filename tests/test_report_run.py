"""Run reports of a real run through the CLI: every attempt (a crash, its resume, a retry,
with the time lost), invalid ids, dangling references and sample documents, in Markdown
and in HTML (checked with html.parser here; in a real browser in test_report_browser.py)."""

from __future__ import annotations

import json
import re
import signal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_env, load_state, migration, step_states, write_plan

REPORT_PLAN = """
name: report-demo
vars:
  db: "{{ env.REPORT_DB }}"
rollback:
  - {id: undo, uses: shell, with: {command: [echo, undone]}}
phases:
  - id: prepare
    steps:
      # Kills migration itself (SIGKILL) the first time: a crash, then a resume.
      - id: crashy
        uses: shell
        with: {command: "[ -e crashed ] || { touch crashed; sleep 0.2; kill -9 $PPID; }", shell: true}
      - id: flaky
        uses: shell
        retries: 1
        retry_delay: 0.1
        with: {command: "[ -e flaked ] || { touch flaked; echo 'first try fails' >&2; exit 3; }", shell: true}
  - id: transform
    steps:
      - id: totals
        uses: mongo.transform
        with: {uri: "{{ vars.db }}", collection: orders, function: "fixes:total_to_number"}
  - id: validate
    steps:
      - id: validate
        uses: mongo.validate
        with:
          uri: "{{ vars.db }}"
          checks:
            - {name: peek, type: sample, collection: customers, size: 2}
            - {name: customers-exist, type: references, collection: orders, field: customer_id, to: customers}
    checkpoint:
      - that: "steps.validate.outputs.failed == 0"
        message: every check must pass
"""

FIXES = """
from migration.errors import InvalidDocument


def total_to_number(doc):
    try:
        return {"$set": {"total": float(doc["total"])}}
    except ValueError:
        raise InvalidDocument(f"total {doc['total']!r} is not a number *really*") from None
"""

INVALID = 12  # more than the report lists one by one (10)


def _seed(db: Any) -> None:
    db.customers.insert_many([{"_id": i, "name": f"customer `{i}` <b>"} for i in range(1, 6)])
    orders = []
    for i in range(1, 31):
        total = f"x{i}" if i <= INVALID else f"{i}.50"
        orders.append({"_id": i, "customer_id": 1 + i % 8, "total": total})
    db.orders.insert_many(orders)


@pytest.fixture
def reported_run(mongo_url: str, mongo_db: Any, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A run that crashed once, retried once, found invalid documents and dangling
    references, failed its checkpoint and rolled back."""
    _seed(mongo_db)
    write_plan(tmp_path / "plan.yaml", REPORT_PLAN)
    (tmp_path / "fixes.py").write_text(FIXES)
    env = cli_env({"REPORT_DB": mongo_url})
    args = ["run", "plan.yaml", "--state-dir", "state", "--log-format", "json"]
    first = migration(tmp_path, *args, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = migration(tmp_path, *args, env=env, timeout=120)
    assert second.returncode == 3, second.stderr[-3000:]  # checkpoint failed, rolled back
    md = migration(tmp_path, "report", "plan.yaml", "--state-dir", "state")
    html = migration(tmp_path, "report", "plan.yaml", "--format", "html", "--state-dir", "state")
    assert md.returncode == 0 and html.returncode == 0, md.stderr + html.stderr
    (tmp_path / "report.html").write_text(html.stdout, encoding="utf-8")
    return tmp_path, {"md": md.stdout, "html": html.stdout}


def test_the_state_records_every_attempt_of_a_step(reported_run: tuple[Path, dict[str, str]]) -> None:
    tmp_path, _ = reported_run
    steps = step_states(load_state(tmp_path / "state", "report-demo"))
    crashy = steps["crashy"]["history"]
    assert [(a["attempt"], a["status"]) for a in crashy] == [(1, "crashed"), (2, "succeeded")]
    assert crashy[0]["finished_at"] is None and crashy[1]["finished_at"]
    flaky = steps["flaky"]["history"]
    assert [(a["attempt"], a["status"]) for a in flaky] == [(1, "failed"), (2, "succeeded")]
    assert "exit" in flaky[0]["error"] and flaky[1]["error"] is None
    assert [a["status"] for a in steps["totals"]["history"]] == ["succeeded"]


def test_markdown_report_shows_attempts_invalid_ids_dangling_refs_and_samples(
    reported_run: tuple[Path, dict[str, str]],
) -> None:
    md = reported_run[1]["md"]
    lines = md.splitlines()
    crash_row = next(line for line in lines if line.startswith("| | attempt 1 |") and "crashed" in line)
    assert "| crashed |" in crash_row
    lost = crash_row.split("|")[7].strip()
    assert lost.endswith("s") and lost != "-", crash_row  # the time the crash cost
    assert any(line.startswith("| | attempt 2 |") and "| succeeded |" in line for line in lines)
    assert "time lost to failed or interrupted attempts:" in md
    # Invalid documents: ids and reasons of the first ten, then a count.
    assert f"Invalid documents: {INVALID} (the first 10):" in md
    assert "- _id `1`: total 'x1' is not a number *really*" in md
    assert "- _id `10`:" in md and "- _id `11`:" not in md
    assert f"- ... and {INVALID - 10} more (in the per-record log)" in md
    # Dangling references: orders whose customer_id (6, 7, 8) is not a customer.
    assert "- [FAIL] **customers-exist** (references)" in md
    assert "dangling references (first 3):" in md
    for value in (6, 7, 8):
        assert f"`{value}` is not an _id in customers" in md
    # The sample check's documents, whole, as JSON.
    assert "### Sample documents: peek (2)" in md
    assert '"name": "customer `1` <b>"' in md
    assert "- [FAIL] `steps.validate.outputs.failed == 0` - every check must pass" in md


class _Page(HTMLParser):
    """Text, tags and attributes of a page, as a browser would build them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: list[tuple[str, list[str]]] = []
        self._row: list[str] | None = None
        self._row_class = ""
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        if tag in ("style", "title"):
            self._skip += 1
        if tag == "tr":
            self._row, self._row_class = [], attributes.get("class", "")
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._skip -= 1
        if tag == "tr" and self._row is not None:
            self.rows.append((self._row_class, [c.strip() for c in self._row]))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._row is not None and self._row:
            self._row[-1] += data


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def test_html_report_is_a_real_self_contained_page(reported_run: tuple[Path, dict[str, str]]) -> None:
    page = parse(reported_run[1]["html"])
    text = "".join(page.text)
    # No Markdown markup left in what a reader sees (the seeded names hold backticks).
    for markup in ("**", "`", "- [FAIL]", "- [pass]", "|---", "### "):
        assert markup not in re.sub(r"customer `\d`", "", text), f"{markup!r} left in the HTML text"
    # Self-contained: no scripts, nothing fetched.
    tags = [tag for tag, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    for _, attributes in page.tags:
        assert not any(v.startswith(("http:", "https:", "//")) for v in attributes.values())
    assert any(a.get("http-equiv") == "Content-Security-Policy" for t, a in page.tags if t == "meta")
    # Phases, steps and attempts as table rows; failures highlighted by class.
    rows = {tuple(cells[:2]): (cls, cells) for cls, cells in page.rows if len(cells) >= 4}
    assert rows[("prepare", "")][0] == "phase"
    assert rows[("", "crashy")][1][3] == "succeeded"
    crash = [(cls, cells) for cls, cells in page.rows if cells[1:2] == ["attempt 1"] and "crashed" in cells]
    assert crash and "fail" in crash[0][0].split(), crash
    assert rows[("validate", "")][0] == "phase fail"
    # Values are escaped, then shown as themselves.
    assert "customer `1` <b>" in text and "<b>" not in reported_run[1]["html"].replace("&lt;b&gt;", "")
    assert "total 'x1' is not a number *really*" in text
    assert f"and {INVALID - 10} more" in text
    fail_items = [t for t, a in page.tags if t == "li" and a.get("class") == "fail"]
    assert len(fail_items) >= 2  # the failed reference check and the failed checkpoint condition


def test_a_successful_run_on_a_pipe_ends_with_a_one_line_summary(tmp_path: Path) -> None:
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: summary-demo
        phases:
          - id: only
            steps:
              - {id: hello, uses: shell, with: {command: [echo, hi]}}
        """,
    )
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stderr.strip().splitlines()[-1])
    run_id = load_state(tmp_path / "state", "summary-demo")["run_id"]
    assert last["event"].startswith(f"run {run_id} succeeded in ")
    assert last["event"].endswith("1 phases, 1/1 steps succeeded")


def test_rollback_steps_show_every_attempt_too() -> None:
    from migration import report, report_html

    restore = {
        "id": "restore",
        "uses": "shell",
        "status": "succeeded",
        "attempts": 2,
        "history": [
            {"attempt": 1, "started_at": "2026-01-01T00:00:00Z", "finished_at": None, "status": "crashed"},
            {
                "attempt": 2,
                "started_at": "2026-01-01T00:01:30Z",
                "finished_at": "2026-01-01T00:01:40Z",
                "status": "succeeded",
            },
        ],
    }
    state: Any = {
        "run_id": "r1",
        "plan_name": "rb",
        "status": "rolled_back",
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:01:40Z",
        "plan_digest": "sha256:x",
        "phases": [],
        "rollback": {"status": "succeeded", "reason": "step x failed: `boom` | here", "steps": [restore]},
        # what the MongoDB state store adds: every host that held the run, steps left behind
        "hosts": ["ops-1", "ops-2"],
        "host_notes": [{"step": "app", "host": "ops-1", "note": "process left running"}],
    }
    md = report.markdown(state)
    first = "  - attempt 1: crashed, started 2026-01-01T00:00:00Z, took -, lost 1m30s"
    assert f"- restore (shell): succeeded\n{first}" in md
    assert "  - attempt 2: succeeded, started 2026-01-01T00:01:30Z, took 10.0s" in md
    assert "- time lost to failed or interrupted attempts: 1m30s" in md
    assert "- reason: step x failed: \\`boom\\` \\| here" in md
    assert "- hosts: ops-1 > ops-2" in md
    assert "## Left on another host\n\n- app (on host ops-1): process left running" in md
    page = parse(report_html.render(state))
    text = "".join(page.text)
    assert "attempt 1: crashed, started 2026-01-01T00:00:00Z, took -, lost 1m30s" in text
    assert "reason: step x failed: `boom` | here" in text
    assert "app (on host ops-1): process left running" in text and "ops-1 > ops-2" in text
