"""The CLI contract: locking, dry run, machine-readable output, exit codes, vars and env files."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from helpers import (
    assert_no_traceback,
    cli_env,
    finish,
    kill,
    lines_of,
    listing,
    load_state,
    migration,
    migration_batch,
    start_migration,
    wait_for,
    write_plan,
)

BUILTIN_STEP_TYPES = [
    "shell",
    "http.check",
    "process.start",
    "process.stop",
    "confirm",
    "notify",
    "python",
    "sleep",
    "require",
    "mongo.preflight",
    "mongo.backup",
    "mongo.restore",
    "mongo.transform",
    "mongo.validate",
]

REQUIRED_STATE_KEYS = [
    "schema_version",
    "run_id",
    "plan_name",
    "plan_path",
    "plan_digest",
    "status",
    "started_at",
    "finished_at",
    "phases",
    "rollback",
]

BLOCKING_PLAN = """
name: lock-demo
phases:
  - id: only
    steps:
      - id: work
        uses: shell
        with: {command: "echo work >> log.txt; while [ -e block ]; do sleep 0.02; done", shell: true}
"""


def _run(*extra: str) -> list[str]:
    return ["run", "plan.yaml", "--state-dir", "state", "--log-format", "json", *extra]


def test_second_concurrent_run_exits_5_naming_the_holder(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", BLOCKING_PLAN)
    (tmp_path / "block").touch()
    first = start_migration(tmp_path, *_run())
    try:
        wait_for(lambda: "work" in lines_of(tmp_path / "log.txt"))

        second = migration(tmp_path, *_run())

        assert second.returncode == 5
        assert_no_traceback(second)
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith("error: plan is locked by another live run")
        assert f"pid {first.pid} on host {socket.gethostname()}" in message
        # Status still reads the state of the run in progress.
        status = migration(tmp_path, "status", "lock-demo", "--json", "--state-dir", "state")
        assert json.loads(status.stdout)["status"] == "running"
        assert json.loads(status.stdout)["process_alive"] is True
    finally:
        (tmp_path / "block").unlink()
    code, _, err = finish(first)
    assert code == 0, err
    assert lines_of(tmp_path / "log.txt") == ["work"]


def test_five_runs_at_once_exactly_one_runs(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", BLOCKING_PLAN)
    (tmp_path / "block").touch()
    procs = [start_migration(tmp_path, *_run()) for _ in range(5)]
    try:
        wait_for(lambda: "work" in lines_of(tmp_path / "log.txt"))
        # The losers give up on their own while the winner still holds the lock.
        wait_for(lambda: sum(p.poll() is not None for p in procs) == 4, what="four runs to exit")
    finally:
        (tmp_path / "block").unlink()
    results = [finish(p) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 5, 5, 5, 5], [err for _, _, err in results]
    winner = next(p for p, (code, _, _) in zip(procs, results, strict=True) if code == 0)
    for code, _, err in results:
        if code == 5:
            assert f"pid {winner.pid} on host {socket.gethostname()}" in err
    assert lines_of(tmp_path / "log.txt") == ["work"]
    assert len(list((tmp_path / "state" / "lock-demo").glob("*.events.jsonl"))) == 1


DRY_PLAN = """
name: dry-demo
description: shows what would happen
vars:
  who: "{{ env.DRY_WHO }}"
  backup_root: backups
rollback:
  - {id: restore, uses: shell, with: {command: [echo, "restore from {{ steps.backup.outputs.stdout }}"]}}
phases:
  - id: backup
    steps:
      - {id: backup, uses: shell, with: {command: [touch, "{{ vars.backup_root }}-made"]}}
    checkpoint:
      - that: "steps.backup.outputs.exit_code == 0"
        message: backup must work
    rollback:
      - {id: drop-backup, uses: shell, with: {command: [rm, -f, "{{ vars.backup_root }}-made"]}}
  - id: greet
    steps:
      - {id: hello, uses: shell, with: {command: "echo hello {{ vars.who }} > greeted.txt", shell: true}}
"""


def test_dry_run_writes_nothing_and_shows_the_whole_plan(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", DRY_PLAN)
    before = listing(tmp_path)

    result = migration(
        tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", env=cli_env({"DRY_WHO": "ops"})
    )

    assert result.returncode == 0, result.stderr
    assert listing(tmp_path) == before
    assert not (tmp_path / "state").exists()
    out = result.stdout
    assert "plan: dry-demo" in out
    for expected in (
        "phase 1/2: backup",
        "phase 2/2: greet",
        'command: ["touch", "backups-made"]',  # rendered parameters
        "hello ops",
        "- steps.backup.outputs.exit_code == 0   # backup must work",
        "rollback path",
        "phase backup:",
        "- step drop-backup (shell)",
        "- step restore (shell)",
        "<steps.backup.outputs.stdout>",
        "dry run: ok",
    ):
        assert expected in out, f"{expected!r} not in dry-run output:\n{out}"
    assert out.index("phase 1/2") < out.index("phase 2/2") < out.index("rollback path")
    assert out.index("- step drop-backup") < out.index("- step restore")

    # The dry run also needs the environment, like a real run.
    unset = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state")
    assert unset.returncode == 2
    assert "environment variable DRY_WHO is not set" in unset.stderr
    assert listing(tmp_path) == before


def test_status_json_and_reports(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", DRY_PLAN)
    env = cli_env({"DRY_WHO": "ops"})
    assert migration(tmp_path, *_run(), env=env).returncode == 0

    status = migration(tmp_path, "status", "plan.yaml", "--json", "--state-dir", "state")
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["status"] == "succeeded"
    assert summary["plan_name"] == "dry-demo"
    assert summary["run_id"] == load_state(tmp_path / "state", "dry-demo")["run_id"]
    every = json.loads(migration(tmp_path, "status", "--json", "--state-dir", "state").stdout)
    assert [row["plan_name"] for row in every] == ["dry-demo"]

    # The state file contract, and an events log recording every transition.
    state = load_state(tmp_path / "state", "dry-demo")
    assert set(REQUIRED_STATE_KEYS) <= set(state)
    assert (state["schema_version"], state["plan_name"], state["status"]) == (1, "dry-demo", "succeeded")
    assert state["plan_path"] == str(tmp_path / "plan.yaml")
    assert state["plan_digest"].startswith("sha256:")
    for phase in state["phases"]:
        assert {"id", "status", "checkpoint", "steps"} <= set(phase)
        for step in phase["steps"]:
            assert {"id", "status", "attempts", "outputs", "error"} <= set(step)
    assert state["phases"][0]["checkpoint"]["status"] == "passed"
    events_path = tmp_path / "state" / "dry-demo" / f"{state['run_id']}.events.jsonl"
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert all("timestamp" in e for e in events)
    runs = [(e["source"], e["dest"]) for e in events if e["event"] == "run"]
    assert runs == [("pending", "running"), ("running", "succeeded")]
    assert [e["dest"] for e in events if e.get("step") == "hello"] == ["running", "succeeded"]

    md = migration(tmp_path, "report", "plan.yaml", "--format", "md", "--state-dir", "state")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("#")
    assert "dry-demo" in md.stdout and "hello" in md.stdout and "succeeded" in md.stdout
    run_id = state["run_id"]
    html = migration(tmp_path, "report", "dry-demo", "--format=html", f"--run={run_id}", "--state-dir=state")
    assert html.returncode == 0, html.stderr
    assert html.stdout.lstrip().lower().startswith("<!doctype html")
    assert "dry-demo" in html.stdout and "</html>" in html.stdout
    unknown = migration(tmp_path, "report", "dry-demo", "--run", "nope", "--state-dir", "state")
    assert unknown.returncode == 2
    assert unknown.stderr == f"error: plan dry-demo has no run nope in state (runs: {run_id})\n"


def test_schema_is_a_json_schema_of_plans(tmp_path: Path) -> None:
    result = migration(tmp_path, "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"name", "phases"} <= set(schema["properties"])
    assert {"name", "phases"} <= set(schema["required"])
    uses = schema["$defs"]["StepSpec"]["properties"]["uses"]
    assert set(BUILTIN_STEP_TYPES) <= set(uses["enum"])


def test_schema_accepts_a_good_plan_and_rejects_a_bad_one(tmp_path: Path) -> None:
    import jsonschema
    import yaml

    schema = json.loads(migration(tmp_path, "schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = yaml.safe_load(DRY_PLAN)
    assert list(validator.iter_errors(good)) == []
    bad = yaml.safe_load(DRY_PLAN)
    bad["phases"][0]["steps"][0]["with"] = {"comand": ["x"]}
    assert list(validator.iter_errors(bad)) != []


def test_steps_lists_every_builtin(tmp_path: Path) -> None:
    result = migration(tmp_path, "steps")
    assert result.returncode == 0, result.stderr
    listed = [line.split(":")[0] for line in result.stdout.splitlines() if line and not line[0].isspace()]
    for name in BUILTIN_STEP_TYPES:
        assert name in listed, f"step type {name} is not listed"
    assert "  * command (" in result.stdout


BAD_USAGE = [
    (["run", "missing.yaml"], "error: missing.yaml: plan file not found"),
    (["run", "plan.yaml", "--var", "novalue"], "error: --var 'novalue': expected KEY=VALUE"),
    (["run", "plan.yaml", "--var", "9x=1"], "error: --var '9x=1': '9x' is not a valid variable name"),
    (["run", "plan.yaml", "--env-file", "nope.env"], "error: env file nope.env not found"),
    (["run", "plan.yaml", "--log-format", "xml"], "Invalid value for '--log-format'"),
    (["run", "plan.yaml", "--no-such-option"], "No such option '--no-such-option'"),
    (["resume", "plan.yaml"], "error: no unfinished run of plan lock-demo to resume"),
    (["status", "plan.yaml"], "error: plan lock-demo has no runs in state"),
    (["report", "plan.yaml"], "error: plan lock-demo has no runs in state"),
    (["frobnicate"], "No such command 'frobnicate'"),
]


def test_bad_usage_exits_2_and_runs_nothing(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", BLOCKING_PLAN)
    calls = [(tmp_path, [*args, "--state-dir", "state"]) for args, _ in BAD_USAGE]

    results = migration_batch(calls)

    for (args, message), result in zip(BAD_USAGE, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert_no_traceback(result)
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    assert not (tmp_path / "log.txt").exists()
    assert list((tmp_path / "state").rglob("*.json")) == []


def test_var_overrides_and_env_files(tmp_path: Path) -> None:
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: vars-demo
        env_file: .env
        vars:
          greeting: hello
          target: "{{ env.TARGET }}"
          count: 1
        phases:
          - id: only
            steps:
              - id: say
                uses: shell
                with:
                  command: "echo {{ vars.greeting }} {{ vars.target }} {{ vars.count + 1 }} >> said.txt"
                  shell: true
        """,
    )
    (tmp_path / ".env").write_text("# the plan's env file\nexport TARGET='from plan env file'\nOTHER=x\n")
    (tmp_path / "other.env").write_text("TARGET=from-cli-env-file\n")

    for extra, env in [
        ([], None),
        (["--var", "greeting=hi", "--var", "count=41", "--env-file", "other.env"], None),
        # A variable already in the environment wins over the env file.
        ([], cli_env({"TARGET": "from-environment", "MIGRATION_STATE_DIR": "elsewhere"})),
    ]:
        args = _run(*extra) if env is None else ["run", "plan.yaml", "--log-format", "json"]
        result = migration(tmp_path, *args, env=env)
        assert result.returncode == 0, result.stderr
    # The last run, without --state-dir, kept its state where MIGRATION_STATE_DIR said.
    assert (tmp_path / "elsewhere" / "vars-demo" / "current").exists()
    assert len(list((tmp_path / "state" / "vars-demo").glob("*.events.jsonl"))) == 2

    assert (tmp_path / "said.txt").read_text().splitlines() == [
        "hello from plan env file 2",
        "hi from-cli-env-file 42",
        "hello from-environment 2",
    ]
    state = load_state(tmp_path / "state", "vars-demo")
    assert "TARGET" not in json.dumps(state["var_overrides"])


def test_json_log_format_keeps_stdout_for_machine_output(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", DRY_PLAN)
    env = cli_env({"DRY_WHO": "ops"})

    result = migration(tmp_path, *_run(), env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"event", "level", "timestamp"} <= set(events[0])
    assert any(e.get("step") == "hello" and e.get("status") == "succeeded" for e in events)

    dry = migration(tmp_path, *_run("--dry-run"), env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("plan: dry-demo")
    for line in dry.stderr.splitlines():
        json.loads(line)
    status = migration(tmp_path, "status", "dry-demo", "--json", "--state-dir", "state")
    assert json.loads(status.stdout)["status"] == "succeeded"


RUN_ID_PLAN = """
name: run-id-var
vars: {tag: "backup-{{ run.id }}"}
phases:
  - id: one
    steps:
      - {id: first, uses: shell, with: {command: [echo, "{{ vars.tag }}"]}}
  - id: two
    steps:
      - id: hold
        uses: shell
        with: {command: "touch holding; while [ -e block ]; do sleep 0.02; done", shell: true}
      - {id: second, uses: shell, with: {command: [echo, "{{ vars.tag }}"]}}
"""


def test_vars_see_the_real_run_id_in_a_run_and_after_a_kill_and_resume(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", RUN_ID_PLAN)
    (tmp_path / "block").touch()
    proc = start_migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")
    wait_for(lambda: (tmp_path / "holding").exists(), what="the hold step")
    killed = kill(proc, signal.SIGKILL)
    assert killed[0] == -signal.SIGKILL
    (tmp_path / "block").unlink()

    resumed = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")

    assert resumed.returncode == 0, resumed.stderr
    state = load_state(tmp_path / "state", "run-id-var")
    steps = {st["id"]: st for phase in state["phases"] for st in phase["steps"]}
    expected = f"backup-{state['run_id']}"
    assert steps["first"]["outputs"]["stdout"].strip() == expected  # before the kill
    assert steps["second"]["outputs"]["stdout"].strip() == expected  # rendered again on resume
    # A dry run has no run: it shows a placeholder.
    dry = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state")
    assert "backup-<dry-run>" in dry.stdout
