"""Network faults between the tool and the state database, injected with Toxiproxy.

The state URL goes through a Toxiproxy proxy (a real TCP fault proxy, built with
``go install``: see tests/toxiproxy.py); the target database is reached directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import toxiproxy
from tests.helpers import assert_no_traceback, finish, migration
from tests.test_team_state import Team, marks, run_state, target_url, wait_until_running

__all__ = ["target_url"]  # the fixture, shared with the team tests


@pytest.fixture(scope="module")
def toxi() -> Iterator[toxiproxy.Toxiproxy]:
    try:
        binary = toxiproxy.install()
    except RuntimeError as exc:
        pytest.skip(f"toxiproxy is not available: {exc}")
    proxy = toxiproxy.Toxiproxy(binary)
    try:
        yield proxy
    finally:
        proxy.stop()


def proxied(toxi: toxiproxy.Toxiproxy, url: str) -> tuple[str, str]:
    name = "state-" + uuid.uuid4().hex[:8]
    return name, toxi.proxy(name, url)


@pytest.mark.slow  # every state write and renewal takes a second or two: 60-100 s
def test_the_lease_holds_under_a_second_of_latency(
    tmp_path: Path, mongo_url: str, target_url: str, toxi: toxiproxy.Toxiproxy
) -> None:
    name, slow_url = proxied(toxi, mongo_url)
    toxi.add_toxic(name, "latency", "latency", latency=1000)
    team = Team(tmp_path, slow_url, target_url)
    holder = team.start("alpha", "run", "plan.yaml", "--lease-seconds", "6", PAUSE_S="8")
    direct = Team(tmp_path, mongo_url, target_url)
    wait_until_running(direct, "pause")
    refused = direct.run("beta", "run", "plan.yaml", "--lease-seconds", "6")
    assert refused.returncode == 5, refused.stderr  # renewed through the latency: still held
    assert "host alpha" in refused.stderr
    code, _, err = finish(holder, timeout=180)
    assert code == 0, err
    assert "lost the lease" not in err
    state = run_state(mongo_url)
    assert state["status"] == "succeeded" and state["hosts"] == ["alpha"]


def test_a_reset_mid_write_leaves_a_state_that_loads_and_resumes(
    tmp_path: Path, mongo_url: str, target_url: str, toxi: toxiproxy.Toxiproxy
) -> None:
    name, flaky_url = proxied(toxi, mongo_url)
    team = Team(tmp_path, flaky_url + "?serverSelectionTimeoutMS=2000", target_url)
    holder = team.start("alpha", "run", "plan.yaml", "--lease-seconds", "2", PAUSE_S="2")
    direct = Team(tmp_path, mongo_url, target_url)
    wait_until_running(direct, "pause")
    # The server gets the next write; the tool gets a connection reset instead of its answer.
    toxi.add_toxic(name, "reset", "reset_peer", timeout=0)
    code, _, err = finish(holder, timeout=120)
    toxi.remove_toxic(name, "reset")
    assert code == 1, err
    assert_no_traceback(err)
    assert "state store" in err
    status = migration(
        direct.folder("beta"),
        "status",
        "plan.yaml",
        "--json",
        "--state-url",
        mongo_url,
        env=direct.env("beta"),
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] in ("running", "interrupted")
    resumed: Any = None
    for _ in range(3):  # the dead holder's lease expires 2 s after its last renewal
        resumed = direct.run("beta", "run", "plan.yaml", "--lease-seconds", "2")
        if resumed.returncode != 5:
            break
    assert resumed.returncode == 0, resumed.stderr
    assert run_state(mongo_url)["status"] == "succeeded"
    assert marks(target_url) == {"first": "alpha", "second": "beta"}
