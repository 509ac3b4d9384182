"""The crash matrix engine: kill a run at chosen points, run it again, compare with an uninterrupted run.

A *boundary* point is an event key (see ``driver.event_key``): the run is paused
right after that event was persisted and logged, then killed, so the kill lands
exactly between two actions. An *inside* point is a step and a delay: the run
is paused as the step starts, let go, and killed ``delay`` seconds later,
wherever it then is (inside the step, usually).

A *chain* drives one run through several points in order (each new process
resumes the run and is killed at the next point), then lets it finish. After
each kill the state file must parse; at the end the run must look exactly like
the uninterrupted reference run, and no step recorded as completed may have
started again.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import assert_no_traceback

from migration.state import FINISHED, StateStore

from .harness import Launched, Launcher, Outcome, done_steps, kill_and_reap, step_statuses
from .plans import Scenario, World, make_world

TERMINAL_KEYS = {"run:succeed", "run:rollback_done", "run:rollback_error"}


@dataclass
class KillPoint:
    kind: str  # "boundary" or "inside"
    key: str  # an event key, or a step id for "inside"
    delay: float = 0.0

    def __str__(self) -> str:
        return self.key if self.kind == "boundary" else f"inside {self.key} after {self.delay:.3f}s"


@dataclass
class Reference:
    code: int
    status: str
    statuses: dict[str, str]
    checksums: dict[str, Any]
    effects: list[str]
    keys: list[str]
    durations: dict[str, float]


@dataclass
class Kill:
    point: KillPoint
    pid: int
    code: int
    status: str
    done: set[str]
    running: set[str]
    landed: bool = True
    inside: bool = False  # an inside point that landed before its step ended


@dataclass
class ChainResult:
    kills: list[Kill] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    final: Outcome | None = None
    final_state: dict[str, Any] | None = None


def reference_run(scenario: Scenario, folder: Path, launcher: Launcher, context: Any) -> Reference:
    """The uninterrupted run everything is compared with."""
    world = make_world(scenario, folder, launcher, context)
    try:
        outcome = world.workspace.run()
        assert outcome.code == scenario.expected_code, outcome.stderr[-3000:]
        assert_no_traceback(outcome.stderr)
        state = world.workspace.read_state()
        assert state is not None
        keys = [_key(e) for e in world.workspace.events()]
        durations = {
            s["id"]: float(s.get("duration_s") or 0.0) for p in state["phases"] for s in p["steps"]
        } | {s["id"]: float(s.get("duration_s") or 0.0) for s in state["rollback"]["steps"]}
        return Reference(
            code=outcome.code,
            status=state["status"],
            statuses=step_statuses(state),
            checksums=world.checksums(),
            effects=world.effects(),
            keys=keys,
            durations=durations,
        )
    finally:
        world.drop()


def _key(event: dict[str, Any]) -> str:
    from .driver import event_key

    return event_key(str(event.get("event")), event)


def boundary_points(reference: Reference) -> list[KillPoint]:
    """Every event of the reference run but the last (after which the run is over)."""
    return [KillPoint("boundary", key) for key in reference.keys if key not in TERMINAL_KEYS]


def inside_points(
    reference: Reference, steps: dict[str, int], rng: random.Random, at_most: int | None = None
) -> list[KillPoint]:
    """``count`` kills at seeded random moments inside each step (``at_most`` caps the count)."""
    points = []
    for step, count in steps.items():
        duration = max(reference.durations.get(step, 0.0), 0.05)
        n = count if at_most is None else min(count, at_most)
        for delay in sorted(rng.uniform(0.0, duration) for _ in range(n)):
            points.append(KillPoint("inside", step, round(delay, 3)))
    return points


def in_plan_order(points: list[KillPoint], reference: Reference) -> list[KillPoint]:
    """Sort points by where they fall in the reference run."""

    def position(point: KillPoint) -> tuple[int, float]:
        if point.key.startswith("progress:"):
            _, step, n = point.key.split(":")
            return reference.keys.index(f"step:{step}:running"), int(n) / 1000
        key = point.key if point.kind == "boundary" else f"step:{point.key}:running"
        return reference.keys.index(key), point.delay

    return sorted(points, key=position)


def _reached(world: World, point: KillPoint) -> bool:
    """The run already went past this point (an earlier kill landed late)."""
    state = world.workspace.read_state()
    if state is None:
        return False
    if point.kind == "inside":
        return point.key in done_steps(state)
    if point.key.startswith("progress:"):
        return point.key.split(":")[1] in done_steps(state)
    events = [_key(e) for e in world.workspace.events(state["run_id"])]
    return point.key in events


def run_chain(world: World, points: list[KillPoint], sig: signal.Signals = signal.SIGKILL) -> ChainResult:
    """Kill one run at each point in turn (``sig``), then let it finish."""
    ws = world.workspace
    result = ChainResult()
    for point in points:
        if _reached(world, point):
            continue
        if point.kind == "boundary":
            pause_at = point.key
        else:
            # Also pause where the step ends: a delay longer than this attempt takes
            # then kills it on its last boundary instead of somewhere further on.
            pause_at = ",".join(f"step:{point.key}:{end}" for end in ("running", "succeeded", "failed"))
        proc = ws.start(pause_at=pause_at)
        result.pids.append(proc.pid)
        ws.wait_paused(proc)
        landed, inside = True, False
        if point.kind == "boundary" and sig == signal.SIGKILL:
            outcome = kill_and_reap(proc)
        elif point.kind == "boundary":
            # The signal arrives while the run sits on the boundary, then it goes on.
            proc_signal(proc, sig)
            ws.release()
            outcome = proc.wait()
        else:
            ws.release()
            deadline = time.monotonic() + point.delay
            while time.monotonic() < deadline and not proc.poll() and ws.paused_at(proc) is None:
                time.sleep(0.002)
            landed = not proc.poll()
            inside = landed and ws.paused_at(proc) is None
            if landed:
                proc_signal(proc, sig)
                if ws.paused_at(proc) is not None and sig != signal.SIGKILL:
                    ws.release()  # SIGTERM on the step's end boundary: let it reach a safe point
            outcome = proc.wait()
        state = ws.read_state()
        assert state is not None, "no state after the kill"
        _check_loadable(ws.state_dir, ws.plan_name, state["run_id"])
        if sig != signal.SIGKILL:
            _check_clean_stop(outcome, state)
        else:
            assert outcome.code in (-signal.SIGKILL, 0, 3), outcome.stderr[-2000:]
        result.kills.append(
            Kill(
                point=point,
                pid=proc.pid,
                code=outcome.code,
                status=state["status"],
                done=done_steps(state),
                running={
                    s
                    for s, st in step_statuses(state).items()
                    if st in ("running", "interrupted", "pending") and s in _started(ws, proc.pid)
                },
                landed=landed,
                inside=inside,
            )
        )
        if state["status"] in FINISHED:
            break
    final_state = ws.read_state()
    if final_state is None or final_state["status"] not in FINISHED:
        proc = ws.start()
        result.pids.append(proc.pid)
        result.final = proc.wait()
        assert_no_traceback(result.final.stderr)
    result.final_state = ws.read_state()
    return result


def proc_signal(proc: Launched, sig: signal.Signals) -> None:
    import os

    os.kill(proc.pid, sig)


def _started(ws: Any, pid: int) -> set[str]:
    return {step for p, what, step in ws.executions() if p == pid and what == "start"}


def _check_loadable(state_dir: Path, plan_name: str, run_id: str) -> None:
    """The state (with its journal, if any) loads as the next run would load it."""
    loaded = StateStore(state_dir, plan_name).load(run_id)
    assert loaded["run_id"] == run_id
    json.dumps(loaded)


def _check_clean_stop(outcome: Outcome, state: dict[str, Any]) -> None:
    """SIGTERM/SIGINT: exit 130 and a resumable run, or the run had nothing left and finished."""
    assert_no_traceback(outcome.stderr)
    if outcome.code == 130:
        assert state["status"] == "interrupted", state["status"]
        assert "resume it with: migration run" in outcome.stderr
        lines = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, outcome.stderr[-2000:]
    else:
        assert outcome.code in (0, 3), outcome.stderr[-2000:]
        assert state["status"] in FINISHED


def assert_like_reference(world: World, reference: Reference, result: ChainResult, run_id: str) -> None:
    """The interrupted run ended exactly as the uninterrupted one did."""
    ws = world.workspace
    state = result.final_state
    assert state is not None
    assert state["run_id"] == run_id, "a kill made the next run start over instead of resuming"
    if result.final is not None:
        assert result.final.code == reference.code, result.final.stderr[-3000:]
    assert state["status"] == reference.status
    assert step_statuses(state) == reference.statuses
    assert world.checksums() == reference.checksums

    # No step recorded as completed ever started again.
    order = {pid: i for i, pid in enumerate(result.pids)}
    starts = [(order.get(pid, -1), step) for pid, what, step in ws.executions() if what == "start"]
    for k, kill in enumerate(result.kills):
        later = {step for i, step in starts if i > k}
        rerun = later & kill.done
        assert not rerun, f"completed steps {sorted(rerun)} ran again after the kill at {kill.point}"

    # Side effects: those of the reference run, plus repeats only of steps a kill interrupted.
    interrupted = set().union(*(k.running for k in result.kills)) if result.kills else set()
    extra = Counter(world.effects()) - Counter(reference.effects)
    missing = Counter(reference.effects) - Counter(world.effects())
    assert not missing, f"side effects missing: {dict(missing)}"
    unexplained = {line for line in extra if _effect_step(line) not in interrupted}
    assert not unexplained, f"side effects repeated by steps no kill interrupted: {unexplained}"


def _effect_step(line: str) -> str:
    if line.endswith("-s4"):
        return "s4"
    if line.startswith("notify "):
        return "tell"
    return {"restored": "mark"}.get(line, line)
