"""A team on several hosts, one MongoDB state store: the CLI in subprocesses, as operators run it.

Each "host" is a process with its own working folder and ``MIGRATION_HOSTNAME``;
they share the state database (``--state-url``) and the target database, as real
hosts would. The plan marks its progress in the target database, so the data a
run leaves can be compared with an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from migration import stores
from migration.stores import StoreChoice
from tests.helpers import (
    assert_no_traceback,
    cli_env,
    finish,
    migration,
    migration_batch,
    pid_alive,
    start_migration,
    wait_for,
)

PLAN = """\
name: team
vars:
  db: "{{ env.TARGET_URL }}"
on_failure: stop
phases:
  - id: work
    steps:
      - id: look
        uses: mongo.preflight
        with: {uri: "{{ vars.db }}"}
      - id: first
        uses: shell
        with: {command: ["{{ env.PY }}", "{{ env.MARK }}", "{{ vars.db }}", first]}
      - id: pause
        uses: sleep
        with: {seconds: "{{ env.PAUSE_S }}"}
      - id: second
        uses: shell
        with: {command: ["{{ env.PY }}", "{{ env.MARK }}", "{{ vars.db }}", second]}
      - id: gate
        uses: shell
        with: {command: ["{{ env.PY }}", "-c", "import os; raise SystemExit(int(os.environ['FAIL']))"]}
rollback:
  - id: undo
    uses: shell
    with: {command: ["{{ env.PY }}", "{{ env.MARK }}", "{{ vars.db }}", undone]}
"""

MARK = """\
import os, sys
import pymongo
url, step = sys.argv[1], sys.argv[2]
client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
client.get_default_database()["marks"].replace_one(
    {"_id": step}, {"_id": step, "host": os.environ.get("MIGRATION_HOSTNAME")}, upsert=True
)
"""

RACER = """\
import os, sys, time
from migration import cli
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
cli.main.main(sys.argv[3:], prog_name="migration")
"""


class Team:
    """Hosts sharing one state store and one target database."""

    def __init__(self, root: Path, state_url: str, target_url: str, plan: str = PLAN) -> None:
        self.root = root
        self.state_url = state_url
        self.target_url = target_url
        self.plan_text = plan
        self.mark = root / "mark.py"
        self.mark.write_text(MARK)

    def folder(self, host: str) -> Path:
        folder = self.root / host
        if not folder.exists():
            folder.mkdir()
            (folder / "plan.yaml").write_text(self.plan_text)  # the same bytes on every host
        return folder

    def env(self, host: str, **extra: str) -> dict[str, str]:
        return cli_env(
            {
                "MIGRATION_HOSTNAME": host,
                "TARGET_URL": self.target_url,
                "PY": sys.executable,
                "MARK": str(self.mark),
                "PAUSE_S": "0",
                "FAIL": "0",
                **extra,
            }
        )

    def run(self, host: str, *args: str, timeout: float = 60, **extra: str) -> Any:
        return migration(
            self.folder(host),
            *args,
            "--state-url",
            self.state_url,
            env=self.env(host, **extra),
            timeout=timeout,
        )

    def start(self, host: str, *args: str, **extra: str) -> Any:
        return start_migration(
            self.folder(host), *args, "--state-url", self.state_url, env=self.env(host, **extra)
        )


def _client(url: str) -> pymongo.MongoClient[dict[str, Any]]:
    return pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)


@pytest.fixture
def target_url(mongo_server: Any) -> Iterator[str]:
    name = "target_" + uuid.uuid4().hex[:10]
    url: str = mongo_server.database_url(name)
    yield url
    with _client(url) as client:
        client.drop_database(name)


@pytest.fixture
def team(tmp_path: Path, mongo_url: str, target_url: str) -> Team:
    return Team(tmp_path, mongo_url, target_url)


def marks(url: str) -> dict[str, str]:
    with _client(url) as client:
        return {d["_id"]: d.get("host") for d in client.get_default_database()["marks"].find()}


def runs(state_url: str) -> list[dict[str, Any]]:
    with _client(state_url) as client:
        return list(client.get_default_database()["migration_runs"].find({"plan": "team"}))


def run_state(state_url: str) -> dict[str, Any]:
    (doc,) = runs(state_url)
    state: dict[str, Any] = json.loads(doc["state_json"])
    return state


def step_statuses(state: dict[str, Any]) -> dict[str, str]:
    return {st["id"]: st["status"] for phase in state["phases"] for st in phase["steps"]}


def history(team: Team, host: str) -> list[dict[str, Any]]:
    """``migration history --json`` on ``host``."""
    result = team.run(host, "history", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def hosts_of_runs(team: Team) -> list[list[str]]:
    """The hosts of every run, oldest first: what the history shows (read in this process)."""
    return [row["hosts"] for row in stores.history(StoreChoice(team.root, team.state_url))]


def wait_until_running(team: Team, step: str) -> None:
    """Until the state says ``step`` is running (every step before it is recorded as done)."""

    def running() -> bool:
        found = runs(team.state_url)
        return bool(found) and step_statuses(json.loads(found[0]["state_json"])).get(step) == "running"

    wait_for(running, timeout=60, what=f"step {step} to run")


def test_a_run_records_host_target_and_operator_and_a_second_run_says_it_already_succeeded(
    team: Team,
) -> None:
    result = team.run("alpha", "run", "plan.yaml")
    assert result.returncode == 0, result.stderr
    assert marks(team.target_url) == {"first": "alpha", "second": "alpha"}
    (row,) = history(team, "beta")
    assert row["plan"] == "team" and row["status"] == "succeeded" and row["hosts"] == ["alpha"]
    assert row["target"] == team.target_url.split("?")[0]
    assert row["digest"] and row["operator"] and row["started_at"] and row["finished_at"]
    # Nothing went to a state directory: the URL selected the MongoDB store.
    assert not (team.folder("alpha") / "state").exists()
    table = team.run("beta", "history")
    assert "team" in table.stdout and "alpha" in table.stdout and "succeeded" in table.stdout
    # Running it again says so before it starts: when, where, which run.
    second = team.run("beta", "run", "plan.yaml")
    assert second.returncode == 0, second.stderr
    said = second.stderr.split("already succeeded")[1].splitlines()[0]
    assert row["run_id"] in said and "host alpha" in said and row["finished_at"] in said


def test_the_state_url_wins_over_the_state_dir_and_comes_from_the_environment_too(team: Team) -> None:
    folder = team.folder("alpha")
    env = team.env("alpha", MIGRATION_STATE_URL=team.state_url, MIGRATION_STATE_DIR=str(folder / "files"))
    result = migration(folder, "run", "plan.yaml", "--state-dir", folder / "dir", env=env)
    assert result.returncode == 0, result.stderr
    assert not (folder / "files").exists() and not (folder / "dir").exists()
    assert run_state(team.state_url)["status"] == "succeeded"


def test_five_processes_on_three_hosts_at_a_barrier_give_one_run_and_name_its_holder(team: Team) -> None:
    racer = team.root / "racer.py"
    racer.write_text(RACER)
    go = team.root / "go"
    hosts = ["alpha", "alpha", "beta", "beta", "gamma"]
    procs = []
    for number, host in enumerate(hosts):
        ready = team.root / f"ready-{number}"
        args = [
            sys.executable,
            str(racer),
            str(ready),
            str(go),
            "run",
            "plan.yaml",
            "--state-url",
            team.state_url,
        ]
        procs.append(
            subprocess.Popen(
                args,
                cwd=team.folder(host),
                env=team.env(host, PAUSE_S="3"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    # The barrier: every racer has imported migration and waits for the go.
    wait_for(lambda: len(list(team.root.glob("ready-*"))) == len(hosts), timeout=60, what="the racers")
    go.write_text("")
    results = [finish(p, timeout=90) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 5, 5, 5, 5], [r[2][-400:] for r in results]
    winner = hosts[[code for code, _, _ in results].index(0)]
    for code, _, err in results:
        assert_no_traceback(err)
        if code == 5:
            assert f"host {winner}" in err, err
    assert hosts_of_runs(team) == [[winner]]


def test_a_sigkilled_holder_is_taken_over_by_a_plain_run_on_another_host(team: Team) -> None:
    holder = team.start("alpha", "run", "plan.yaml", "--lease-seconds", "2", PAUSE_S="60")
    wait_until_running(team, "pause")
    holder.send_signal(signal.SIGKILL)
    finish(holder)
    time.sleep(2.5)  # the lease expires 2 s after its last renewal
    taken = team.run("beta", "run", "plan.yaml", "--lease-seconds", "2")
    assert taken.returncode == 0, taken.stderr
    assert "took over the lease" in taken.stderr and "host alpha" in taken.stderr
    state = run_state(team.state_url)
    assert state["status"] == "succeeded"
    assert set(step_statuses(state).values()) == {"succeeded"}
    assert state["hosts"] == ["alpha", "beta"]
    assert hosts_of_runs(team) == [["alpha", "beta"]]
    # The same data as an uninterrupted run (first by alpha before it died, second by beta).
    assert marks(team.target_url) == {"first": "alpha", "second": "beta"}


def test_a_sigstopped_holder_is_fenced_off_after_a_takeover_and_writes_nothing_more(team: Team) -> None:
    holder = team.start("alpha", "run", "plan.yaml", "--lease-seconds", "2", PAUSE_S="5")
    wait_until_running(team, "pause")
    holder.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)
        taken = team.run("beta", "run", "plan.yaml", "--lease-seconds", "2")
        assert taken.returncode == 0, taken.stderr
        assert "took over the lease" in taken.stderr
        (before,) = runs(team.state_url)
        with _client(team.state_url) as client:
            events_before = client.get_default_database()["migration_events"].count_documents({})
    finally:
        holder.send_signal(signal.SIGCONT)
    code, _, err = finish(holder, timeout=60)
    assert code == 5, err
    assert "lost the lease" in err and "host beta" in err
    assert_no_traceback(err)
    (after,) = runs(team.state_url)
    assert after["state_json"] == before["state_json"] and after["lease_epoch"] == before["lease_epoch"]
    with _client(team.state_url) as client:
        assert client.get_default_database()["migration_events"].count_documents({}) == events_before
    assert json.loads(after["state_json"])["status"] == "succeeded"
    assert [row["hosts"] for row in history(team, "gamma")] == [["alpha", "beta"]]
    assert marks(team.target_url) == {"first": "alpha", "second": "beta"}


def test_a_live_holder_is_named_with_host_pid_run_and_since(team: Team) -> None:
    holder = team.start("alpha", "run", "plan.yaml", PAUSE_S="8")
    try:
        wait_until_running(team, "pause")
        refused = team.run("beta", "run", "plan.yaml")
        assert refused.returncode == 5
        assert_no_traceback(refused)
        run_id = run_state(team.state_url)["run_id"]
        for part in ("host alpha", f"pid {holder.pid}", f"run {run_id}", "since "):
            assert part in refused.stderr, refused.stderr
        status = team.run("beta", "status", "plan.yaml", "--json")
        assert json.loads(status.stdout)["status"] == "running"
        assert json.loads(status.stdout)["process_alive"] is True
    finally:
        holder.send_signal(signal.SIGINT)
        finish(holder)


RUN_ONCE_PLAN = PLAN.replace("on_failure: stop\n", "on_failure: stop\nrun_once: true\n")


def test_run_once_refuses_a_second_run_on_the_same_target_unless_again(
    tmp_path: Path, mongo_url: str, target_url: str
) -> None:
    team = Team(tmp_path, mongo_url, target_url, RUN_ONCE_PLAN)
    first = team.run("alpha", "run", "plan.yaml")
    assert first.returncode == 0, first.stderr
    run_id = run_state(team.state_url)["run_id"]
    refused = team.run("beta", "run", "plan.yaml")
    assert refused.returncode == 2
    assert_no_traceback(refused)
    assert "already succeeded" in refused.stderr and run_id in refused.stderr and "alpha" in refused.stderr
    assert "--again" in refused.stderr
    again = team.run("beta", "run", "plan.yaml", "--again")
    assert again.returncode == 0, again.stderr
    assert hosts_of_runs(team) == [["alpha"], ["beta"]]


def test_status_report_rollback_and_abandon_work_from_another_host(team: Team) -> None:
    failed = team.run("alpha", "run", "plan.yaml", FAIL="1")
    assert failed.returncode == 1, failed.stderr
    url = ["--state-url", team.state_url]
    beta = team.folder("beta")
    status, every, report = migration_batch(
        [
            (beta, ["status", "plan.yaml", "--json", *url]),
            (beta, ["status", "--json", *url]),
            (beta, ["report", "team", *url]),
        ],
        env=team.env("beta"),
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "failed"
    assert [row["plan_name"] for row in json.loads(every.stdout)] == ["team"]
    assert report.returncode == 0 and run_state(team.state_url)["run_id"] in report.stdout
    rolled = team.run("beta", "rollback", "plan.yaml")
    assert rolled.returncode == 0, rolled.stderr
    assert marks(team.target_url)["undone"] == "beta"
    again = team.run("gamma", "run", "plan.yaml", FAIL="1")
    assert again.returncode == 1
    abandoned = team.run("alpha", "abandon", "plan.yaml")
    assert abandoned.returncode == 0, abandoned.stderr
    rows = stores.history(StoreChoice(team.root, team.state_url))
    assert [row["status"] for row in rows] == ["rolled_back", "abandoned"]
    assert [row["hosts"] for row in rows] == [["alpha", "beta"], ["gamma", "alpha"]]


def test_history_of_the_file_store_lists_its_runs(tmp_path: Path, target_url: str) -> None:
    team = Team(tmp_path, "unused", target_url)
    folder = team.folder("alpha")
    result = migration(folder, "run", "plan.yaml", env=team.env("alpha"))
    assert result.returncode == 0, result.stderr
    listed = migration(folder, "history", "--json", env=team.env("alpha"))
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["plan"] == "team" and row["status"] == "succeeded" and row["hosts"] == ["alpha"]
    (run_file,) = (folder / "state" / "team").glob("*.json")
    assert json.loads(run_file.read_text())["host"] == "alpha"  # MIGRATION_HOSTNAME, as the lock's


BACKUP_PLAN = """\
name: team
vars:
  db: "{{ env.TARGET_URL }}"
on_failure: stop
phases:
  - id: save
    steps:
      - id: backup
        uses: mongo.backup
        with: {uri: "{{ vars.db }}", out: backups}
      - id: gate
        uses: shell
        with: {command: ["{{ env.PY }}", "-c", "import sys; sys.exit(1)"]}
rollback:
  - id: restore
    uses: mongo.restore
    with: {uri: "{{ vars.db }}", from: "{{ steps.backup.outputs.path }}", drop: true}
"""


def test_a_backup_left_on_another_host_stops_a_rollback_before_it_touches_anything(
    tmp_path: Path, mongo_url: str, target_url: str
) -> None:
    team = Team(tmp_path, mongo_url, target_url, BACKUP_PLAN)
    with _client(target_url) as client:
        client.get_default_database()["things"].insert_many([{"_id": i} for i in range(5)])
    failed = team.run("alpha", "run", "plan.yaml")
    assert failed.returncode == 1, failed.stderr
    backups = team.folder("alpha") / "backups"
    hidden = tmp_path / "alpha-disk"
    shutil.move(backups, hidden)  # host alpha's disk: beta does not see it
    before = run_state(team.state_url)
    refused = team.run("beta", "rollback", "plan.yaml")
    assert refused.returncode == 1
    assert_no_traceback(refused)
    assert "host alpha" in refused.stderr and str(backups) in refused.stderr
    assert run_state(team.state_url)["rollback"] == before["rollback"]  # nothing was touched
    shutil.move(hidden, backups)  # shared storage: the same path on both hosts
    rolled = team.run("beta", "rollback", "plan.yaml")
    assert rolled.returncode == 0, rolled.stderr


SERVICE_PLAN = """\
name: team
on_failure: stop
phases:
  - id: serve
    steps:
      - id: service
        uses: process.start
        with: {command: ["{{ env.PY }}", "-c", "import time; time.sleep(120)"], settle: 0.2}
      - id: gate
        uses: shell
        with: {command: ["{{ env.PY }}", "-c", "raise SystemExit(1)"]}
rollback:
  - id: stop-service
    uses: process.stop
    with: {id: service}
"""


def test_a_service_started_on_another_host_is_not_stopped_from_here_and_the_report_says_so(
    tmp_path: Path, mongo_url: str, target_url: str
) -> None:
    team = Team(tmp_path, mongo_url, target_url, SERVICE_PLAN)
    failed = team.run("alpha", "run", "plan.yaml")
    assert failed.returncode == 1, failed.stderr
    pid = next(
        st["outputs"]["pid"]
        for phase in run_state(team.state_url)["phases"]
        for st in phase["steps"]
        if st["id"] == "service"
    )
    try:
        rolled = team.run("beta", "rollback", "plan.yaml")
        assert rolled.returncode == 0, rolled.stderr
        assert "host alpha" in rolled.stderr and "cannot be reached from host beta" in rolled.stderr
        assert pid_alive(pid)  # not signalled from beta: it runs on alpha
        (entry,) = run_state(team.state_url)["rollback"]["steps"]
        assert entry["status"] == "skipped" and f"pid {pid}" in entry["reason"]
        report = team.run("gamma", "report", "plan.yaml")
        assert "## Left on another host" in report.stdout and "stop-service" in report.stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_plan_state_key_selects_the_store_from_env(
    tmp_path: Path, mongo_url: str, target_url: str
) -> None:
    team = Team(
        tmp_path,
        mongo_url,
        target_url,
        PLAN.replace("on_failure:", 'state: "{{ env.OPS_STATE }}"\non_failure:'),
    )
    folder = team.folder("alpha")
    env = team.env("alpha", OPS_STATE=mongo_url)
    result = migration(folder, "run", "plan.yaml", env=env)
    assert result.returncode == 0, result.stderr
    assert run_state(mongo_url)["status"] == "succeeded" and not (folder / "state" / "team").exists()
    status = migration(folder, "status", "plan.yaml", "--json", env=env)
    assert json.loads(status.stdout)["status"] == "succeeded"


def test_bad_store_options_are_one_line_usage_errors(tmp_path: Path) -> None:
    cases = [
        (["--state-url", "not-a-url"], "is not a mongodb:// URL"),
        (["--state-url", "mongodb://127.0.0.1:1/"], "names no database"),
        (["--lease-seconds", "0"], "more than 0 seconds"),
    ]
    results = migration_batch([(tmp_path, ["status", *args]) for args, _ in cases])
    for (_, message), result in zip(cases, results, strict=True):
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1
