"""Every bad plan in tests/bad_plans gives exactly its one expected line, exit 2, and runs nothing.

Each file's first line is ``# error: {file}:LINE:COL: PATH: MESSAGE``, the exact stderr
line (``{file}`` is the path as given on the command line). A second line
``# validate: warning`` marks a problem that ``validate`` only warns about (exit 0)
while ``run`` refuses it (a missing environment variable).

The ``validate`` and ``run`` calls share one interpreter (``helpers.migration_batch``:
the same entry point, exit codes and stderr) to keep the suite fast; a few plans
also go through a process of their own, exactly as users run it.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_no_traceback, cli_env, migration, migration_batch, write_plan

from migration.errors import PlanError
from migration.plan import limits, templates, yaml_positions

BAD_PLANS = Path(__file__).parent / "bad_plans"
FILES = sorted(p.name for p in BAD_PLANS.glob("*.yaml"))
UNSET = "MIGRATION_TEST_UNSET_DATABASE_URL"


@dataclass
class Outcome:
    workdir: Path
    expected: str
    validate_only_warns: bool
    validate: subprocess.CompletedProcess[str]
    run: subprocess.CompletedProcess[str]


def _expectations(name: str) -> tuple[str, bool]:
    header = (BAD_PLANS / name).read_text().splitlines()[:2]
    assert header and header[0].startswith("# error: "), f"{name}: first line must be '# error: ...'"
    return header[0][2:].replace("{file}", name), len(header) > 1 and header[1] == "# validate: warning"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """All bad plans checked at once, each in its own folder."""
    root = tmp_path_factory.mktemp("bad_plans")
    env = cli_env(drop=[UNSET])
    workdirs = {}
    for name in FILES:
        workdirs[name] = root / name.removesuffix(".yaml")
        workdirs[name].mkdir()
        shutil.copy(BAD_PLANS / name, workdirs[name] / name)
    runs = migration_batch([(workdirs[name], ["run", name, "--state-dir", "state"]) for name in FILES], env)
    validates = migration_batch([(workdirs[name], ["validate", name]) for name in FILES], env)
    return {
        name: Outcome(workdirs[name], *_expectations(name), validate, run)
        for name, validate, run in zip(FILES, validates, runs, strict=True)
    }


def test_there_are_enough_bad_plans() -> None:
    assert len(FILES) >= 12


@pytest.mark.parametrize("name", FILES)
def test_bad_plan_gives_its_one_line_and_exit_2(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    for result in (outcome.validate, outcome.run):
        assert_no_traceback(result)
        assert result.stdout == ""
    if outcome.validate_only_warns:
        warning = "warning: " + outcome.expected.removeprefix("error: ")
        assert outcome.validate.stderr == f"{warning}\n{name}: ok\n"
        assert outcome.validate.returncode == 0
    else:
        assert outcome.validate.stderr == outcome.expected + "\n"
        assert outcome.validate.returncode == 2
    assert outcome.run.stderr == outcome.expected + "\n"
    assert outcome.run.returncode == 2
    # Nothing ran and nothing was written: the state dir was not even created.
    assert sorted(p.name for p in outcome.workdir.iterdir()) == [name]


SEPARATE_PROCESS = ["yaml_syntax_error.yaml", "missing_with_field.yaml", "missing_env_var.yaml"]


@pytest.mark.parametrize("name", SEPARATE_PROCESS)
def test_bad_plan_in_a_process_of_its_own(tmp_path: Path, name: str) -> None:
    shutil.copy(BAD_PLANS / name, tmp_path / name)
    expected, only_warns = _expectations(name)
    env = cli_env(drop=[UNSET])
    validate = migration(tmp_path, "validate", name, env=env)
    run = migration(tmp_path, "run", name, "--state-dir", "state", env=env)
    assert (validate.returncode, run.returncode) == (0 if only_warns else 2, 2)
    assert run.stderr == expected + "\n"
    assert validate.stderr.splitlines()[0] == (
        "warning: " + expected.removeprefix("error: ") if only_warns else expected
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_env_variable_is_fine_once_set(tmp_path: Path) -> None:
    shutil.copy(BAD_PLANS / "missing_env_var.yaml", tmp_path / "plan.yaml")
    env = cli_env({UNSET: "mongodb://localhost:27017/vnp"})
    assert migration(tmp_path, "validate", "plan.yaml", env=env).stderr == "plan.yaml: ok\n"
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran.txt").exists()


def test_optional_env_lookups_are_not_required(tmp_path: Path) -> None:
    plan = """
        name: optional-env
        vars:
          a: "{{ env.get('UNSET', 'fallback') }}"
          b: "{{ env.UNSET | default('other') }}"
        phases:
          - id: only
            steps:
              - id: say
                uses: shell
                with: {command: "echo {{ vars.a }} {{ vars.b }} > said.txt", shell: true}
        """
    write_plan(tmp_path / "plan.yaml", plan.replace("UNSET", UNSET))
    env = cli_env(drop=[UNSET])
    assert migration(tmp_path, "validate", "plan.yaml", env=env).stderr == "plan.yaml: ok\n"
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "said.txt").read_text() == "fallback other\n"


# -- what can never render is refused up front; what can, is not ---------------------------


def test_templates_that_render_are_not_refused(tmp_path: Path) -> None:
    """Loops, set, macros, '_' keys of plain data, globals and filters all pass the static check."""
    plan = """
        name: valid-templates
        vars:
          names: [a, b, c]
          _private: hidden
          doc: {_id: 42, name: x}
          joined: >-
            {% for i in vars.names %}{{ loop.index }}{{ i }}{% if not loop.last %},{% endif %}{% endfor %}
          macro: "{% macro twice(x) %}{{ x }}{{ x }}{% endmacro %}{{ twice(vars.names[0]) }}"
          ns: >-
            {% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}
            {{- ns.n }}
          pairs: "{% for k, v in dict(a=1).items() %}{{ k }}={{ v }}{% endfor %}"
          private: "{{ vars._private }}-{{ vars.doc._id }}-{{ vars['doc']['_id'] }}"
          misc: "{{ vars.names | join('+') | upper }}/{{ '%s-%d' % ('n', 3) }}/{{ '{}!'.format('hi') }}"
          cycle: "{% set c = cycler('x', 'y') %}{{ c.next() }}{{ c.next() }}"
          join: "{% set j = joiner('/') %}{{ j() }}a{{ j() }}b"
          scoped: "{% with q = 2 %}{{ q * 3 }}{% endwith %}{{ 'ok' if vars.names is sequence else 'no' }}"
        phases:
          - id: only
            steps:
              - id: first
                uses: shell
                with: {command: [echo, hi]}
              - id: say
                uses: shell
                when: "steps.first.outputs.exit_code == 0 and vars.names | length == 3"
                with:
                  command: >-
                    printf '%s\\n' {{ vars.joined }} {{ vars.macro }} {{ vars.ns }} {{ vars.pairs }}
                    {{ vars.private }} {{ vars.misc }} {{ vars.cycle }} {{ vars.join }} {{ vars.scoped }}
                    > said.txt
                  shell: true
            checkpoint:
              - that: "steps.say.outputs.exit_code == 0 and run.id is defined"
        """
    write_plan(tmp_path / "plan.yaml", plan)
    validate = migration(tmp_path, "validate", "plan.yaml")
    assert validate.returncode == 0 and validate.stderr == "plan.yaml: ok\n", validate.stderr
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state")
    assert result.returncode == 0, result.stderr
    said = (tmp_path / "said.txt").read_text().splitlines()
    assert said == ["1a,2b,3c", "aa", "3", "a=1", "hidden-42-42", "A+B+C/n-3/hi!", "xy", "a/b", "6ok"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ ''.__class__ }}", "access to attribute '__class__' is unsafe"),
        ("{{ cycler.__init__.__globals__ }}", "access to attribute '__init__' is unsafe"),
        ("{{ self._TemplateReference__context }}", "'_TemplateReference__context' is unsafe"),
        ("{{ range._x }}", "access to attribute '_x' is unsafe"),
        ("{{ vars.a|attr('__class__') }}", "access to attribute '__class__' is unsafe"),
        ("{{ no_such_name }}", "undefined name 'no_such_name' (a template sees vars, env, steps, run)"),
        ("{{ var.a }}", "undefined name 'var'; did you mean 'vars'?"),
        ("{{ lipsum(3) }}", "undefined name 'lipsum'"),
        ("{{ vars.a | nope }}", "no filter named 'nope'"),
        ("{{ vars.a is nope }}", "no test named 'nope'"),
        ("{% include 'x' %}", "a template cannot include, import or extend another template"),
        ("{% for i in vars.a %}{% endfor %}{{ i }}{{ loop }}", None),
        ("{{ nope is defined }}{{ nope | default('x') }}{{ ''.__class__ is undefined }}", None),
        ("{{ nope.x is defined }}", "undefined name 'nope'"),
        ("{{ vars.a.__doc__ }}", "access to attribute '__doc__' is unsafe"),
        ("{{ cycler['__init__'] }}", "access to attribute '__init__' is unsafe"),
        ("{{ ''['_x'] }}", "access to attribute '_x' is unsafe"),
        # '_' keys of data, item access to a dunder key, names guarded anywhere: these render.
        ("{{ steps.a.outputs._meta__v }}{{ steps.a.outputs['_meta__v'] }}{{ vars.x['__doc__'] }}", None),
        ("{% if extra is defined %}{{ extra }}{% endif %}{{ foo is defined and foo }}", None),
    ],
)
def test_templates_that_can_never_render_are_refused(template: str, message: str | None) -> None:
    tree = templates.parse(template)
    if message is None:  # renders: loop variables outside the loop, guarded names
        templates.check_renderable(tree)
        return
    with pytest.raises(templates.TemplateError) as caught:
        templates.check_renderable(tree)
    assert message in str(caught.value)


def test_what_the_static_check_lets_through_renders() -> None:
    context = {"vars": {"d": {"_meta__v": 1, "__doc__": "doc"}}, "env": {}, "steps": {}, "run": {}}
    source = "{{ vars.d._meta__v }}-{{ vars.d['_meta__v'] }}-{{ vars.d['__doc__'] }}"
    guarded = "{% if extra is defined %}{{ extra }}{% endif %}{{ foo is defined and foo }}"
    for template in (source, guarded):
        templates.check_renderable(templates.parse(template))
    assert templates.render_string(source, context) == "1-1-doc"
    assert templates.render_string(guarded, context) == "False"
    assert templates.render_string(guarded, {**context, "extra": "e", "foo": "f"}) == "ef"


def test_outputs_not_known_in_a_dry_run_iterate_as_one_placeholder() -> None:
    context = {"steps": {"x": {"outputs": templates.Placeholder("steps.x.outputs")}}}
    cases = {
        "{{ steps.x.outputs.cols | join(' ') }}": "<steps.x.outputs.cols[*]>",
        "{% for c in steps.x.outputs.cols %}{{ c.name }};{% endfor %}": "<steps.x.outputs.cols[*].name>;",
        "{{ steps.x.outputs.cols | list | length }}": 1,
        "{{ steps.x.outputs._meta__v }}": "<steps.x.outputs['_meta__v']>",
    }
    for template, expected in cases.items():
        assert templates.render_string(template, context) == expected


def test_joining_an_endless_iterable_stops_at_the_limit() -> None:
    with pytest.raises(templates.LimitExceeded, match="joining would make"):
        limits.joined(" ", itertools.repeat("x"))


# -- bounds on what a template may compute ---------------------------------------------------

CONTEXT = {"vars": {"s": "ab", "l": [1, 2]}, "env": {}, "steps": {}, "run": {}}
# 1 million characters, but 9 million as text.
NESTED = "{% set s = 'x' * 1000000 %}{% set a = [s, s, s] %}{% set b = [a, a, a] %}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'a' * 400000000 }}", "repeating would make 400,000,000 characters"),
        ("{{ [0] * 10**9 }}", "repeating would make"),
        ("{{ 2 ** (10**9) }}", "an integer of more than"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "loop iterations",
        ),
        (
            "{% set ns = namespace(s='a' * 1000000) %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}",
            "a value of 16,000,000 characters",
        ),
        ("{{ 'x' | center(10**9) }}", "center would make"),
        ("{{ 'x'.ljust(10**9) }}", "str.ljust would make"),
        ("{{ '%999999999d' % 1 }}", "a format width would make"),
        ("{{ '{:>999999999}'.format(1) }}", "a format width would make"),
        ("{{ ('a' * 1000000) | replace('a', 'bb' * 50) }}", "replacing would make"),
        ("{% set s = 'a' * 1000000 %}{{ [s, s, s, s, s, s, s, s, s] | join }}", "joining would make"),
        ("{{ (1).to_bytes(10**9, 'big') }}", "int.to_bytes would make"),
        ("{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}", "the output would make"),
        # A list counts its items' text, not 8 bytes an item: str() of it makes all of that.
        ("{{ (['x' * 8000000] * 1000000) | length }}", "repeating would make 8,000,008,000,000"),
        ("{{ (['x' * 100000] * 1000) | string }}", "repeating would make"),
        ("{{ ([[0] * 1000] * 1000) | length }}", "repeating would make"),
        (NESTED + "{{ b | string }}", "string would make"),
        (NESTED + "{{ b | tojson }}", "tojson would make"),
        (NESTED + "{{ [b] | pprint }}", "pprint would make"),
        (NESTED + "{{ b | join(',') }}", "joining would make"),
        (NESTED + "{{ b | e }}", "e would make"),
        (NESTED + "{{ '%s' | format(b) }}", "format arguments would make"),
        (NESTED + "{{ b ~ '' }}", "a value of"),
        (NESTED + "{{ '%s' % (b,) }}", "formatting would make"),
        (NESTED + "{{ '{}'.format(b) }}", "formatting would make"),
        (NESTED + "{{ dict(k=b) }}", "the output would make"),
        (NESTED + "{{ b }}", "the output would make"),
        ("{{ (vars.s * 3000000, vars.s * 3000000) }}", "the value would make"),
        ("{% set l = [0] * 500000 %}{{ [[[[[[l]]]]]] | tojson(indent=64) }}", "tojson would make"),
    ],
)
def test_templates_that_would_exhaust_memory_or_cpu_are_refused(template: str, message: str) -> None:
    started = time.process_time()
    with pytest.raises(templates.TemplateError) as caught:
        templates.render_string(template, CONTEXT)
    assert "template refused" in str(caught.value) and message in str(caught.value)
    assert time.process_time() - started < 2


def test_an_expression_may_not_give_a_value_too_big_to_copy() -> None:
    started = time.process_time()
    with pytest.raises(templates.TemplateError, match="expression refused: the value would make"):
        templates.evaluate("(vars.s * 3000000, vars.s * 3000000)", CONTEXT)
    assert time.process_time() - started < 2


@pytest.mark.parametrize(
    "template",
    [
        "{{ ([0] * 1000000) | select('eq', 1) | list | length }}",
        "{{ ([0] * 1000000) | reject('ne', 0) | list | length }}",
        "{{ ([{'a': 1}] * 300000) | map(attribute='a') | list | length }}",
        "{{ ([{'a': 1}] * 300000) | selectattr('a') | list | length }}",
        "{{ ([{'a': 1}] * 300000) | groupby('a') | list | length }}",
        "{% for x in [[0] * 1000000] recursive %}{% if x %}{{ loop(x) }}{% endif %}{% endfor %}",
    ],
)
def test_per_item_work_of_filters_and_recursive_loops_counts_steps(
    monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    monkeypatch.setattr(limits, "MAX_STEPS", 100_000)
    started = time.process_time()
    with pytest.raises(templates.TemplateError, match="loop iterations, calls and operations"):
        templates.render_string(template, CONTEXT)
    assert time.process_time() - started < 2


def test_the_cpu_limit_is_checked_between_any_two_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_CPU_SECONDS", 0.05)
    started = time.process_time()
    with pytest.raises(templates.TemplateError, match=r"more than 0\.05 s of CPU time"):
        templates.render_string("{{ ('x' * 8000000) | select('eq', 'y') | list | length }}", CONTEXT)
    assert time.process_time() - started < 2


def test_a_missing_value_in_an_expression_is_a_template_error() -> None:
    for expression in ("vars.nope", "[vars.nope]", "{'k': vars.l.nope}"):
        with pytest.raises(templates.TemplateError, match="nope"):
            templates.evaluate(expression, CONTEXT)
    assert templates.truthy(templates.evaluate("vars.s == 'ab' and vars.nope is not defined", CONTEXT))


# -- the fast YAML loader gives exactly what the pure-Python one gives --------------------------

_YAML_BITS = [
    "?",
    ":",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&x",
    "*x",
    "!!str",
    "|",
    ">",
    "'",
    '"',
    "#",
    " ",
    "\n",
    "\n  ",
    ": ",
    "? ",
    "- ",
    "~",
    "{}",
    "[]",
    "é",
    "|#",
    "!!int",
    "...",
    "---\n",
]


def _parsed(text: str) -> tuple[Any, ...]:
    try:
        raw, positions = yaml_positions.parse_yaml(text, "plan.yaml")
    except PlanError as exc:
        return ("error", str(exc))
    return (
        "ok",
        repr(raw),
        sorted(positions.values.items(), key=repr),
        sorted(positions.keys.items(), key=repr),
    )


@pytest.mark.skipif(yaml_positions._FAST_LOADER is None, reason="PyYAML without libyaml")
def test_the_fast_yaml_loader_gives_what_the_python_loader_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [(BAD_PLANS / name).read_text() for name in FILES]
    sources += [p.read_text() for p in sorted((BAD_PLANS.parent.parent / "plans").glob("*.yaml"))]
    texts = [*sources, "a: {x: }\n", "a: [x: ]\n", "a: {b: c?d}\n", "a: [!!str x,y]\n", "a: 1\n? "]
    rng = random.Random(20241125)
    for _ in range(400):
        text = rng.choice(sources)
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(_YAML_BITS) + text[at + rng.choice([0, 0, 1, 2]) :]
        texts.append(text)
    fast = [_parsed(text) for text in texts]
    monkeypatch.setattr(yaml_positions, "_FAST_LOADER", None)
    slow = [_parsed(text) for text in texts]
    for text, one, other in zip(texts, fast, slow, strict=True):
        assert one == other, text
