"""Step types declare their outputs; the loader checks ``steps.<id>.outputs.<name>`` against them.

What a wrong name gives (the line, the exit code) is pinned by tests/bad_plans; here:
what the declarations are, that a real run returns only declared outputs, and what
the check leaves alone (undeclared step types, dict methods, computed keys).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import assert_no_traceback, load_state, migration, write_plan

from migration.errors import PlanError
from migration.plan.loader import load_plan
from migration.plan.template_check import output_references
from migration.plan.templates import parse, parse_expression
from migration.steps import Step, StepContext, StepParams, register, step_types, unregister
from migration.steps.registry import BUILTIN_MODULES


def test_every_built_in_step_type_but_python_declares_its_outputs() -> None:
    undeclared = {name for name, cls in step_types().items() if cls.declared_outputs() is None}
    assert undeclared == {"python"}  # its outputs are whatever its function returns
    for name, cls in step_types().items():
        for output, description in (cls.declared_outputs() or {}).items():
            assert output.isidentifier() and description.strip(), (name, output)


def test_only_a_class_own_declaration_counts() -> None:
    from migration.steps.shell import Shell

    class LoudShell(Shell):  # returns more than Shell, declares nothing: not checked
        pass

    assert Shell.declared_outputs() is not None
    assert LoudShell.declared_outputs() is None


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("steps.a.outputs.b", {("a", "b")}),
        ("steps['a-b'].outputs['c'] > 0", {("a-b", "c")}),
        ("steps.a.outputs.get('b', 0) and steps.c.outputs.d.e", {("a", "b"), ("c", "d")}),
        ("steps.a.outputs.items() | list", set()),
        ("steps.a.outputs[vars.k]", set()),
        ("steps.a.status == 'succeeded'", set()),
        ("steps.a.outputs | length", set()),
    ],
)
def test_output_references_are_the_literal_names(source: str, found: set[tuple[str, str]]) -> None:
    assert output_references(parse_expression(source)) == found
    assert output_references(parse("{{ " + source + " }}")) == found


class Undeclared(Step["Undeclared.Params"]):
    """A plugin written before outputs were declared.

    Example:
        ```yaml
        - {id: x, uses: test.undeclared}
        ```
    """

    name = "test.undeclared"

    class Params(StepParams):
        pass

    def run(self, ctx: StepContext[Undeclared.Params]) -> dict[str, Any]:
        return {"anything": 1}


class Declared(Step["Declared.Params"]):
    """A plugin that declares its outputs.

    Example:
        ```yaml
        - {id: x, uses: test.declared}
        ```
    """

    name = "test.declared"
    outputs: ClassVar[dict[str, str]] = {"rows": "rows copied"}

    class Params(StepParams):
        pass

    def run(self, ctx: StepContext[Declared.Params]) -> dict[str, Any]:
        return {"rows": 1}


@pytest.fixture
def plugin_types() -> Iterator[None]:
    register(Undeclared)
    register(Declared)
    yield
    unregister(Undeclared.name)
    unregister(Declared.name)


PLAN = """
name: outputs-ok
phases:
  - id: one
    steps:
      - {{id: u, uses: test.undeclared}}
      - {{id: d, uses: test.declared}}
      - id: call
        uses: python
        with: {{function: "os.path:join", params: {{}}}}
      - id: probe
        uses: shell
        with: {{command: [echo, "{{{{ steps.u.outputs.whatever }}}}"]}}
        when: "{condition}"
    checkpoint:
      - that: "steps.call.outputs.result and steps.d.outputs.rows > 0"
"""


@pytest.mark.usefixtures("plugin_types")
def test_undeclared_outputs_dict_methods_and_status_are_not_checked(tmp_path: Path) -> None:
    condition = (
        "steps.d.outputs.get('rows') and steps.d.outputs.items() | list "
        "and steps.d.status == 'succeeded' and steps.d.outputs[vars.k | default('rows')]"
    )
    plan = write_plan(tmp_path / "plan.yaml", PLAN.format(condition=condition))
    load_plan(plan, {"k": "rows"})


@pytest.mark.usefixtures("plugin_types")
def test_a_plugin_that_declares_outputs_is_checked(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", PLAN.format(condition="steps.d.outputs.row == 1"))
    wanted = r"step 'd' \(test.declared\) has no output 'row'; did you mean 'rows'\?"
    with pytest.raises(PlanError, match=wanted):
        load_plan(plan)


def test_a_templated_value_of_unknown_type_is_left_to_the_run(tmp_path: Path) -> None:
    # {{ vars.n }} may be anything (a --var can change it): the run checks it, rendered.
    plan = write_plan(
        tmp_path / "plan.yaml",
        """
        name: unknown-type
        vars: {n: soon, names: "a,b"}
        phases:
          - id: one
            steps:
              - {id: nap, uses: sleep, with: {seconds: "{{ vars.n }}"}}
              - id: say
                uses: shell
                with: {command: "echo {{ vars.names }} {{ vars.n | int }}", shell: true}
              - {id: go, uses: confirm, with: {message: "{{ vars.n | int }} of {{ vars.names }}"}}
        """,
    )
    load_plan(plan)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_real_run_returns_only_declared_outputs(tmp_path: Path, mongo_url: str, mongo_db: Any) -> None:
    """Every built-in step type with a declaration, run for real: its outputs are declared ones."""
    mongo_db.orders.insert_many([{"_id": i, "status": "PAID" if i % 2 else "OPEN"} for i in range(1, 8)])
    port = _free_port()
    write_plan(
        tmp_path / "plan.yaml",
        f"""
        name: every-output
        vars: {{db: "{mongo_url}"}}
        phases:
          - id: all
            steps:
              - {{id: require, uses: require, with: {{commands: [sh], free_disk: {{path: ., bytes: 1}}}}}}
              - {{id: preflight, uses: mongo.preflight, with: {{uri: "{{{{ vars.db }}}}", backup_path: .}}}}
              - {{id: backup, uses: mongo.backup, with: {{uri: "{{{{ vars.db }}}}", out: backups}}}}
              - id: transform
                uses: mongo.transform
                with:
                  uri: "{{{{ vars.db }}}}"
                  collection: orders
                  operations: [{{set: {{schema: 2}}}}]
              - id: validate
                uses: mongo.validate
                with:
                  uri: "{{{{ vars.db }}}}"
                  checks:
                    - {{name: orders, type: count, collection: orders, min: 7}}
                    - {{name: some, type: sample, collection: orders, size: 1}}
              - id: restore
                uses: mongo.restore
                with: {{uri: "{{{{ vars.db }}}}", from: "{{{{ steps.backup.outputs.path }}}}", drop: true}}
              - {{id: shell, uses: shell, with: {{command: [echo, hi]}}}}
              - {{id: nap, uses: sleep, with: {{seconds: 0}}}}
              - {{id: go, uses: confirm, with: {{message: "go?"}}}}
              - {{id: tell, uses: notify, with: {{command: [sh, -c, "true"], text: done}}}}
              - id: app
                uses: process.start
                with:
                  command: ["{sys.executable}", -m, http.server, "{port}", --bind, 127.0.0.1]
                  ready_url: "http://127.0.0.1:{port}/"
              - {{id: up, uses: http.check, with: {{url: "http://127.0.0.1:{port}/", deadline: 20}}}}
              - {{id: stop, uses: process.stop, with: {{id: app}}}}
            checkpoint:
              - that: "steps.validate.outputs.failed == 0 and steps.transform.outputs.migrated == 7"
              - that: "steps.restore.outputs.total == steps.backup.outputs.total_records"
        """,
    )
    result = migration(tmp_path, "run", "plan.yaml", "--yes", "--state-dir", "state", timeout=180)
    assert_no_traceback(result)
    assert result.returncode == 0, result.stderr
    state = load_state(tmp_path / "state", "every-output")
    seen = set()
    for phase in state["phases"]:
        for step in phase["steps"]:
            uses = _uses_in_plan(tmp_path / "plan.yaml", step["id"])
            declared = step_types()[uses].declared_outputs()
            assert declared is not None, uses
            assert step["outputs"], step["id"]
            assert set(step["outputs"]) <= set(declared), (uses, set(step["outputs"]) - set(declared))
            seen.add(uses)
    assert seen == set(BUILTIN_MODULES) - {"python"}


def _uses_in_plan(path: Path, step_id: str) -> str:
    plan = load_plan(path).plan
    return next(s.uses for s in plan.all_steps() if s.id == step_id)


def test_migration_steps_lists_each_step_types_outputs(tmp_path: Path) -> None:
    result = migration(tmp_path, "steps")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    validate = text[text.index("mongo.validate: ") :]
    assert "\n  outputs: passed, failed, checks, report, sample_id\n" in validate
    python = text[text.index("python: ") :]
    assert "\n  outputs: not declared\n" in python
