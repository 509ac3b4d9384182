"""The database that holds the run state (and the data) restarts in the middle of a run.

A team's state lives in MongoDB (``--state-url``); here that server, a FerretDB of
our own, is killed mid-step and started again on the same port. The run either
rides the outage out (pymongo waits for the server) or stops with one clear line
and a state that loads; a plain ``migration run`` then finishes it. Either way the
data equals an uninterrupted run's and nothing is done twice.

    python -m pytest -q tests/reliability/test_team_restart.py
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from helpers import assert_no_traceback, finish

from tests.test_team_state import Team, marks, run_state, step_statuses, wait_until_running

from .harness import TALLY
from .test_faults import PrivateServer, private_server

__all__ = ["private_server"]  # the fixture, shared with the fault tests

pytestmark = pytest.mark.mongo


def test_the_state_database_restarted_mid_run_finishes_the_run_once(
    tmp_path: Path, private_server: PrivateServer
) -> None:
    suffix = uuid.uuid4().hex[:8]
    team = Team(tmp_path, private_server.url("state_" + suffix), private_server.url("target_" + suffix))
    holder = team.start("alpha", "run", "plan.yaml", "--lease-seconds", "30", PAUSE_S="6")
    wait_until_running(team, "pause")
    down_at = time.monotonic()
    private_server.crash()  # mid-step, with the lease renewing in the background
    time.sleep(1)
    private_server.start()
    code, _, err = finish(holder, timeout=180)
    assert_no_traceback(err)
    TALLY["faults: state database restarts ridden out" if code == 0 else "faults: ... resumed after"] += 1
    if code != 0:
        # Stopped with one line while the server was away; the state it left loads and resumes.
        assert code == 1, err
        again = team.run("alpha", "run", "plan.yaml", "--lease-seconds", "30", timeout=120)
        assert again.returncode == 0, again.stderr
    state = run_state(team.state_url)
    assert state["status"] == "succeeded"
    assert set(step_statuses(state).values()) == {"succeeded"}
    assert state["hosts"] == ["alpha"]
    # Both marks written once, by the one host; the step before the outage was not redone.
    assert marks(team.target_url) == {"first": "alpha", "second": "alpha"}
    first = next(st for phase in state["phases"] for st in phase["steps"] if st["id"] == "first")
    assert first["attempts"] == 1
    assert time.monotonic() - down_at < 170
