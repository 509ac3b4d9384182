"""A resume keeps the first run's ``--var`` values (secrets must be given again) and warns
about each one the operator changes: through the CLI, with a real SIGKILL in between."""

from __future__ import annotations

import signal
from pathlib import Path

from helpers import assert_no_traceback, load_state, migration, write_plan

PLAN = """
name: vars-demo
vars:
  batch: 500
  api_token: none
phases:
  - id: one
    steps:
      - {id: first, uses: shell, with: {command: "echo first {{ vars.batch }} >> log.txt", shell: true}}
      - id: killer
        uses: shell
        with: {command: "[ -e killed ] || { touch killed; kill -9 $PPID; }", shell: true}
  - id: two
    steps:
      - {id: second, uses: shell, with: {command: "echo second {{ vars.batch }} >> log.txt", shell: true}}
"""

SECRET = "s3cret-token-value"


def _start(tmp_path: Path, *var_args: str) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN)
    first = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", *var_args)
    assert first.returncode == -signal.SIGKILL, first.stderr


def test_resume_keeps_the_first_runs_vars_and_needs_secrets_again(tmp_path: Path) -> None:
    _start(tmp_path, "--var", "batch=100", "--var", f"api_token={SECRET}")
    state_file = next((tmp_path / "state" / "vars-demo").glob("*Z*.json"))
    assert SECRET not in state_file.read_text()
    stored = load_state(tmp_path / "state", "vars-demo")["var_values"]
    assert stored == {
        "api_token": {"value": "***", "masked": True},
        "batch": {"value": 100, "masked": False},
    }

    without_secret = migration(tmp_path, "resume", "plan.yaml", "--state-dir", "state")
    assert without_secret.returncode == 2
    assert_no_traceback(without_secret)
    assert "secret --var api_token" in without_secret.stderr
    assert "--var api_token=..." in without_secret.stderr
    assert (tmp_path / "log.txt").read_text().split("\n")[:1] == ["first 100"]

    resumed = migration(
        tmp_path, "resume", "plan.yaml", "--state-dir", "state", "--var", f"api_token={SECRET}"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resume keeps --var batch=100 from the start of run" in resumed.stderr
    assert "--var batch:" not in resumed.stderr  # not a difference: nothing to warn about
    assert (tmp_path / "log.txt").read_text().splitlines() == ["first 100", "second 100"]
    assert SECRET not in resumed.stderr


def test_resume_warns_about_each_changed_or_new_var_and_uses_it(tmp_path: Path) -> None:
    _start(tmp_path, "--var", "batch=100")
    resumed = migration(
        tmp_path,
        "run",
        "plan.yaml",
        "--state-dir",
        "state",
        "--log-format",
        "console",
        "--var",
        "batch=200",
        "--var",
        "api_token=abc",
    )
    assert resumed.returncode == 0, resumed.stderr
    err = resumed.stderr
    assert "--var batch: run " in err and "started with 100, now 200; resuming with the new value" in err
    assert "--var api_token: not given when run" in err
    assert (tmp_path / "log.txt").read_text().splitlines() == ["first 100", "second 200"]
    # The report names the values the run was started with.
    report = migration(tmp_path, "report", "plan.yaml", "--state-dir", "state")
    assert "- --var: batch=100" in report.stdout


ROLLBACK_PLAN = (
    PLAN
    + """
rollback:
  - {id: undo, uses: shell, with: {command: "echo undo {{ vars.batch }} >> log.txt", shell: true}}
"""
)


def test_rollback_on_demand_uses_the_runs_own_vars(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", ROLLBACK_PLAN)
    first = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--var", "batch=100")
    assert first.returncode == -signal.SIGKILL, first.stderr

    rolled = migration(tmp_path, "rollback", "plan.yaml", "--state-dir", "state")

    assert rolled.returncode == 0, rolled.stderr  # an on-demand rollback that completes
    assert_no_traceback(rolled)
    assert "rollback keeps --var batch=100 from the start of run" in rolled.stderr
    # Not the plan's 500: the rollback undoes what the run did with its own values.
    assert (tmp_path / "log.txt").read_text().splitlines() == ["first 100", "undo 100"]


def test_rollback_needs_a_secret_var_again(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", ROLLBACK_PLAN)
    first = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--var", f"api_token={SECRET}")
    assert first.returncode == -signal.SIGKILL, first.stderr

    refused = migration(tmp_path, "rollback", "plan.yaml", "--state-dir", "state")

    assert refused.returncode == 2
    assert_no_traceback(refused)
    assert "give the same value again to rollback: --var api_token=..." in refused.stderr
    assert (tmp_path / "log.txt").read_text().splitlines() == ["first 500"]


USAGE_SECRET_PLAN = """
name: usage-secret
vars:
  auth: none
phases:
  - id: one
    steps:
      - id: call
        uses: shell
        with:
          command: "echo called >> log.txt"
          shell: true
          env: {Authorization: "Bearer {{ vars.auth }}"}
      - id: killer
        uses: shell
        with: {command: "[ -e killed ] || { touch killed; kill -9 $PPID; }", shell: true}
rollback:
  - {id: undo, uses: shell, with: {command: "echo undo >> log.txt", shell: true}}
"""


def test_a_var_secret_by_its_use_given_again_is_never_shown(tmp_path: Path) -> None:
    # auth's name does not look secret: only its use in an Authorization header does.
    write_plan(tmp_path / "plan.yaml", USAGE_SECRET_PLAN)
    first = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--var", f"auth={SECRET}")
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert load_state(tmp_path / "state", "usage-secret")["var_values"]["auth"]["masked"] is True

    for command in ("resume", "rollback"):
        again = migration(tmp_path, command, "plan.yaml", "--state-dir", "state", "--var", f"auth={SECRET}")
        assert again.returncode == 0, again.stderr
        assert SECRET not in again.stdout + again.stderr, command
        assert "--var auth:" not in again.stderr  # the same value: nothing to warn about
