"""The state store: atomic writes, damaged files, unusable state directories."""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_no_traceback, cli_env, current_run_id, lines_of, migration, write_plan

from migration.errors import StateError
from migration.state import StateStore, atomic_write

WRITER = """
import sys
from pathlib import Path
from typing import Any
from migration.state import StateStore

store = StateStore(Path(sys.argv[1]), "atomic")
store.prepare()
i = 0
while True:
    i += 1
    # Big enough that one write takes many syscalls; each version differs in size.
    store.save({"run_id": "run", "status": "running", "plan_digest": "x", "plan_name": "atomic",
                "started_at": "2025-01-01T00:00:00.000Z", "phases": [],
                "rollback": {"status": None, "steps": []},
                "counter": i, "padding": "x" * (200_000 + (i % 7) * 10_000)})
    if i == 3:
        print("writing", flush=True)
"""


def test_killed_writer_never_leaves_a_partial_state_file(tmp_path: Path) -> None:
    path = tmp_path / "atomic" / "run.json"
    seen: set[int] = set()
    rng = random.Random(7)
    for _ in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            env=cli_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
            deadline = time.monotonic() + rng.uniform(0.05, 0.3)
            while time.monotonic() < deadline:
                # A reader racing the writer sees the old or the new document, never a mix.
                seen.add(json.loads(path.read_text())["counter"])
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        state = json.loads(path.read_text())
        assert state["padding"] == "x" * len(state["padding"])
        assert StateStore(tmp_path, "atomic").load("run")["counter"] == state["counter"]
    assert len(seen) > 6
    # A kill between write and rename can leave a temporary file: hidden, never read as a run.
    assert StateStore(tmp_path, "atomic").list_runs() == ["run"]


def test_atomic_write_replaces_and_is_private(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write(target, b'{"a": 1}')
    atomic_write(target, b'{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.json"]


PLAN = """
name: damaged-demo
phases:
  - id: only
    steps:
      - {id: first, uses: shell, with: {command: "echo first >> log.txt", shell: true}}
      - {id: second, uses: shell, with: {command: "echo second >> log.txt; test -e go", shell: true}}
"""


@pytest.fixture(scope="module")
def failed_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("failed_run")
    write_plan(workdir / "plan.yaml", "on_failure: stop\n" + PLAN.lstrip())
    result = migration(workdir, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")
    assert result.returncode == 1, result.stderr
    return workdir


@pytest.fixture
def failed_run(tmp_path: Path, failed_run_template: Path) -> Path:
    """A run stopped at its second step (on_failure: stop): resumable, one step done."""
    shutil.copytree(failed_run_template, tmp_path, dirs_exist_ok=True)
    run_id = current_run_id(tmp_path / "state", "damaged-demo")
    return tmp_path / "state" / "damaged-demo" / f"{run_id}.json"


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda text: text[: len(text) // 2], "is not valid JSON"),
        (lambda text: text.replace(",", ",,", 1), "is not valid JSON"),
        (lambda text: json.dumps({"run_id": "x"}), "is not a migration state (missing status, phases"),
    ],
    ids=["truncated", "bad-edit", "missing-keys"],
)
def test_damaged_state_file_is_a_clear_error_never_a_new_run(
    tmp_path: Path, failed_run: Path, damage: object, says: str
) -> None:
    assert callable(damage)
    failed_run.write_text(damage(failed_run.read_text()))
    with pytest.raises(StateError, match=re.escape(says)):
        StateStore(tmp_path / "state", "damaged-demo").load_current()
    before = sorted(p.name for p in failed_run.parent.iterdir())
    (tmp_path / "go").touch()

    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state")

    assert result.returncode == 1
    assert_no_traceback(result)
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: state file {failed_run.relative_to(tmp_path)} ")
    assert says in message
    assert message.endswith("set it aside and start a new run with: migration abandon damaged-demo")
    assert sorted(p.name for p in failed_run.parent.iterdir()) == before
    assert lines_of(tmp_path / "log.txt") == ["first", "second"]


def test_status_of_a_damaged_state_says_so(tmp_path: Path, failed_run: Path) -> None:
    failed_run.write_text(failed_run.read_text()[:-10])
    status = migration(tmp_path, "status", "damaged-demo", "--state-dir", "state")
    assert status.returncode == 1
    assert_no_traceback(status)
    assert "is not valid JSON" in status.stderr


def test_abandon_sets_a_damaged_state_aside_so_a_new_run_can_start(tmp_path: Path, failed_run: Path) -> None:
    damaged = failed_run.read_text()[:100]
    failed_run.write_text(damaged)
    damaged_id = failed_run.stem

    abandoned = migration(tmp_path, "abandon", "damaged-demo", "--state-dir", "state")

    assert abandoned.returncode == 0, abandoned.stderr
    assert "damaged state, kept as" in abandoned.stderr
    kept = [p for p in failed_run.parent.iterdir() if p.name.startswith(f"{failed_run.name}.damaged-")]
    assert [p.read_text() for p in kept] == [damaged]
    assert not failed_run.exists()
    (tmp_path / "go").touch()
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    assert current_run_id(tmp_path / "state", "damaged-demo") != damaged_id
    assert lines_of(tmp_path / "log.txt") == ["first", "second", "first", "second"]


def test_missing_state_file_is_a_clear_error(tmp_path: Path, failed_run: Path) -> None:
    failed_run.unlink()
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state")
    assert result.returncode == 1
    assert_no_traceback(result)
    assert "is missing; restore it from backup, or set it aside" in result.stderr


def _drop_dac_override() -> None:
    """In the child: give up root's power to write where permissions forbid it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.parametrize(
    ("read_only", "plan_dir_exists"), [("state", False), ("state/ro-demo", True)], ids=["root", "plan"]
)
def test_read_only_state_dir_is_a_clear_error(tmp_path: Path, read_only: str, plan_dir_exists: bool) -> None:
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: ro-demo
        phases:
          - id: only
            steps:
              - {id: touch, uses: shell, with: {command: [touch, ran.txt]}}
        """,
    )
    (tmp_path / read_only).mkdir(parents=True)
    (tmp_path / read_only).chmod(0o500)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "migration.cli", "run", "plan.yaml", "--state-dir", "state"],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_drop_dac_override if os.geteuid() == 0 else None,
        )
    finally:
        (tmp_path / read_only).chmod(0o700)
    assert (tmp_path / "state" / "ro-demo").exists() == plan_dir_exists
    assert result.returncode == 1
    assert_no_traceback(result)
    assert result.stderr.startswith("error: state directory state/ro-demo is not writable (Permission")
    assert "fix its permissions or pass --state-dir DIR" in result.stderr
    assert not (tmp_path / "ran.txt").exists()


def test_state_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN)
    (tmp_path / "state").write_text("not a directory")
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert "state" in result.stderr and "is a file" in result.stderr
    assert not (tmp_path / "log.txt").exists()


_DELETE = object()


def _edit(state: dict[str, Any], path: list[Any], value: Any) -> None:
    """Set (or delete) the value at ``path`` in a state document."""
    for key in path[:-1]:
        state = state[key]
    if value is _DELETE:
        del state[path[-1]]
    else:
        state[path[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (["phases"], {"only": []}, "phases is an object, not a list"),
        (["phases", 0, "steps"], "first,second", "phases[0].steps is a string, not a list"),
        (["phases", 0, "steps", 1], "second", "phases[0].steps[1] is a string, not an object"),
        (["phases", 0, "steps", 0, "id"], _DELETE, "phases[0].steps[0] has no id"),
        (
            ["phases", 0, "steps", 1, "attempts"],
            "1",
            "phases[0].steps[1].attempts is a string, not an integer",
        ),
        (["phases", 0, "steps", 1, "outputs"], [], "phases[0].steps[1].outputs is a list, not an object"),
        (
            ["phases", 0, "steps", 1, "status"],
            "done",
            'phases[0].steps[1].status "done" is not one of failed,',
        ),
        (["phases", 0, "status"], None, "phases[0].status null is not one of failed, pending, running,"),
        (["phases", 0, "checkpoint", "results"], [1], "phases[0].checkpoint.results[0] is an integer"),
        (["status"], "exploded", 'status "exploded" is not one of abandoned, failed, interrupted,'),
        (["status"], ["failed"], 'status ["failed"] is not one of'),
        (["error"], "boom", "error is a string, not an object"),
        (["started_at"], 1700000000, "started_at is an integer, not a string"),
        (["needs_operator"], "no", "needs_operator is a string, not a boolean"),
        (["rollback"], None, "rollback is null"),
        (["rollback", "steps"], {}, "rollback.steps is an object, not a list"),
        (
            ["rollback", "status"],
            "done",
            'rollback.status "done" is not one of failed, running, succeeded or null',
        ),
        (["plan_digest"], _DELETE, "missing plan_digest"),
        (["run_id"], "other", 'its run_id "other" is not its file name\'s'),
    ],
)
def test_state_file_of_the_wrong_shape_is_a_clear_error(
    tmp_path: Path, failed_run: Path, path: list[Any], value: Any, says: str
) -> None:
    state = json.loads(failed_run.read_text())
    assert len(state["phases"][0]["steps"]) == 2
    _edit(state, path, value)
    failed_run.write_text(json.dumps(state))

    with pytest.raises(StateError) as caught:
        StateStore(tmp_path / "state", "damaged-demo").load_current()

    message = str(caught.value)
    assert message.startswith(f"state file {failed_run} is not a migration state ("), message
    assert says in message, message
    assert message.endswith(
        "Repair it, or set it aside and start a new run with: migration abandon damaged-demo"
    )


def test_journal_entry_of_the_wrong_shape_is_a_clear_error(tmp_path: Path, failed_run: Path) -> None:
    journal = failed_run.with_name(f"{failed_run.stem}.journal.jsonl")
    step = json.loads(failed_run.read_text())["phases"][0]["steps"][1]
    journal.write_text(
        json.dumps({"seq": 1, "step": {**step, "status": "succeeded"}})
        + "\n"
        + json.dumps({"seq": 2, "step": {"id": "second", "status": "succeeded"}})
        + "\n"
    )
    with pytest.raises(StateError) as caught:
        StateStore(tmp_path / "state", "damaged-demo").load_current()
    message = str(caught.value)
    assert message.startswith(f"journal {journal} of the state file, line 2: step has no uses, attempts;")
    assert message.endswith("migration abandon damaged-demo")

    # A torn last line is a write that never completed: ignored, as before.
    journal.write_text(journal.read_text().splitlines()[0] + "\n" + '{"seq": 2, "step": {"id": "sec')
    state = StateStore(tmp_path / "state", "damaged-demo").load_current()
    assert state is not None and state["phases"][0]["steps"][1]["status"] == "succeeded"
    assert state["journal_seq"] == 1


def test_a_plugin_step_returning_a_list_still_leaves_a_state_that_loads(tmp_path: Path) -> None:
    """Outputs are kept as an object: a plugin's list or string goes under ``result``."""
    from click.testing import CliRunner

    from migration import cli
    from migration.steps import registry
    from migration.steps.base import Step, StepContext, StepParams

    class ListStep(Step[StepParams]):
        """Returns a list (a plugin's mistake, not the runner's)."""

        name = "test.list-outputs"
        Params = StepParams

        def run(self, ctx: StepContext[StepParams]) -> Any:
            return ["a", "b"]

    with registry.registered(ListStep):
        (tmp_path / "plan.yaml").write_text(
            "name: plugin\nphases:\n  - id: a\n    steps:\n      - {id: s, uses: test.list-outputs}\n"
        )
        state_dir = tmp_path / "state"
        args = ["run", str(tmp_path / "plan.yaml"), "--state-dir", str(state_dir)]
        assert CliRunner().invoke(cli.main, args).exit_code == 0
        store = StateStore(state_dir, "plugin")
        state = store.load(store.current_run_id() or "")
        assert state["phases"][0]["steps"][0]["outputs"] == {"result": ["a", "b"]}
        status = CliRunner().invoke(cli.main, ["status", "plugin", "--state-dir", str(state_dir)])
        assert status.exit_code == 0, status.output
