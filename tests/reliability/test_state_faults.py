"""Faults of the state directory: full, turned read-only, damaged by hand.

Each must end in one clear line that says what to do (exit 1), never a silent
new run, and the run must resume once the cause is gone. (tests/test_state_store.py
covers a read-only directory at start and three kinds of damage for ``run``.)

    python -m pytest -q tests/reliability/test_state_faults.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import SMALL_FS_SKIP, assert_no_traceback, migration_batch, tmpfs, umount

from .harness import TALLY, ForkLauncher, SubprocessLauncher, Workspace
from .plans import write

STATE_FILL_PLAN = """
name: fault-state-disk
phases:
  - id: only
    steps:
      - {id: first, uses: shell, with: {command: "echo first >> effects.txt", shell: true}}
      - id: fill
        uses: shell
        with:
          command: >-
            echo fill >> effects.txt; if [ ! -e filled-once ]; then touch filled-once;
            head -c 10000000 /dev/zero > state/filler 2>/dev/null; fi; true
          shell: true
      - {id: last, uses: shell, with: {command: "echo last >> effects.txt", shell: true}}
"""


def test_state_disk_full_mid_run_is_a_clear_error_and_resumes_once_freed(
    tmp_path: Path, fork_launcher: ForkLauncher
) -> None:
    state_dir = tmp_path / "state"
    if not tmpfs(state_dir, "1m"):
        # RLIMIT_FSIZE is no fallback here: it would stop the filler step too.
        pytest.skip(SMALL_FS_SKIP)
    try:
        write(tmp_path / "plan.yaml", STATE_FILL_PLAN)
        ws = Workspace(tmp_path, "fault-state-disk", fork_launcher)

        full = ws.run()

        TALLY["faults: state disk full"] += 1
        assert full.code == 1, full.stderr[-3000:]
        assert_no_traceback(full.stderr)
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("error: no space left for the state in state/fault-state-disk"), last
        assert "free some disk and run again" in last
        state = ws.read_state()  # the last complete version, still valid JSON
        assert state is not None and state["status"] == "running"
        (state_dir / "filler").unlink()

        resumed = ws.run()

        assert resumed.code == 0, resumed.stderr[-3000:]
        final = ws.read_state()
        assert final is not None and final["status"] == "succeeded"
        assert final["run_id"] == state["run_id"]
        effects = (tmp_path / "effects.txt").read_text().split()
        # `fill` ran again (its success could not be recorded); `first` did not.
        assert effects == ["first", "fill", "fill", "last"], effects
    finally:
        umount(state_dir)


def _drop_dac_override() -> None:
    """In the child: give up root's power to write where permissions forbid it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


READ_ONLY_PLAN = """
name: fault-ro
phases:
  - id: only
    steps:
      - {id: first, uses: shell, with: {command: "echo first >> effects.txt", shell: true}}
      - {id: lock-out, uses: shell, with: {command: "echo lock-out >> effects.txt; chmod 0500 state/fault-ro",
          shell: true}}
      - {id: last, uses: shell, with: {command: "echo last >> effects.txt", shell: true}}
"""


def test_state_dir_turning_read_only_mid_run_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "plan.yaml", READ_ONLY_PLAN)
    ws = Workspace(tmp_path, "fault-ro", SubprocessLauncher(tmp_path))
    argv = [*ws.launcher_argv(), *ws.args()]
    try:
        done = subprocess.run(
            argv,
            cwd=tmp_path,
            env=ws.process_env(),
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_drop_dac_override if os.geteuid() == 0 else None,
        )
    finally:
        (tmp_path / "state" / "fault-ro").chmod(0o700)
    TALLY["faults: read-only state dir"] += 1
    assert done.returncode == 1, done.stderr[-3000:]
    assert_no_traceback(done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: state directory state/fault-ro is not writable"), last
    assert "fix its permissions or pass --state-dir DIR" in last
    state = ws.read_state()
    assert state is not None and state["status"] == "running"

    resumed = ws.run()

    assert resumed.code == 0, resumed.stderr[-3000:]
    assert (tmp_path / "effects.txt").read_text().split() == ["first", "lock-out", "lock-out", "last"]


# -- damaged state, every command ---------------------------------------------------------

DAMAGE: dict[str, Any] = {
    "empty": lambda text: "",
    "binary": lambda text: "\x00\xff\xfe garbage",
    "json-array": lambda text: "[1, 2, 3]",
    "phases-not-a-list": lambda text: json.dumps({**json.loads(text), "phases": "oops"}),
    "step-without-id": lambda text: json.dumps(
        {
            **json.loads(text),
            "phases": [{**p, "steps": [{"status": "succeeded"}]} for p in json.loads(text)["phases"]],
        }
    ),
    "unknown-status": lambda text: json.dumps({**json.loads(text), "status": "exploded"}),
}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped at its second step (on_failure: stop), to damage."""
    folder = tmp_path_factory.mktemp("stopped")
    write(
        folder / "plan.yaml",
        """
        name: damaged
        on_failure: stop
        rollback:
          - {id: undo, uses: shell, with: {command: "echo undo >> effects.txt", shell: true}}
        phases:
          - id: only
            steps:
              - {id: first, uses: shell, with: {command: "echo first >> effects.txt", shell: true}}
              - id: second
                uses: shell
                with: {command: "echo second >> effects.txt; test -e go", shell: true}
        """,
    )
    ws = Workspace(folder, "damaged", SubprocessLauncher(folder))
    assert ws.run().code == 1
    return folder


UNREADABLE = ["empty", "binary", "json-array"]
WRONG_SHAPE = ["phases-not-a-list", "step-without-id", "unknown-status"]
COMMANDS = [
    ["run", "plan.yaml", "--state-dir", "state"],
    ["resume", "plan.yaml", "--state-dir", "state"],
    ["rollback", "plan.yaml", "--state-dir", "state"],
    ["status", "damaged", "--json", "--state-dir", "state"],
    ["report", "plan.yaml", "--state-dir", "state"],
]


def _damaged_copy(stopped_run: Path, tmp_path: Path, damage: str) -> Path:
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)
    run_id = (tmp_path / "state" / "damaged" / "current").read_text().strip()
    path = tmp_path / "state" / "damaged" / f"{run_id}.json"
    path.write_text(DAMAGE[damage](path.read_text()), encoding="utf-8")
    (tmp_path / "go").touch()
    return path


def _check_commands(tmp_path: Path, path: Path, commands: list[list[str]]) -> None:
    """Each command: exit 1, one clear line saying what to do; nothing ran, nothing changed."""
    before = sorted((p.name, p.stat().st_size) for p in path.parent.iterdir() if p.name != "lock")
    effects = (tmp_path / "effects.txt").read_text()
    results = migration_batch([(tmp_path, c) for c in commands])
    for command, result in zip(commands, results, strict=True):
        TALLY["faults: damaged state, commands tried"] += 1
        assert_no_traceback(result)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (command, result.stderr[-2000:])
        assert lines and lines[-1].startswith("error: "), (command, result.stderr[-2000:])
        assert "internal error" not in lines[-1], (command, lines[-1])
        assert "migration abandon" in lines[-1], (command, lines[-1])
    assert (tmp_path / "effects.txt").read_text() == effects, "a command ran steps on a damaged state"
    after = sorted((p.name, p.stat().st_size) for p in path.parent.iterdir() if p.name != "lock")
    assert after == before


@pytest.mark.parametrize("damage", UNREADABLE)
def test_unreadable_state_file_is_a_clear_error_for_every_command(
    damage: str, stopped_run: Path, tmp_path: Path
) -> None:
    path = _damaged_copy(stopped_run, tmp_path, damage)
    _check_commands(tmp_path, path, COMMANDS)


@pytest.mark.parametrize("damage", WRONG_SHAPE)
def test_state_file_of_the_wrong_shape_is_a_clear_error(
    damage: str, stopped_run: Path, tmp_path: Path
) -> None:
    path = _damaged_copy(stopped_run, tmp_path, damage)
    _check_commands(tmp_path, path, COMMANDS[:3])
