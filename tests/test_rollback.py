"""Rollback: order, stop-instead, failed rollbacks, retries, skips, crashes, plugins."""

from __future__ import annotations

import json
import signal
import socket
import textwrap
from pathlib import Path

from helpers import (
    assert_no_traceback,
    cli_env,
    kill,
    lines_of,
    load_state,
    migration,
    pid_alive,
    start_migration,
    step_states,
    wait_for,
    write_plan,
)


def _echo(step_id: str, extra: str = "") -> str:
    """A shell step appending its id to order.txt (``extra`` runs first, e.g. a guard)."""
    command = f"{extra}echo {step_id} >> order.txt"
    return f'{{id: {step_id}, uses: shell, with: {{command: "{command}", shell: true}}}}'


def _plan(
    tmp_path: Path,
    *,
    on_failure: str = "rollback",
    b_guard: str = "",
    checkpoint: str = "steps.b.outputs.exit_code == 0",
    undo_p1_guard: str = "",
) -> Path:
    return write_plan(
        tmp_path / "plan.yaml",
        f"""
        name: rb-demo
        on_failure: {on_failure}
        rollback:
          - {_echo("plan-undo")}
        phases:
          - id: p1
            steps:
              - {_echo("a")}
            rollback:
              - {_echo("undo-p1", undo_p1_guard)}
          - id: p2
            steps:
              - {_echo("b", b_guard)}
            checkpoint:
              - that: "{checkpoint}"
                message: b must have worked
            rollback:
              - {_echo("undo-p2")}
          - id: p3
            steps:
              - {_echo("c")}
            rollback:
              - {_echo("undo-p3")}
        """,
    )


def _run(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json", *extra)
    assert_no_traceback(result)
    return result.returncode, result.stdout, result.stderr


def test_failed_checkpoint_rolls_back_started_phases_newest_first_then_the_plan(tmp_path: Path) -> None:
    _plan(tmp_path, checkpoint="steps.b.outputs.exit_code == 1")

    code, out, err = _run(tmp_path)

    assert code == 3, err
    assert out == ""
    assert lines_of(tmp_path / "order.txt") == ["a", "b", "undo-p2", "undo-p1", "plan-undo"]
    assert "b must have worked" in err
    state = load_state(tmp_path / "state", "rb-demo")
    assert state["status"] == "rolled_back"
    assert state["needs_operator"] is False
    assert [p["status"] for p in state["phases"]] == ["succeeded", "failed", "pending"]
    assert state["phases"][1]["checkpoint"]["status"] == "failed"
    assert [(s["id"], s["status"]) for s in state["rollback"]["steps"]] == [
        ("undo-p2", "succeeded"),
        ("undo-p1", "succeeded"),
        ("plan-undo", "succeeded"),
    ]
    assert state["rollback"]["status"] == "succeeded"


def test_failed_step_with_on_failure_stop_exits_1_and_resumes_from_the_failed_step(tmp_path: Path) -> None:
    _plan(tmp_path, on_failure="stop", b_guard="test -e fixed && ")

    code, _, err = _run(tmp_path)

    assert code == 1, err
    assert "migration run plan.yaml" in err
    assert lines_of(tmp_path / "order.txt") == ["a"]
    state = load_state(tmp_path / "state", "rb-demo")
    assert state["status"] == "failed"
    assert step_states(state)["b"]["status"] == "failed"
    assert state["rollback"]["steps"] == []

    (tmp_path / "fixed").touch()
    code, _, err = _run(tmp_path)

    assert code == 0, err
    assert lines_of(tmp_path / "order.txt") == ["a", "b", "c"]
    final = load_state(tmp_path / "state", "rb-demo")
    assert final["run_id"] == state["run_id"]
    assert final["status"] == "succeeded"
    assert {k: v["attempts"] for k, v in step_states(final).items()} == {"a": 1, "b": 2, "c": 1}


def test_failure_with_no_rollback_defined_stops_resumably(tmp_path: Path) -> None:
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: rb-demo
        phases:
          - id: p1
            steps:
              - {id: a, uses: shell, with: {command: "test -e fixed && echo a >> order.txt", shell: true}}
        """,
    )
    code, _, err = _run(tmp_path)
    assert code == 1, err
    assert "Nothing was undone: the plan has no rollback for the phases that ran" in err
    assert load_state(tmp_path / "state", "rb-demo")["status"] == "failed"
    refused = migration(tmp_path, "rollback", "plan.yaml", "--state-dir", "state")
    assert refused.returncode == 1
    assert "plan rb-demo defines no rollback" in refused.stderr

    (tmp_path / "fixed").touch()
    code, _, err = _run(tmp_path)
    assert code == 0, err
    assert lines_of(tmp_path / "order.txt") == ["a"]


def test_failed_rollback_needs_an_operator_and_rollback_command_finishes_it(tmp_path: Path) -> None:
    _plan(tmp_path, b_guard="false && ", undo_p1_guard="test -e rb-fixed && ")

    code, _, err = _run(tmp_path)

    assert code == 4, err
    assert lines_of(tmp_path / "order.txt") == ["a", "undo-p2"]
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: ROLLBACK FAILED")
    assert "step b failed" in message  # the original failure
    assert "rollback step undo-p1 failed" in message  # and the rollback's
    assert "migration rollback plan.yaml" in message  # what to do
    state = load_state(tmp_path / "state", "rb-demo")
    assert state["status"] == "rollback_failed"
    assert state["needs_operator"] is True
    assert "step b failed" in state["error"]["message"]
    assert "undo-p1" in state["rollback"]["error"]
    status = json.loads(migration(tmp_path, "status", "rb-demo", "--json", "--state-dir", "state").stdout)
    assert status["needs_operator"] is True

    # A plain run refuses to continue the plan and says what to do.
    code, _, err = _run(tmp_path)
    assert code == 4
    assert "migration rollback plan.yaml" in err
    assert lines_of(tmp_path / "order.txt") == ["a", "undo-p2"]

    (tmp_path / "rb-fixed").touch()
    result = migration(tmp_path, "rollback", "plan.yaml", "--state-dir", "state", "--log-format", "json")

    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    assert lines_of(tmp_path / "order.txt") == ["a", "undo-p2", "undo-p1", "plan-undo"]
    final = load_state(tmp_path / "state", "rb-demo")
    assert final["status"] == "rolled_back"
    assert final["needs_operator"] is False
    assert "step b failed" in final["error"]["message"]
    attempts = {s["id"]: s["attempts"] for s in final["rollback"]["steps"]}
    assert attempts == {"undo-p2": 1, "undo-p1": 2, "plan-undo": 1}


def test_rollback_step_needing_outputs_of_a_step_that_never_completed_is_skipped(tmp_path: Path) -> None:
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: rb-demo
        rollback:
          - id: restore
            uses: mongo.restore
            # a shell step's output (a shell step has no 'path': refused at load)
            with: {uri: "mongodb://127.0.0.1:9/x", from: "{{ steps.backup.outputs.stdout }}", drop: true}
          - id: tidy
            uses: shell
            with: {command: "echo tidy {{ steps.backup.outputs.stdout }} >> order.txt", shell: true}
          - id: notify-team
            uses: shell
            with: {command: "echo notify-team >> order.txt", shell: true}
        phases:
          - id: backup
            steps:
              - id: backup
                uses: shell
                with: {command: "echo backup >> order.txt; exit 7", shell: true}
        """,
    )

    code, _, err = _run(tmp_path)

    assert code == 3, err
    assert "nothing to restore: step backup did not complete" in err
    assert "nothing to run: step backup did not complete" in err
    assert lines_of(tmp_path / "order.txt") == ["backup", "notify-team"]
    state = load_state(tmp_path / "state", "rb-demo")
    assert state["status"] == "rolled_back"
    reasons = {s["id"]: (s["status"], s.get("reason")) for s in state["rollback"]["steps"]}
    assert reasons == {
        "restore": ("skipped", "nothing to restore: step backup did not complete"),
        "tidy": ("skipped", "nothing to run: step backup did not complete"),
        "notify-team": ("succeeded", None),
    }


def test_rollback_killed_midway_resumes_on_the_next_run(tmp_path: Path) -> None:
    # The first attempt of undo-p1 hangs (and is killed with migration); the second one passes.
    hang_once = (
        "echo started-undo-p1 >> order.txt; if [ -e block ]; then rm block; echo $$ > undo.pid; "
        "while :; do sleep 0.02; done; fi; "
    )
    _plan(tmp_path, b_guard="false && ", undo_p1_guard=hang_once)
    (tmp_path / "block").touch()
    proc = start_migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")
    pid_file = tmp_path / "undo.pid"
    hung = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip()))
    kill(proc, signal.SIGKILL)
    state = load_state(tmp_path / "state", "rb-demo")
    assert state["status"] == "rolling_back"
    assert pid_alive(hung)

    code, _, err = _run(tmp_path)

    assert code == 3, err
    assert not pid_alive(hung)
    assert f"previous run, pid {proc.pid} on host {socket.gethostname()}, died; resuming" in err
    # undo-p2 completed before the kill and is not repeated; undo-p1 re-runs from its start.
    assert lines_of(tmp_path / "order.txt") == [
        "a",
        "undo-p2",
        "started-undo-p1",
        "started-undo-p1",
        "undo-p1",
        "plan-undo",
    ]
    final = load_state(tmp_path / "state", "rb-demo")
    assert final["status"] == "rolled_back"
    assert step_states(final)["c"]["status"] == "pending"


def test_rollback_stopped_by_sigterm_is_finished_by_the_rollback_command(tmp_path: Path) -> None:
    _plan(
        tmp_path,
        b_guard="false && ",
        undo_p1_guard="echo started-undo-p1 >> order.txt; while [ -e block ]; do sleep 0.02; done; ",
    )
    (tmp_path / "block").touch()
    proc = start_migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")
    wait_for(lambda: "started-undo-p1" in lines_of(tmp_path / "order.txt"))
    code, _, err = kill(proc, signal.SIGTERM)
    assert code == 130, err
    state = load_state(tmp_path / "state", "rb-demo")
    assert (state["status"], state["interrupted_from"]) == ("interrupted", "rolling_back")
    (tmp_path / "block").unlink()

    result = migration(tmp_path, "rollback", "plan.yaml", "--state-dir", "state", "--log-format", "json")

    assert result.returncode == 0, result.stderr
    assert "died" not in result.stderr
    assert lines_of(tmp_path / "order.txt") == [
        "a",
        "undo-p2",
        "started-undo-p1",
        "started-undo-p1",
        "undo-p1",
        "plan-undo",
    ]
    assert load_state(tmp_path / "state", "rb-demo")["status"] == "rolled_back"


def _plugin(tmp_path: Path, module: str, source: str, group: str, entry: str) -> dict[str, str]:
    """A throwaway installed distribution: a module plus ``*.dist-info/entry_points.txt``."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    return cli_env({"PYTHONPATH": f"{site}:{cli_env()['PYTHONPATH']}"})


def test_python_rollback_handler_from_an_entry_point_runs(tmp_path: Path) -> None:
    env = _plugin(
        tmp_path,
        "rbhandlers",
        """
        import json


        def put_back(ctx, target, note):
            (ctx.workdir / target).write_text(json.dumps({
                "run_id": ctx.run_id, "plan": ctx.plan_name, "error": ctx.error,
                "note": note, "outputs_of_a": ctx.outputs_of.get("a", {}).get("exit_code"),
            }))
            return {"restored": target}
        """,
        "migration.rollback_handlers",
        "put-back = rbhandlers:put_back",
    )
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: rb-demo
        vars: {note: from the plan}
        rollback:
          handler: put-back
          with: {target: handled.json, note: "{{ vars.note }}"}
        phases:
          - id: p1
            steps:
              - {id: a, uses: shell, with: {command: [echo, a]}}
              - {id: b, uses: shell, with: {command: [sh, -c, "exit 3"]}}
        """,
    )

    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json", env=env)

    assert result.returncode == 3, result.stderr
    handled = json.loads((tmp_path / "handled.json").read_text())
    state = load_state(tmp_path / "state", "rb-demo")
    assert handled == {
        "run_id": state["run_id"],
        "plan": "rb-demo",
        "error": state["error"]["message"],
        "note": "from the plan",
        "outputs_of_a": 0,
    }
    assert "step b failed" in handled["error"]
    assert state["rollback"]["steps"][0]["outputs"] == {"restored": "handled.json"}
    # Without the plugin the plan does not even validate.
    missing = migration(tmp_path, "validate", "plan.yaml")
    assert missing.returncode == 2
    assert "no rollback handler 'put-back' registered" in missing.stderr


def test_dry_run_shows_a_rollback_handlers_own_preview(tmp_path: Path) -> None:
    env = _plugin(
        tmp_path,
        "rbpreview",
        """
        def put_back(ctx, target):
            raise AssertionError("a dry run must not call the handler")


        def _preview(ctx, target):
            found = sorted(p.name for p in ctx.workdir.glob("*.bak"))
            return f"would put back {target} from {found} (plan {ctx.plan_name})"


        put_back.preview = _preview


        def plain(ctx, target):
            raise AssertionError("a dry run must not call the handler")


        def authed(ctx, target, headers):
            raise AssertionError("a dry run must not call the handler")
        """,
        "migration.rollback_handlers",
        "put-back = rbpreview:put_back\nplain = rbpreview:plain\nauthed = rbpreview:authed",
    )
    (tmp_path / "orders.bak").write_text("{}")
    plan = """
        name: rb-preview
        vars: {target: orders}
        rollback:
          handler: HANDLER
          with: {target: "{{ vars.target }}"}
        phases:
          - id: p1
            steps:
              - {id: a, uses: shell, with: {command: [echo, a]}}
        """

    write_plan(tmp_path / "plan.yaml", plan.replace("HANDLER", "put-back"))
    dry = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", env=env)

    assert dry.returncode == 0, dry.stderr
    assert_no_traceback(dry)
    rollback_part = dry.stdout.partition("then the rollback handler put-back:")[2]
    assert "- step handler:put-back (handler)" in rollback_part
    assert 'target: "orders"' in rollback_part  # rendered
    assert "would put back orders from ['orders.bak'] (plan rb-preview)" in rollback_part

    write_plan(tmp_path / "plan.yaml", plan.replace("HANDLER", "plain"))
    dry = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", env=env)

    assert dry.returncode == 0, dry.stderr
    assert "would call rollback handler plain with {'target': 'orders'}" in dry.stdout

    # A var that is a secret only by its use in the handler's with: is masked everywhere.
    token = "handler-only-token-1234"
    authed = plan.replace("HANDLER", "authed").replace(
        'with: {target: "{{ vars.target }}"}',
        'with: {target: "{{ vars.target }}", headers: {Authorization: "Bearer {{ vars.token }}"}}',
    )
    write_plan(
        tmp_path / "plan.yaml", authed.replace("vars: {target: orders}", "vars: {target: orders, token: x}")
    )
    dry = migration(
        tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", "--var", f"token={token}", env=env
    )
    assert dry.returncode == 0, dry.stderr
    assert 'token: "***"' in dry.stdout
    assert token not in dry.stdout + dry.stderr

    # Its arguments from a step's outputs are not known yet: its preview is not called
    # with placeholders for values.
    from_output = plan.replace("HANDLER", "put-back").replace(
        '"{{ vars.target }}"', '"{{ steps.a.outputs.stdout }}"'
    )
    write_plan(tmp_path / "plan.yaml", from_output)
    dry = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", env=env)
    assert dry.returncode == 0, dry.stderr
    handler_part = dry.stdout.partition("then the rollback handler put-back:")[2]
    assert "depends on outputs of earlier steps; shown at run time" in handler_part
    assert "would put back" not in handler_part
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.json"))


def test_plugin_step_type_from_an_entry_point_works_like_a_builtin(tmp_path: Path) -> None:
    env = _plugin(
        tmp_path,
        "stampsteps",
        '''
        from typing import Any

        from migration.steps.base import Step, StepContext, StepParams


        class Stamp(Step["Stamp.Params"]):
            """Write a stamp file (a test plugin)."""

            name = "stamp"

            class Params(StepParams):
                path: str
                text: str

            def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
                ctx.path(ctx.params.path).write_text(ctx.params.text)
                return {"chars": len(ctx.params.text)}

            def preview(self, ctx: StepContext[Any]) -> str:
                return f"would stamp {ctx.params.path}"
        ''',
        "migration.steps",
        "stamp = stampsteps:Stamp",
    )
    listed = migration(tmp_path, "steps", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "stamp: Write a stamp file (a test plugin)." in listed.stdout
    assert "* path (string)" in listed.stdout

    write_plan(
        tmp_path / "plan.yaml",
        """
        name: plugin-demo
        vars: {word: hello}
        phases:
          - id: only
            steps:
              - {id: stamp-it, uses: stamp, with: {path: stamp.txt, text: "{{ vars.word }} world"}}
            checkpoint:
              - that: "steps['stamp-it'].outputs.chars == 11"
        """,
    )
    bad = write_plan(
        tmp_path / "bad.yaml",
        """
        name: plugin-demo
        phases:
          - id: only
            steps:
              - {id: stamp-it, uses: stamp, with: {path: stamp.txt}}
        """,
    )
    invalid = migration(tmp_path, "validate", bad.name, env=env)
    assert invalid.returncode == 2
    assert invalid.stderr == "error: bad.yaml:5:37: phases[0].steps[0].with.text: field required\n"

    dry = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would stamp stamp.txt" in dry.stdout

    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stamp.txt").read_text() == "hello world"
    assert step_states(load_state(tmp_path / "state", "plugin-demo"))["stamp-it"]["outputs"] == {"chars": 11}
