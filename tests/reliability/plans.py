"""The plans the crash matrix drives, and how to set each one up in a fresh folder.

Every plan leaves traces a test can compare: ``effects.txt`` lines from shell,
python and notify steps, processes that write their pid, databases compared by
per-collection checksums.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from migration.demo.seed import seed
from migration.steps.mongo.checksums import collection_checksum

from .harness import Launcher, Workspace

# A python-step module placed in each workspace: its calls leave lines in effects.txt.
EFFECTS_MODULE = '''
"""Side effects of python steps, for the reliability suite."""
from __future__ import annotations

import pymongo


def record(name: str) -> dict:
    with open("effects.txt", "a") as fh:
        fh.write(name + "\\n")
    return {"name": name}


def damage(uri: str) -> dict:
    """What a broken migration does: drop a collection, rewrite another. Reports failure."""
    with open("effects.txt", "a") as fh:
        fh.write("damage\\n")
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        db = client.get_default_database()
        db.drop_collection("AuditLog")
        db.Property.update_many({}, {"$set": {"damaged": True}})
    finally:
        client.close()
    return {"ok": False}
'''


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def shell_step(step_id: str, extra: str = "") -> str:
    command = f"{extra}echo {step_id} >> effects.txt"
    return f'{{id: {step_id}, uses: shell, with: {{command: "{command}", shell: true}}}}'


SHELL_PLAN = f"""
name: crash-shell
phases:
  - id: one
    steps:
      - {shell_step("s1")}
      - {{id: s2, uses: shell, with: {{command: [sh, -c, "sleep 0.3; echo s2 >> effects.txt"]}}}}
    checkpoint:
      - that: "steps.s1.outputs.exit_code == 0"
  - id: two
    steps:
      - {shell_step("s3", "sleep 0.3; ")}
      - {{id: s4, uses: shell, with: {{command: "echo {{{{ steps.s2.outputs.exit_code }}}}-s4 >> effects.txt",
          shell: true}}}}
  - id: three
    steps:
      - {shell_step("s5")}
"""

GENERAL_PLAN = """
name: crash-general
vars:
  base: "@BASE@"
phases:
  - id: checks
    steps:
      - {id: need, uses: require, with: {commands: [sh], env: [HOME], free_disk: {path: ., bytes: 1}}}
      - {id: up, uses: http.check, with: {url: "{{ vars.base }}/health", expect_json: {ok: true}}}
      - {id: gate, uses: confirm, with: {message: "go on?"}}
    checkpoint:
      - that: "steps.up.outputs.status == 200"
  - id: work
    steps:
      - {id: py, uses: python, with: {function: "effects:record", params: {name: py}}}
      - {id: nap, uses: sleep, with: {seconds: 0.2}}
      - id: app
        uses: process.start
        with:
          command: [sh, -c, "echo $$ >> app-pids.txt; exec sleep 600"]
          settle: 0.3
      - {id: app-stop, uses: process.stop, with: {id: app}}
      - id: tell
        uses: notify
        with:
          text: "done {{ steps.py.outputs.name }}"
          command: [sh, -c, 'echo "notify $MIGRATION_NOTIFY_TEXT" >> effects.txt']
      - {id: last, uses: shell, with: {command: "echo last >> effects.txt", shell: true}}
"""

BACKUP_RESTORE_PLAN = """
name: crash-backup-restore
vars:
  src: "@SRC@"
  dst: "@DST@"
phases:
  - id: backup
    steps:
      - {id: preflight, uses: mongo.preflight, with: {uri: "{{ vars.src }}", backup_path: backups}}
      - {id: backup, uses: mongo.backup, with: {uri: "{{ vars.src }}", out: backups, verify: checksums}}
    checkpoint:
      - that: "steps.backup.outputs.total_records > 0"
  - id: restore
    steps:
      - id: restore
        uses: mongo.restore
        with:
          uri: "{{ vars.dst }}"
          from: "{{ steps.backup.outputs.path }}"
          allow_other_database: true
      - {id: mark, uses: shell, with: {command: "echo restored >> effects.txt", shell: true}}
"""

ROLLBACK_PLAN = """
name: crash-rollback
on_failure: rollback
vars:
  db: "@DB@"
rollback:
  - id: restore
    uses: mongo.restore
    with: {uri: "{{ vars.db }}", from: "{{ steps.backup.outputs.path }}", drop: true}
  - {id: undo, uses: shell, with: {command: "echo undo >> effects.txt", shell: true}}
phases:
  - id: backup
    steps:
      - {id: backup, uses: mongo.backup, with: {uri: "{{ vars.db }}", out: backups}}
  - id: migrate
    steps:
      - {id: damage, uses: python, with: {function: "effects:damage", params: {uri: "{{ vars.db }}"}}}
    checkpoint:
      - that: "steps.damage.outputs.ok"
        message: the migration broke the data
    rollback:
      - {id: undo-migrate, uses: shell, with: {command: "echo undo-migrate >> effects.txt", shell: true}}
"""

# Documents per seeded database: big enough that backup and restore take a while.
SEED_PROPERTIES = 150


def database_checksums(url: str) -> dict[str, Any]:
    """Per collection: checksum of the documents in _id order, and the index names."""
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
    try:
        db = client.get_default_database()
        return {
            name: (collection_checksum(db, name), sorted(i["name"] for i in db[name].list_indexes()))
            for name in sorted(db.list_collection_names())
        }
    finally:
        client.close()


def drop_database(url: str) -> None:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
    try:
        client.drop_database(client.get_default_database().name)
    finally:
        client.close()


@dataclass
class Scenario:
    """A plan, how to set up a fresh copy of its world, and what to compare at the end."""

    name: str
    plan_name: str
    build: Callable[[Path, Any], dict[str, str]]  # (folder, context) -> databases to compare
    expected_code: int = 0
    extra_args: list[str] = field(default_factory=list)
    # Steps inside which random kills land (long enough for one to land inside), with
    # how many kills each gets per chain.
    long_steps: dict[str, int] = field(default_factory=dict)
    needs_mongo: bool = False
    needs_http: bool = False
    plan_file: str = "plan.yaml"


@dataclass
class World:
    """One prepared copy: the workspace and the databases it touches."""

    workspace: Workspace
    databases: dict[str, str]

    def checksums(self) -> dict[str, Any]:
        return {role: database_checksums(url) for role, url in sorted(self.databases.items())}

    def effects(self) -> list[str]:
        path = self.workspace.root / "effects.txt"
        return path.read_text().split("\n")[:-1] if path.exists() else []

    def drop(self) -> None:
        stop_apps(self.workspace.root)
        for url in self.databases.values():
            drop_database(url)


def _db_url(context: Any, role: str) -> str:
    return str(context.mongo_server.database_url(f"rel_{role}_{uuid.uuid4().hex[:10]}"))


def _build_shell(folder: Path, context: Any) -> dict[str, str]:
    write(folder / "plan.yaml", SHELL_PLAN)
    return {}


def _build_general(folder: Path, context: Any) -> dict[str, str]:
    write(folder / "plan.yaml", GENERAL_PLAN.replace("@BASE@", context.http_base))
    write(folder / "effects.py", EFFECTS_MODULE)
    return {}


def _build_backup_restore(folder: Path, context: Any) -> dict[str, str]:
    src, dst = _db_url(context, "src"), _db_url(context, "dst")
    seed(src, SEED_PROPERTIES)
    write(folder / "plan.yaml", BACKUP_RESTORE_PLAN.replace("@SRC@", src).replace("@DST@", dst))
    return {"src": src, "dst": dst}


def _build_rollback(folder: Path, context: Any) -> dict[str, str]:
    db = _db_url(context, "rb")
    seed(db, SEED_PROPERTIES)
    write(folder / "plan.yaml", ROLLBACK_PLAN.replace("@DB@", db))
    write(folder / "effects.py", EFFECTS_MODULE)
    return {"db": db}


VNP_PLAN = Path(__file__).resolve().parents[2] / "plans" / "vnp-bank-details.yaml"
VNP_PROPERTIES = 120
VNP_BATCH = 15


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _build_vnp(folder: Path, context: Any) -> dict[str, str]:
    """The seed's plan as a team runs it: .env, production app up, a seeded database."""
    db = _db_url(context, "vnp")
    seed(db, VNP_PROPERTIES)
    port = _free_port()
    app = f"{sys.executable} -m migration.demo.app --port {port} --uri {db}"
    (folder / ".env").write_text(
        "\n".join(
            [
                f"DATABASE_URL={db}",
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
                f"VNP_TRANSFORM_BATCH_SIZE={VNP_BATCH}",
                "VNP_MAX_INVALID=1000",
                "",
            ]
        )
    )
    subprocess.run(
        ["sh", "-c", f"nohup {app} >app.log 2>&1 & echo $! >app.pid"], cwd=folder, check=True, env=_app_env()
    )
    deadline = time.monotonic() + 30
    while not _answers(f"http://127.0.0.1:{port}/"):
        assert time.monotonic() < deadline, "the production app did not start"
        time.sleep(0.1)
    return {"db": db}


def _app_env() -> dict[str, str]:
    from helpers import cli_env

    return cli_env(drop=["DATABASE_URL"])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except Exception:
        return False


def stop_apps(folder: Path) -> None:
    """Stop whatever app instances a VNP world left running (production and test starts)."""
    pids: list[int] = []
    pidfile = folder / "app.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError):
            pids.append(int(pidfile.read_text().strip()))
    logs = folder / ".migration" / "logs"
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(proc_dir / "cwd")
        except OSError:
            continue
        if "migration.demo.app" in cmdline and (cwd == str(folder) or str(logs) in cmdline):
            pids.append(int(proc_dir.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("shell", "crash-shell", _build_shell, long_steps={"s2": 2, "s3": 2}),
        Scenario(
            "general",
            "crash-general",
            _build_general,
            extra_args=["--yes"],
            long_steps={"nap": 2},
            needs_http=True,
        ),
        Scenario(
            "backup-restore",
            "crash-backup-restore",
            _build_backup_restore,
            # Several kills inside this restore (drop: false) in one chain: each attempt must
            # keep what the earlier ones restored (see test_restore_killed_twice_...).
            long_steps={"backup": 3, "restore": 3},
            needs_mongo=True,
        ),
        Scenario(
            "rollback",
            "crash-rollback",
            _build_rollback,
            expected_code=3,
            long_steps={"backup": 2, "restore": 3},
            needs_mongo=True,
        ),
        Scenario(
            "vnp",
            "vnp-bank-details",
            _build_vnp,
            plan_file=str(VNP_PLAN),
            extra_args=["--yes"],
            long_steps={"backup": 2, "bank-details": 3, "validate": 1},
            needs_mongo=True,
        ),
    ]
}


def make_world(scenario: Scenario, folder: Path, launcher: Launcher, context: Any) -> World:
    folder.mkdir(parents=True, exist_ok=True)
    databases = scenario.build(folder, context)
    workspace = Workspace(
        folder,
        scenario.plan_name,
        launcher,
        plan_file=scenario.plan_file,
        extra_args=list(scenario.extra_args),
    )
    if scenario.name == "vnp":
        workspace.drop_env = ["DATABASE_URL"]
    return World(workspace, databases)
