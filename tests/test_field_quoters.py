"""Each ``with:`` field is quoted by its own quoter: shell, SQL string literal, or none.

A step type declares ``field_quoters(raw_with)``; a plugin that only overrides the
older ``quoted_fields`` gets those fields shell-quoted, as before.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_no_traceback, cli_env, migration, write_plan

from migration.plan import templates
from migration.steps import Step, StepParams
from migration.steps.base import Quoter
from migration.steps.process import ProcessStart
from migration.steps.shell import Shell

NAME = "O'Brien"
CONTEXT: dict[str, Any] = {"vars": {"name": NAME, "n": 3}, "env": {}, "steps": {}, "run": {}}


class SqlStep(Step[Any]):
    """Runs SQL: ``sql`` is a query whose values are SQL literals, ``label`` plain text."""

    name = "test.sql"

    class Params(StepParams):
        sql: str
        label: str = ""
        shell_line: str = ""

    @classmethod
    def field_quoters(cls, raw_with: dict[str, Any]) -> dict[str, Quoter]:
        return {"sql": Quoter.SQL_LITERAL, "shell_line": Quoter.SHELL}


class LegacyShellStep(Step[Any]):
    """A plugin written before field_quoters: it names its shell-quoted fields."""

    name = "test.legacy"

    @classmethod
    def quoted_fields(cls, raw_with: dict[str, Any]) -> set[str]:
        return {"command"}


def _render(step_type: type[Step[Any]], with_: dict[str, Any]) -> dict[str, Any]:
    return templates.render_with(with_, CONTEXT, step_type.field_quoters(with_))


def test_an_sql_field_renders_a_value_as_a_standard_sql_string_literal() -> None:
    rendered = _render(SqlStep, {"sql": "SELECT * FROM people WHERE name = {{ vars.name }}"})
    assert rendered == {"sql": "SELECT * FROM people WHERE name = 'O''Brien'"}


def test_each_field_gets_its_own_quoter() -> None:
    with_ = {
        "sql": "SELECT {{ vars.name }}",
        "label": "{{ vars.name }}",
        "shell_line": "echo {{ vars.name }}",
        "count": "{{ vars.n }}",
    }
    assert _render(SqlStep, with_) == {
        "sql": "SELECT 'O''Brien'",
        "label": NAME,
        "shell_line": "echo 'O'\"'\"'Brien'",
        "count": 3,  # not quoted: a lone expression keeps its type
    }


def test_an_sql_literal_quotes_every_value_as_text() -> None:
    assert templates.render_string("LIMIT {{ vars.n }}", CONTEXT, Quoter.SQL_LITERAL) == "LIMIT '3'"
    assert templates.render_string("{{ vars.n }}", CONTEXT, Quoter.SQL_LITERAL) == "'3'"
    assert templates.render_string("x = {{ 'a\\\\b' }}", CONTEXT, "sql_literal") == "x = 'a\\b'"


def test_an_sql_literal_refuses_a_nul_character() -> None:
    with pytest.raises(templates.TemplateError, match="cannot hold a NUL character"):
        templates.render_string(
            "SELECT {{ vars.bad }}", {**CONTEXT, "vars": {"bad": "a\x00b"}}, "sql_literal"
        )


def test_shell_quoting_is_unchanged() -> None:
    assert Shell.field_quoters({"command": "echo {{ x }}", "shell": True}) == {"command": Quoter.SHELL}
    assert Shell.field_quoters({"command": ["echo", "{{ x }}"]}) == {}
    assert Shell.quoted_fields({"command": "echo {{ x }}", "shell": True}) == {"command"}
    assert ProcessStart.quoted_fields({"command": "x", "shell": True}) == {"command"}
    rendered = _render(Shell, {"command": "echo {{ vars.name }}", "shell": True})
    assert rendered == {"command": "echo 'O'\"'\"'Brien'", "shell": True}
    # The older flag still means the shell.
    assert templates.render_value("echo {{ vars.name }}", CONTEXT, quote=True) == "echo 'O'\"'\"'Brien'"
    assert templates.render_string("echo {{ vars.name }}", CONTEXT, True) == "echo 'O'\"'\"'Brien'"


def test_a_plugin_that_only_names_quoted_fields_gets_them_shell_quoted() -> None:
    assert LegacyShellStep.field_quoters({}) == {"command": Quoter.SHELL}
    assert _render(LegacyShellStep, {"command": "rm {{ vars.name }}"}) == {"command": "rm 'O'\"'\"'Brien'"}
    assert SqlStep.quoted_fields({}) == {"shell_line"}
    assert Step.field_quoters({}) == {} and Step.quoted_fields({}) == set()


def test_an_unknown_quoter_is_a_template_error() -> None:
    with pytest.raises(
        templates.TemplateError, match=r"unknown quoter 'xml' for field 'q' \(known: shell, sql"
    ):
        templates.render_with({"q": "{{ vars.n }}"}, CONTEXT, {"q": "xml"})


@pytest.mark.parametrize(
    ("template", "where"),
    [
        ("SELECT '{{ vars.name }}'", "'...'"),
        ("SELECT 'it''s {{ vars.name }}'", "'...'"),
        ("SELECT E'it\\'s {{ vars.name }}'", "'...'"),
        ('SELECT * FROM "{{ vars.table }}"', '"..."'),
        ("SELECT $${{ vars.name }}$$", "$$...$$"),
        ("SELECT $body$ x {{ vars.name }} $body$", "$body$...$body$"),
        ("SELECT 1 -- {{ vars.name }}\n", "an SQL comment (-- ...)"),
        ("SELECT 1 /* {{ vars.name }} */", "an SQL comment (/* ... */)"),
        ("SELECT '{% if true %}x{% endif %}'", "'...'"),
    ],
)
def test_an_sql_template_inside_quotes_or_a_comment_is_refused(template: str, where: str) -> None:
    with pytest.raises(templates.TemplateError, match="template inside") as info:
        templates.check_sql_template(template)
    assert where in str(info.value)
    assert "quoted as an SQL string literal automatically" in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "SELECT {{ vars.name }}",
        "SELECT 'it''s', {{ vars.name }}, \"col\" FROM t WHERE a = $1",
        "SELECT {{ vars.get('x', \"it's\") }} -- a comment\nFROM t",
        "SELECT 'a' || {{ vars.name }} || 'b' /* c */",
        "SELECT {{ vars.name | replace(\"'\", '') }}, price$ FROM t",
    ],
)
def test_an_sql_template_outside_quotes_is_accepted(template: str) -> None:
    templates.check_sql_template(template)


@pytest.mark.parametrize(
    "template",
    ["echo '{{ x }}'", 'echo "{{ x }}"', 'echo "a $(b) {{ x }}"'],
)
def test_a_shell_template_inside_quotes_is_still_refused(template: str) -> None:
    with pytest.raises(templates.TemplateError, match="it is shell-quoted automatically"):
        templates.check_shell_template(template)
    with pytest.raises(templates.TemplateError, match="it is shell-quoted automatically"):
        templates.render_with({"command": template}, CONTEXT, {"command": Quoter.SHELL})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("echo hi # {{ x }}", "template inside a shell comment"),
        ("echo hi\n  # say {{ x }}\necho bye", "template inside a shell comment"),
        ("cat <<EOF\n{{ x }}\nEOF", r"template inside a here-document \(<<EOF\)"),
        ("cat <<-'END' > f\n\tline\n\t{{ x }}\n\tEND", r"template inside a here-document \(<<END\)"),
        ("cat <<A <<B\na\nA\n{{ x }}\nB", r"template inside a here-document \(<<B\)"),
    ],
)
def test_a_shell_template_in_a_comment_or_here_document_is_refused(template: str, message: str) -> None:
    """There a quoted value could still run: ``x = 'a\\nrm -rf / #'`` ends the comment."""
    with pytest.raises(templates.TemplateError, match=message):
        templates.check_shell_template(template)


@pytest.mark.parametrize(
    "template",
    [
        "echo {{ x }} # a note",
        "echo a#{{ x }} ${#x} $# {{ y }}",
        "cat <<EOF\nstatic ' text\nEOF\necho {{ x }}",
        "cat <<< {{ x }}",
        "echo {{ \"it's\" }} {{ x }} {{ x | default('#') }}",
        "echo \\' {{ x }}",
    ],
)
def test_a_shell_template_outside_quotes_comments_and_here_documents_is_accepted(template: str) -> None:
    templates.check_shell_template(template)


# -- end to end: a plugin step installed through the migration.steps entry point ------------

PLUGIN = '''
from typing import Any

from migration.steps import Step, StepContext, StepParams
from migration.steps.base import Quoter


class Sql(Step["Sql.Params"]):
    """Pretends to run SQL: returns the query it would send."""

    class Params(StepParams):
        sql: str

    @classmethod
    def field_quoters(cls, raw_with: dict[str, Any]) -> dict[str, Quoter]:
        return {"sql": Quoter.SQL_LITERAL}

    def preview(self, ctx: StepContext["Sql.Params"]) -> str:
        return "would send " + ctx.params.sql

    def run(self, ctx: StepContext["Sql.Params"]) -> dict[str, Any]:
        return {"sent": ctx.params.sql}
'''


def _install_plugin(root: Path) -> dict[str, str]:
    info = root / "sqlplug-0.1.dist-info"
    info.mkdir(parents=True)
    (root / "sqlplug.py").write_text(textwrap.dedent(PLUGIN))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sqlplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[migration.steps]\ntest.sql = sqlplug:Sql\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{root}:{env['PYTHONPATH']}"
    return env


def _sql_plan(sql: str) -> str:
    return f"""
        name: sql-quoting
        vars:
          name: "O'Brien"
        phases:
          - id: only
            steps:
              - id: query
                uses: test.sql
                with:
                  sql: {json.dumps(sql)}
        """


def test_a_plugin_sql_field_runs_with_the_value_as_an_sql_literal(tmp_path: Path) -> None:
    env = _install_plugin(tmp_path / "site")
    write_plan(tmp_path / "plan.yaml", _sql_plan("DELETE FROM people WHERE name = {{ vars.name }}"))
    dry = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "DELETE FROM people WHERE name = 'O''Brien'" in dry.stdout
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=env)
    assert result.returncode == 0, result.stderr
    (state_file,) = (tmp_path / "state" / "sql-quoting").glob("*Z*.json")
    step = json.loads(state_file.read_text())["phases"][0]["steps"][0]
    assert step["outputs"]["sent"] == "DELETE FROM people WHERE name = 'O''Brien'"


def test_a_plugin_sql_template_inside_quotes_is_refused_at_its_line(tmp_path: Path) -> None:
    env = _install_plugin(tmp_path / "site")
    write_plan(tmp_path / "plan.yaml", _sql_plan("DELETE FROM people WHERE name = '{{ vars.name }}'"))
    for command in (["validate"], ["run", "--state-dir", "state"]):
        result = migration(tmp_path, *command, "plan.yaml", env=env)
        assert_no_traceback(result)
        assert result.returncode == 2
        assert result.stderr == (
            "error: plan.yaml:10:16: phases[0].steps[0].with.sql: template inside '...' in an SQL field: "
            "write {{ value }} without quotes; it is quoted as an SQL string literal automatically\n"
        )
    assert not (tmp_path / "state").exists()
