"""Resume after a crash or a signal: completed steps never re-run, the interrupted one does."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    assert_no_traceback,
    current_run_id,
    kill,
    lines_of,
    load_state,
    migration,
    pid_alive,
    start_migration,
    start_ticks,
    step_states,
    wait_for,
    write_plan,
)

STEPS = ["s1", "s2", "s3", "s4", "s5"]
PHASES = {"one": ["s1", "s2"], "two": ["s3", "s4"], "three": ["s5"]}


def _step(step_id: str) -> str:
    # Appends its id; given a marker file, takes it and hangs (so a kill lands inside it).
    command = (
        f"echo {step_id} >> log.txt; if [ -e block-{step_id} ]; then "
        f"rm block-{step_id}; echo $$ > pid-{step_id}; while :; do sleep 0.02; done; fi"
    )
    return f'      - {{id: {step_id}, uses: shell, with: {{command: "{command}", shell: true}}}}\n'


def _plan_text() -> str:
    text = "name: resume-demo\nphases:\n"
    for phase, steps in PHASES.items():
        text += f"  - id: {phase}\n    steps:\n" + "".join(_step(s) for s in steps)
    return text


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    return write_plan(tmp_path / "plan.yaml", _plan_text())


def _run_args(plan: Path, *extra: str) -> list[str]:
    return ["run", plan.name, "--state-dir", "state", "--log-format", "json", *extra]


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _parseable_state(state_dir: Path) -> dict[str, Any] | None:
    """The current state, if any; a state file that does not parse fails the test."""
    pointer = state_dir / "resume-demo" / "current"
    if not pointer.exists():
        return None
    run_id = pointer.read_text().strip()
    return json.loads((state_dir / "resume-demo" / f"{run_id}.json").read_text())


def _wait_inside(tmp_path: Path, step_id: str) -> dict[str, Any]:
    """Wait until ``step_id`` runs, reading the state file all along (it must always parse)."""

    def inside() -> dict[str, Any] | None:
        state = _parseable_state(tmp_path / "state")
        if state is None or step_id not in lines_of(tmp_path / "log.txt"):
            return None
        return state if step_states(state)[step_id]["status"] == "running" else None

    return wait_for(inside, what=f"step {step_id} to run")  # type: ignore[no-any-return]


@pytest.mark.parametrize("killed", STEPS)
def test_sigkill_inside_each_step_resumes_and_reruns_only_that_step(
    tmp_path: Path, plan: Path, killed: str
) -> None:
    (tmp_path / f"block-{killed}").touch()
    proc = start_migration(tmp_path, *_run_args(plan))
    _wait_inside(tmp_path, killed)
    hung = int(wait_for(lambda: _read(tmp_path / f"pid-{killed}"), what="the step's pid"))
    code, _, _ = kill(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    state = load_state(tmp_path / "state", "resume-demo")
    assert state["status"] == "running"
    assert step_states(state)[killed]["status"] == "running"
    # SIGKILL gives migration no chance to stop the step: its shell hangs on, orphaned.
    assert pid_alive(hung)
    if killed == "s3":
        status = migration(tmp_path, "status", "resume-demo", "--json", "--state-dir", "state")
        assert json.loads(status.stdout)["process_alive"] is False

    result = migration(tmp_path, *_run_args(plan))

    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    expected = []
    for step_id in STEPS:
        expected += [step_id, step_id] if step_id == killed else [step_id]
    assert lines_of(tmp_path / "log.txt") == expected
    assert f"previous run, pid {proc.pid} on host {socket.gethostname()}, died; resuming" in result.stderr
    # The re-run did not start next to the hung attempt: that was stopped first.
    assert not pid_alive(hung)
    assert "stopping leftovers of the interrupted attempt" in result.stderr
    final = load_state(tmp_path / "state", "resume-demo")
    assert final["run_id"] == state["run_id"]
    assert final["status"] == "succeeded"
    assert {s: st["attempts"] for s, st in step_states(final).items()} == {
        s: 2 if s == killed else 1 for s in STEPS
    }
    assert [p["status"] for p in final["phases"]] == ["succeeded"] * 3


def _signal_plan(tmp_path: Path) -> Path:
    # The step starts a grandchild too: both must be gone when migration stops.
    command = (
        "echo work >> log.txt; if [ -e block ]; then "
        "sleep 300 & echo $! > sleep.pid; echo $$ > shell.pid; wait; fi"
    )
    return write_plan(
        tmp_path / "plan.yaml",
        f"""
        name: resume-demo
        phases:
          - id: one
            steps:
              - {{id: first, uses: shell, with: {{command: "echo first >> log.txt", shell: true}}}}
              - {{id: work, uses: shell, with: {{command: "{command}", shell: true}}}}
          - id: two
            steps:
              - {{id: last, uses: shell, with: {{command: "echo last >> log.txt", shell: true}}}}
        """,
    )


def _interrupt_inside_work(
    tmp_path: Path, plan: Path, sig: signal.Signals, children: dict[int, int | None] | None = None
) -> tuple[int, str, str]:
    """Interrupt the run with ``sig`` while its step waits; ``children`` gets the pids of
    the step's shell and its grandchild, with their start times (read before the signal)."""
    (tmp_path / "block").touch()
    proc = start_migration(tmp_path, *_run_args(plan))
    wait_for(lambda: (tmp_path / "shell.pid").exists() and (tmp_path / "sleep.pid").exists())
    wait_for(lambda: (tmp_path / "shell.pid").read_text().strip() and (tmp_path / "sleep.pid").read_text())
    if children is not None:
        for name in ("shell.pid", "sleep.pid"):
            pid = int((tmp_path / name).read_text())
            children[pid] = start_ticks(pid)
    result = kill(proc, sig)
    (tmp_path / "block").unlink()
    return result


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_kills_children_and_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    plan = _signal_plan(tmp_path)
    children: dict[int, int | None] = {}
    code, out, err = _interrupt_inside_work(tmp_path, plan, sig, children)

    assert code == 130, err
    assert_no_traceback(err)
    assert out == ""
    assert "resume it with: migration run plan.yaml" in err
    state = load_state(tmp_path / "state", "resume-demo")
    assert state["status"] == "interrupted"
    assert step_states(state)["work"]["status"] == "interrupted"
    assert step_states(state)["first"]["status"] == "succeeded"
    assert len(children) == 2
    for pid, started in children.items():
        # The same process, not a newer one given its pid (pids wrap fast under load).
        # No start time: it was gone before the signal (its pid may be another's now).
        gone = lambda pid=pid, started=started: started is None or not pid_alive(pid, started)  # noqa: E731
        wait_for(gone, timeout=10, what=f"child {pid} to exit")
    # The lock was released cleanly: no "died" message on the next run (`resume` = `run` here).
    command = ["resume", plan.name, "--state-dir", "state"] if sig == signal.SIGINT else _run_args(plan)
    result = migration(tmp_path, *command)
    assert result.returncode == 0, result.stderr
    assert "died" not in result.stderr
    assert lines_of(tmp_path / "log.txt") == ["first", "work", "work", "last"]
    final = load_state(tmp_path / "state", "resume-demo")
    assert final["run_id"] == state["run_id"]
    assert final["status"] == "succeeded"


def test_changed_plan_refuses_to_resume_unless_allowed(tmp_path: Path) -> None:
    plan = _signal_plan(tmp_path)
    code, _, err = _interrupt_inside_work(tmp_path, plan, signal.SIGTERM)
    assert code == 130, err
    plan.write_text(plan.read_text() + "# edited after the run started\n")

    refused = migration(tmp_path, *_run_args(plan))
    assert refused.returncode == 2
    assert_no_traceback(refused)
    assert "--allow-plan-change" in refused.stderr
    assert lines_of(tmp_path / "log.txt") == ["first", "work"]
    assert load_state(tmp_path / "state", "resume-demo")["status"] == "interrupted"

    allowed = migration(tmp_path, *_run_args(plan, "--allow-plan-change"))
    assert allowed.returncode == 0, allowed.stderr
    assert lines_of(tmp_path / "log.txt") == ["first", "work", "work", "last"]
    final = load_state(tmp_path / "state", "resume-demo")
    assert final["status"] == "succeeded"
    assert final["plan_changes"][0]["to"] == final["plan_digest"]


def test_finished_plan_starts_a_new_run(tmp_path: Path, plan: Path) -> None:
    first = migration(tmp_path, *_run_args(plan))
    assert first.returncode == 0, first.stderr
    first_id = current_run_id(tmp_path / "state", "resume-demo")

    second = migration(tmp_path, *_run_args(plan))

    assert second.returncode == 0, second.stderr
    second_id = current_run_id(tmp_path / "state", "resume-demo")
    assert second_id != first_id
    assert load_state(tmp_path / "state", "resume-demo", first_id)["status"] == "succeeded"
    assert load_state(tmp_path / "state", "resume-demo", second_id)["status"] == "succeeded"
    assert lines_of(tmp_path / "log.txt") == STEPS + STEPS


def test_fresh_on_unfinished_run_needs_abandon_first(tmp_path: Path) -> None:
    plan = _signal_plan(tmp_path)
    code, _, err = _interrupt_inside_work(tmp_path, plan, signal.SIGTERM)
    assert code == 130, err
    old_id = current_run_id(tmp_path / "state", "resume-demo")

    refused = migration(tmp_path, *_run_args(plan, "--fresh"))
    assert refused.returncode == 2
    assert_no_traceback(refused)
    assert "migration abandon plan.yaml" in refused.stderr
    assert current_run_id(tmp_path / "state", "resume-demo") == old_id

    abandoned = migration(tmp_path, "abandon", plan.name, "--state-dir", "state")
    assert abandoned.returncode == 0, abandoned.stderr
    assert load_state(tmp_path / "state", "resume-demo", old_id)["status"] == "abandoned"

    fresh = migration(tmp_path, *_run_args(plan, "--fresh"))
    assert fresh.returncode == 0, fresh.stderr
    new_id = current_run_id(tmp_path / "state", "resume-demo")
    assert new_id != old_id
    # The new run starts from the first step; the abandoned run is left as it was.
    assert lines_of(tmp_path / "log.txt") == ["first", "work", "first", "work", "last"]
    assert load_state(tmp_path / "state", "resume-demo", old_id)["status"] == "abandoned"


def test_resume_with_nothing_to_resume_exits_2(tmp_path: Path, plan: Path) -> None:
    never_run = migration(tmp_path, "resume", plan.name, "--state-dir", "state")
    assert never_run.returncode == 2
    assert_no_traceback(never_run)
    assert "no unfinished run" in never_run.stderr
    assert not (tmp_path / "log.txt").exists()

    assert migration(tmp_path, *_run_args(plan)).returncode == 0
    finished = migration(tmp_path, "resume", plan.name, "--state-dir", "state")
    assert finished.returncode == 2
    assert "no unfinished run" in finished.stderr
    assert lines_of(tmp_path / "log.txt") == STEPS


def test_a_big_plan_killed_mid_run_loses_nothing_from_its_journal(tmp_path: Path) -> None:
    """Over 64 KB of state, step changes go to an append-only journal, a step's end without
    its own fdatasync: a SIGKILL mid-run loses none of them, and nothing done runs again."""
    lines = ["name: big", "phases:", "  - id: only", "    steps:"]
    for i in range(400):
        if i == 250:  # appends, then SIGKILLs migration itself, the first time only
            command = "echo killer >> log.txt; [ -e killed ] || { touch killed; kill -9 $PPID; }"
        elif i % 50 == 0:
            command = f"echo s{i} >> log.txt"
        else:
            lines.append(f"      - {{id: s{i:03d}, uses: sleep, with: {{seconds: 0}}}}")
            continue
        lines.append(f'      - {{id: s{i:03d}, uses: shell, with: {{command: "{command}", shell: true}}}}')
    write_plan(tmp_path / "plan.yaml", "\n".join(lines) + "\n")

    first = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    run_id = current_run_id(tmp_path / "state", "big")
    journal = tmp_path / "state" / "big" / f"{run_id}.journal.jsonl"
    assert journal.stat().st_size > 0, "the big state was not journaled: this test tests nothing"

    second = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert current_run_id(tmp_path / "state", "big") == run_id
    # Every step done before the kill ran once; only the killed one ran again.
    assert lines_of(tmp_path / "log.txt") == [f"s{i}" for i in range(0, 250, 50)] + [
        "killer",
        "killer",
        "s300",
        "s350",
    ]
    states = step_states(load_state(tmp_path / "state", "big"))
    assert all(s["status"] == "succeeded" for s in states.values())
    assert states["s249"]["attempts"] == 1 and states["s250"]["attempts"] == 2
