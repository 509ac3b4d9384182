"""Concurrency: runs of one plan started at the same moment, and locks left by killed runs.

Each contender imports everything first, then waits at a barrier (a file the test
creates once all are ready, polled every millisecond), so the lock attempts land
within a millisecond or two of each other.

    python -m pytest -q tests/reliability/test_concurrency.py
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import assert_no_traceback, cli_env, wait_for, write_plan

from .harness import DRIVER, TALLY, ForkLauncher, Outcome, Workspace, kill_and_reap

CONTENDER = """
import os, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import driver  # the slow imports happen before the barrier

ready, go = sys.argv[2], sys.argv[3]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
driver.install_hooks()
sys.exit(driver.run_cli(sys.argv[4:]))
"""

PLAN = """
name: race
phases:
  - id: only
    steps:
      - id: work
        uses: shell
        with: {command: "echo work >> effects.txt; while [ -e block ]; do sleep 0.02; done", shell: true}
      - {id: after, uses: shell, with: {command: "echo after >> effects.txt", shell: true}}
"""

ROUNDS = int(os.environ.get("RELIABILITY_RACE_ROUNDS", "2"))
LOCKED = re.compile(r"^error: plan is locked by another live run \(pid (\d+) on host (\S+?)(?: since \S+)?\)")


@dataclass
class Contender:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def outcome(self, timeout: float = 120) -> Outcome:
        code = self.proc.wait(timeout)
        return Outcome(code, self.out.read_text(), self.err.read_text())


def _race(workdir: Path, n: int, tag: str) -> list[Contender]:
    """Start ``n`` runs that all try to take the lock at the same moment."""
    barrier = workdir / f".barrier-{tag}"
    barrier.mkdir()
    contenders = []
    for i in range(n):
        out, err = barrier / f"out-{i}", barrier / f"err-{i}"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CONTENDER,
                    str(DRIVER),
                    str(barrier / f"ready-{i}"),
                    str(barrier / "go"),
                    *["run", "plan.yaml", "--state-dir", "state", "--log-format", "json"],
                ],
                cwd=workdir,
                env=cli_env(),
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        contenders.append(Contender(proc, out, err))
    wait_for(lambda: len(list(barrier.glob("ready-*"))) == n, timeout=60, what="all contenders ready")
    (barrier / "go").touch()
    return contenders


def _judge(workdir: Path, contenders: list[Contender]) -> tuple[int, list[Outcome]]:
    """Exactly one runs; the others exit 5 naming its pid and host. Returns the winner's pid."""
    wait_for(
        lambda: sum(c.proc.poll() is not None for c in contenders) == len(contenders) - 1,
        timeout=60,
        what="all but one contender to give up",
    )
    running = [c for c in contenders if c.proc.poll() is None]
    assert len(running) == 1, "more than one run holds the plan"
    winner = running[0]
    (workdir / "block").unlink()
    outcomes = [c.outcome() for c in contenders]
    host = socket.gethostname()
    for contender, outcome in zip(contenders, outcomes, strict=True):
        assert_no_traceback(outcome.stderr)
        if contender is winner:
            assert outcome.code == 0, outcome.stderr[-2000:]
            continue
        assert outcome.code == 5, outcome.stderr[-2000:]
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1, outcome.stderr
        match = LOCKED.match(lines[0])
        assert match, lines[0]
        assert (int(match.group(1)), match.group(2)) == (winner.proc.pid, host), lines[0]
    return winner.proc.pid, outcomes


@pytest.mark.parametrize("n", [2, 5])
def test_runs_started_at_the_same_moment_exactly_one_runs(n: int, tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN)
    for round_ in range(ROUNDS):
        (tmp_path / "block").touch()
        contenders = _race(tmp_path, n, f"{n}-{round_}")
        _judge(tmp_path, contenders)
        TALLY[f"concurrency: races of {n}"] += 1
    effects = (tmp_path / "effects.txt").read_text().split()
    assert effects == ["work", "after"] * ROUNDS, effects
    assert len(list((tmp_path / "state" / "race").glob("*.events.jsonl"))) == ROUNDS


def test_stale_lock_of_a_killed_run_is_taken_over_by_exactly_one_of_five(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN)
    (tmp_path / "block").touch()
    first = _race(tmp_path, 1, "first")[0]
    wait_for(lambda: (tmp_path / "effects.txt").exists(), what="the first run to start its step")
    os.kill(first.proc.pid, signal.SIGKILL)
    assert first.proc.wait(30) == -signal.SIGKILL
    # Its shell step is an orphan now (SIGKILL gives migration no chance to stop it).
    time.sleep(0.1)
    lock = (tmp_path / "state" / "race" / "lock").read_text()
    assert f'"pid": {first.proc.pid}' in lock, lock

    contenders = _race(tmp_path, 5, "takeover")
    winner_pid, outcomes = _judge(tmp_path, contenders)

    TALLY["concurrency: stale-lock take-overs"] += 1
    winner = next(o for c, o in zip(contenders, outcomes, strict=True) if c.proc.pid == winner_pid)
    assert (
        f"previous run, pid {first.proc.pid} on host {socket.gethostname()}, died; resuming" in winner.stderr
    )
    effects = (tmp_path / "effects.txt").read_text().split()
    assert effects.count("after") == 1 and effects.count("work") == 2, effects
    assert len(list((tmp_path / "state" / "race").glob("*.events.jsonl"))) == 1


def test_loser_names_the_live_holder_even_before_it_wrote_its_record(
    tmp_path: Path, fork_launcher: ForkLauncher
) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN)
    ws = Workspace(tmp_path, "race", fork_launcher)
    (tmp_path / "block").touch()
    dead = ws.start(pause_at="step:work:running")
    ws.wait_paused(dead)
    kill_and_reap(dead)
    # The winner stalls between taking the lock and writing its pid (a busy machine).
    ws.env["RELIABILITY_LOCK_WRITE_DELAY"] = "1.5"
    winner = ws.start()
    wait_for(lambda: (ws.hooks / "locked").exists(), what="the winner to take the lock")
    ws.env.pop("RELIABILITY_LOCK_WRITE_DELAY")

    loser = ws.run()

    (tmp_path / "block").unlink()
    assert winner.wait().code == 0
    TALLY["concurrency: lock races with a slow winner"] += 1
    assert loser.code == 5, loser.stderr
    match = LOCKED.match(loser.stderr.strip().splitlines()[-1])
    assert match, loser.stderr
    assert int(match.group(1)) == winner.pid, f"names pid {match.group(1)}, the dead run was {dead.pid}"
