"""The seed procedure end to end: plans/vnp-bank-details.yaml run by the CLI in a
subprocess against the real server, with the stand-in backend started and stopped
by the plan itself, as the demo and a team on production night run it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
from helpers import PROJECT, cli_env, load_state, migration, start_migration, wait_for

from migration.demo.dataset import COLLECTIONS, expected_distribution
from migration.demo.seed import seed
from migration.steps.mongo.checksums import collection_checksum

pytestmark = pytest.mark.mongo

PLAN = PROJECT / "plans" / "vnp-bank-details.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except Exception:
        return False


@dataclass
class Team:
    """A team's working directory: .env, the running 'production' app, its database."""

    workdir: Path
    db_url: str
    app_url: str
    size: int | str

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def database(self) -> Any:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(self.db_url, serverSelectionTimeoutMS=5000)
        return client, client.get_default_database()

    def checksums(self) -> dict[str, str]:
        client, db = self.database()
        try:
            return {name: collection_checksum(db, name) for name in sorted(COLLECTIONS)}
        finally:
            client.close()

    def env(self, **overrides: str) -> dict[str, str]:
        return cli_env({k: str(v) for k, v in overrides.items()}, drop=["DATABASE_URL"])

    def run(self, *args: str, timeout: float = 300, **overrides: str) -> subprocess.CompletedProcess[str]:
        return migration(
            self.workdir,
            "run",
            PLAN,
            "--yes",
            "--state-dir",
            self.state_dir,
            *args,
            env=self.env(**overrides),
            timeout=timeout,
        )


def _make_team(tmp_path: Path, db_url: str, size: int | str) -> Team:
    workdir = tmp_path / f"team-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    seed(db_url, size=size)
    port = _free_port()
    app = f"{sys.executable} -m migration.demo.app --port {port} --uri {db_url}"
    (workdir / ".env").write_text(
        "\n".join(
            [
                f"DATABASE_URL={db_url}",
                f"VNP_APP_URL=http://127.0.0.1:{port}",
                "VNP_APP_STOP=pid=$(cat app.pid) && kill $pid && for i in $(seq 100); "
                "do kill -0 $pid 2>/dev/null || break; sleep 0.1; done && rm -f app.pid",
                f"VNP_APP_TEST_START={app}",
                f"VNP_APP_RESTART=nohup {app} >>app.log 2>&1 & echo $! >app.pid",
                f"VNP_REQUIRED_COMMANDS={Path(sys.executable).name} kill",
                "VNP_SCHEMA_PUSH=echo schema in sync",
                "VNP_CLIENT_GENERATE=echo generated",
                "VNP_APP_BUILD=echo built",
                "VNP_CHECKOUT_MAIN=echo on main",
                "VNP_MONITOR_SECONDS=1",
                "VNP_NOTIFY_COMMAND=echo notified",
                "",
            ]
        )
    )
    # Detached like a real service (not our child: nobody here would reap it).
    subprocess.run(["sh", "-c", f"nohup {app} >app.log 2>&1 & echo $! >app.pid"], cwd=workdir, check=True)
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), timeout=30, what="the production app")
    return Team(workdir, db_url, f"http://127.0.0.1:{port}", size)


def _stop_apps(team: Team) -> None:
    pidfile = team.workdir / "app.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


@pytest.fixture
def team(tmp_path: Path, mongo_url: str) -> Iterator[Team]:
    created = _make_team(tmp_path, mongo_url, "small")
    yield created
    _stop_apps(created)


def _backup_manifest(team: Team) -> dict[str, Any]:
    state = load_state(team.state_dir, "vnp-bank-details")
    path = next(s for p in state["phases"] for s in p["steps"] if s["id"] == "backup")["outputs"]["path"]
    return json.loads((Path(path) / "backup-manifest.json").read_text())


def test_vnp_plan_runs_end_to_end_and_reports(team: Team) -> None:
    result = team.run()
    assert result.returncode == 0, result.stderr[-3000:]
    client, db = team.database()
    try:
        expected = expected_distribution("small", 42, "messy")
        bank = db.PropertyBankDetails
        assert bank.count_documents({"swift_bic_iban": {"$exists": True}}) == expected["invalid"]
        assert bank.count_documents({"iban_number": {"$ne": None}}) == expected["iban"]
        assert bank.count_documents({"swift_bic_number": {"$ne": None}}) == expected["swift"]
    finally:
        client.close()
    assert _answers(team.app_url + "/"), "production is not back up after the run"
    report = migration(team.workdir, "report", PLAN, "--state-dir", team.state_dir)
    assert report.returncode == 0
    assert "status: **succeeded**" in report.stdout
    assert "downtime: **" in report.stdout and "stop-app -> restart-app" in report.stdout
    assert f"iban: {expected['iban']}" in report.stdout  # the distribution
    assert "[FAIL]" not in report.stdout


def test_failed_validation_rolls_back_to_the_backup(team: Team) -> None:
    client, db = team.database()
    try:
        # A dangling reference: the validation's references check must fail.
        orphan = db.PropertyBankDetails.find_one({}, sort=[("_id", 1)])
        db.Property.delete_one({"_id": orphan["propertyId"]})
    finally:
        client.close()
    before = team.checksums()

    result = team.run()

    assert result.returncode == 3, result.stderr[-3000:]
    assert "checkpoint of phase validate failed" in result.stderr
    assert team.checksums() == before, "rollback did not restore every collection"
    manifest = _backup_manifest(team)
    assert {n: manifest["collections"][n]["checksum"] for n in before} == before
    state = load_state(team.state_dir, "vnp-bank-details")
    assert state["status"] == "rolled_back"
    assert [s["id"] for s in state["rollback"]["steps"] if s["status"] == "succeeded"][:2] == [
        "rollback-stop-app",
        "restore",
    ]
    assert _answers(team.app_url + "/"), "the rollback did not bring production back"


def test_smoke_test_failure_rolls_back(team: Team) -> None:
    before = team.checksums()
    # The new build does not start: the smoke-test phase fails, the rollback runs.
    result = team.run(VNP_APP_TEST_START=f"{sys.executable} -c 'raise SystemExit(3)'")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "test-start" in result.stderr
    assert team.checksums() == before
    assert _answers(team.app_url + "/")


def test_sigkill_during_transform_resumes_to_the_uninterrupted_result(
    tmp_path: Path, mongo_server: Any
) -> None:
    size = 1500  # properties: ~1,400 bank details, 28 batches of 50
    urls = [mongo_server.database_url("t_" + uuid.uuid4().hex[:12]) for _ in range(2)]
    teams = [_make_team(tmp_path, url, size) for url in urls]
    try:
        straight, killed = teams
        assert straight.run(VNP_TRANSFORM_BATCH_SIZE="50", VNP_MAX_INVALID="1000").returncode == 0

        proc = start_migration(
            killed.workdir,
            "run",
            PLAN,
            "--yes",
            "--state-dir",
            killed.state_dir,
            env=killed.env(VNP_TRANSFORM_BATCH_SIZE="50", VNP_MAX_INVALID="1000"),
        )

        def transform_in_progress() -> bool:
            try:
                state = load_state(killed.state_dir, "vnp-bank-details")
            except Exception:
                return False
            step = next(s for p in state["phases"] for s in p["steps"] if s["id"] == "bank-details")
            return bool(step.get("progress", {}).get("last_id"))

        wait_for(transform_in_progress, timeout=120, what="the transform's first committed batch")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        time.sleep(0.2)
        state = load_state(killed.state_dir, "vnp-bank-details")
        assert state["status"] == "running"

        resumed = killed.run(VNP_TRANSFORM_BATCH_SIZE="50", VNP_MAX_INVALID="1000")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "died; resuming" in resumed.stderr
        assert killed.checksums() == straight.checksums()
        final = load_state(killed.state_dir, "vnp-bank-details")
        steps = {s["id"]: s for p in final["phases"] for s in p["steps"]}
        assert steps["backup"]["attempts"] == 1, "the backup ran again after the kill"
        assert steps["bank-details"]["attempts"] == 2
        assert (
            steps["bank-details"]["outputs"]["migrated"]
            == (
                load_state(straight.state_dir, "vnp-bank-details")["phases"][3]["steps"][0]["outputs"][
                    "migrated"
                ]
            )
        )
    finally:
        for team_ in teams:
            _stop_apps(team_)
        for url in urls:
            client: pymongo.MongoClient[Any] = pymongo.MongoClient(url)
            client.drop_database(client.get_default_database().name)
            client.close()
