"""Crash matrix: kill ``migration`` at every step boundary and inside long steps, then run again.

Each chain kills one run at every boundary of the plan (and at seeded random
moments inside its long steps, the rollback included) and lets it finish; the
end must equal an uninterrupted run's: exit code, every step's status, the
databases (per-collection checksums), the side effects; no completed step runs
again; the state file parses after every kill. ``RELIABILITY_SEED`` changes the
random points (the seed in use is printed in the tally).

    python -m pytest -q tests/reliability/test_crash.py            # the CI subset
    python -m pytest -q -m slow tests/reliability/test_crash.py    # each point in its own run
"""

from __future__ import annotations

import os
import random
import signal
import time
from functools import partial
from pathlib import Path

import pytest
from helpers import assert_no_traceback, pid_alive, wait_for

from .conftest import Context
from .crash import (
    KillPoint,
    Reference,
    assert_like_reference,
    boundary_points,
    in_plan_order,
    inside_points,
    reference_run,
    run_chain,
)
from .harness import TALLY, ForkLauncher, Launcher, SubprocessLauncher, kill_and_reap
from .plans import SCENARIOS, Scenario, World, make_world

SEED = int(os.environ.get("RELIABILITY_SEED", "20240611"))
_REFERENCES: dict[str, Reference] = {}


def _scenario_params(names: list[str]) -> list[object]:
    mongo = [pytest.mark.mongo]
    marks = {"backup-restore": mongo, "rollback": mongo, "vnp": [*mongo, pytest.mark.slow]}
    return [pytest.param(SCENARIOS[n], id=n, marks=marks.get(n, [])) for n in names]


ALL = ["shell", "general", "backup-restore", "rollback", "vnp"]


def _reference(scenario: Scenario, tmp: Path, launcher: Launcher, context: Context) -> Reference:
    if scenario.name not in _REFERENCES:
        _REFERENCES[scenario.name] = reference_run(scenario, tmp / "reference", launcher, context)
    return _REFERENCES[scenario.name]


def _chain(
    scenario: Scenario,
    tmp: Path,
    launcher: Launcher,
    context: Context,
    points: list[KillPoint],
    sig: signal.Signals,
) -> int:
    reference = _reference(scenario, tmp, launcher, context)
    world = make_world(scenario, tmp / "chain", launcher, context)
    try:
        first_key = points[0].key if points else None
        assert first_key is not None
        result = run_chain(world, points, sig)
        assert result.final_state is not None
        assert_like_reference(world, reference, result, result.final_state["run_id"])
        _check_world(world, scenario, sig)
        landed = sum(1 for k in result.kills if k.landed)
        TALLY[f"kills {sig.name} {scenario.name}"] += landed
        inside = sum(k.inside for k in result.kills)
        TALLY[f"of which {sig.name} kills inside a step (not on its end)"] += inside
        TALLY[f"runs {scenario.name}"] += len(result.pids)
        TALLY["seed"] = SEED
        return landed
    finally:
        world.drop()


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


def _check_world(world: World, scenario: Scenario, sig: signal.Signals) -> None:
    """What a run leaves outside the state: no stray processes, backups complete or marked partial."""
    root = world.workspace.root
    pids = root / "app-pids.txt"
    if pids.exists():
        for pid in map(int, pids.read_text().split()):
            wait_for(partial(_gone, pid), timeout=10, what=f"app pid {pid} to be gone")
    backups = root / "backups"
    if backups.exists():
        complete = [p for p in backups.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
        partials = [p for p in backups.iterdir() if p.name.endswith(".partial")]
        ends = sum(1 for _, what, step in world.workspace.executions() if what == "end" and step == "backup")
        assert len(complete) == ends, (complete, ends)
        if sig != signal.SIGKILL:
            assert not partials, f"a stopped backup left {partials}"
        for folder in complete:
            assert (folder / "backup-manifest.json").is_file()


@pytest.mark.parametrize("scenario", _scenario_params(ALL))
def test_sigkill_at_every_boundary_and_inside_long_steps(
    scenario: Scenario, tmp_path: Path, fork_launcher: ForkLauncher, context: Context
) -> None:
    reference = _reference(scenario, tmp_path, fork_launcher, context)
    rng = random.Random(f"{SEED}-{scenario.name}-kill")
    points = in_plan_order(
        boundary_points(reference) + inside_points(reference, scenario.long_steps, rng), reference
    )
    landed = _chain(scenario, tmp_path, fork_launcher, context, points, signal.SIGKILL)
    # Kills inside a step land only while it still runs: timing on a loaded machine varies.
    assert landed >= len(points) * 0.5, f"only {landed} of {len(points)} kills landed"


@pytest.mark.parametrize("scenario", _scenario_params(ALL))
def test_sigterm_at_boundaries_and_inside_long_steps_stops_cleanly(
    scenario: Scenario, tmp_path: Path, fork_launcher: ForkLauncher, context: Context
) -> None:
    reference = _reference(scenario, tmp_path, fork_launcher, context)
    rng = random.Random(f"{SEED}-{scenario.name}-term")
    boundaries = boundary_points(reference)
    sample = sorted(rng.sample(range(len(boundaries)), k=min(4, len(boundaries))))
    points = in_plan_order(
        [boundaries[i] for i in sample] + inside_points(reference, scenario.long_steps, rng, 1), reference
    )
    _chain(scenario, tmp_path, fork_launcher, context, points, signal.SIGTERM)


def test_sigkill_chain_with_a_fresh_interpreter_each_time(
    tmp_path: Path, subprocess_launcher: SubprocessLauncher, context: Context
) -> None:
    """The fork server is a shortcut: the same holds for ``python -m``-style processes."""
    scenario = SCENARIOS["shell"]
    reference = _reference(scenario, tmp_path, subprocess_launcher, context)
    rng = random.Random(f"{SEED}-fresh")
    boundaries = boundary_points(reference)
    points = in_plan_order(rng.sample(boundaries, k=2) + inside_points(reference, {"s3": 1}, rng), reference)
    _chain(scenario, tmp_path, subprocess_launcher, context, points, signal.SIGKILL)


@pytest.mark.parametrize(
    ("name", "key"),
    [("shell", "run:succeed"), pytest.param("rollback", "run:rollback_done", marks=pytest.mark.mongo)],
)
def test_kill_right_after_the_run_ended_leaves_it_ended(
    name: str, key: str, tmp_path: Path, fork_launcher: ForkLauncher, context: Context
) -> None:
    scenario = SCENARIOS[name]
    world = make_world(scenario, tmp_path / "w", fork_launcher, context)
    try:
        ws = world.workspace
        proc = ws.start(pause_at=key)
        ws.wait_paused(proc)
        kill_and_reap(proc)
        state = ws.read_state()
        assert state is not None and state["status"] in ("succeeded", "rolled_back")
        starts = ws.starts()

        again = ws.run("resume")

        assert again.code == 2, again.stderr
        assert_no_traceback(again.stderr)
        assert "no unfinished run" in again.stderr
        assert ws.starts() == starts
        TALLY[f"kills SIGKILL {name}"] += 1
    finally:
        world.drop()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", _scenario_params(ALL))
def test_sigkill_each_point_in_its_own_run(
    scenario: Scenario, tmp_path: Path, subprocess_launcher: SubprocessLauncher, context: Context
) -> None:
    """One fresh world per point, a new interpreter per process: no chain effects at all."""
    reference = _reference(scenario, tmp_path, subprocess_launcher, context)
    rng = random.Random(f"{SEED}-{scenario.name}-each")
    points = in_plan_order(
        boundary_points(reference) + inside_points(reference, dict.fromkeys(scenario.long_steps, 5), rng),
        reference,
    )
    for i, point in enumerate(points):
        world = make_world(scenario, tmp_path / f"p{i}", subprocess_launcher, context)
        try:
            result = run_chain(world, [point], signal.SIGKILL)
            assert result.final_state is not None
            assert_like_reference(world, reference, result, result.final_state["run_id"])
            _check_world(world, scenario, signal.SIGKILL)
            TALLY[f"kills SIGKILL {scenario.name} (own run)"] += sum(1 for k in result.kills if k.landed)
        finally:
            world.drop()


@pytest.mark.mongo
def test_restore_killed_twice_resumes_without_refusing_its_own_collections(
    tmp_path: Path, fork_launcher: ForkLauncher, context: Context
) -> None:
    scenario = SCENARIOS["backup-restore"]
    reference = _reference(scenario, tmp_path, fork_launcher, context)
    world = make_world(scenario, tmp_path / "w", fork_launcher, context)
    try:
        # Killed as it starts its third collection, then as the next attempt starts its first.
        points = [KillPoint("boundary", "progress:restore:3"), KillPoint("boundary", "progress:restore:1")]
        result = run_chain(world, points, signal.SIGKILL)
        TALLY["kills SIGKILL backup-restore"] += len(result.kills)
        assert result.final is not None and result.final_state is not None
        assert "already hold data" not in result.final.stderr
        assert_like_reference(world, reference, result, result.final_state["run_id"])
    finally:
        world.drop()


@pytest.mark.mongo
def test_sigkill_vnp_plan_at_sampled_boundaries_and_inside_backup_and_transform(
    tmp_path: Path, fork_launcher: ForkLauncher, context: Context
) -> None:
    """The seed's plan (the full matrix of it is in the slow tests)."""
    scenario = SCENARIOS["vnp"]
    reference = _reference(scenario, tmp_path, fork_launcher, context)
    rng = random.Random(f"{SEED}-vnp-sample")
    boundaries = boundary_points(reference)
    points = in_plan_order(
        rng.sample(boundaries, k=4)
        + inside_points(reference, {"backup": 1, "bank-details": 1}, rng)
        # Right after the transform's second committed batch.
        + [KillPoint("boundary", "progress:bank-details:2")],
        reference,
    )
    _chain(scenario, tmp_path, fork_launcher, context, points, signal.SIGKILL)


def test_sigkill_while_a_service_starts_leaves_no_untracked_service(
    tmp_path: Path, fork_launcher: ForkLauncher, context: Context
) -> None:
    world = make_world(SCENARIOS["general"], tmp_path / "w", fork_launcher, context)
    ws = world.workspace
    pids = ws.root / "app-pids.txt"
    proc = ws.start(pause_at="step:app:running")
    ws.wait_paused(proc)
    ws.release()
    wait_for(lambda: pids.exists() and pids.read_text().strip(), what="the service to start")
    time.sleep(0.1)  # in the step's 0.3 s settle wait: the service is up, the step not done
    assert not proc.poll()
    kill_and_reap(proc)
    TALLY["kills SIGKILL general"] += 1
    try:
        resumed = ws.run()
        assert resumed.code == 0, resumed.stderr[-2000:]
        started = [int(p) for p in pids.read_text().split()]
        assert len(started) == 2
        # app-stop stopped the one the resumed run recorded; the first must not be left behind.
        alive = [pid for pid in started if pid_alive(pid)]
        assert not alive, f"service pids {alive} still run, tracked by nothing"
    finally:
        for pid in [int(p) for p in pids.read_text().split()] if pids.exists() else []:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
