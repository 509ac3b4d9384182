"""Security: secrets stay secret, templates stay in their sandbox, shell values stay values.

python -m pytest -q tests/reliability/test_security.py
"""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_no_traceback, cli_env, migration, migration_batch, write_plan

from migration.context import parse_var_overrides
from migration.demo.seed import seed

from .conftest import Context
from .harness import TALLY, Invocation, invoke
from .plans import drop_database

# '@' and ':' escaped in the URL: the password as the server sees it is "S3cret@Pw:42".
PASSWORD = "S3cret@Pw:42"
PASSWORD_IN_URL = "S3cret%40Pw%3A42"
SECRET_FORMS = [PASSWORD, PASSWORD_IN_URL, "S3cret", "Pw%3A42"]


def _with_credentials(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


@pytest.fixture
def secret_urls(context: Context) -> Iterator[tuple[str, str, str]]:
    """(a URL with a password the server accepts, one it refuses, the plain URL of that database)."""
    import pymongo

    server = context.mongo_server
    if not server.is_ferretdb:
        context.request.getfixturevalue("server_caps").skip_without("users")
    name = f"rel_secret_{uuid.uuid4().hex[:10]}"
    plain = server.database_url(name)
    seed(plain, 30)
    user = None
    if server.is_ferretdb:
        # FerretDB passes PLAIN credentials to PostgreSQL, which trusts local connections.
        good = _with_credentials(plain, "postgres", PASSWORD_IN_URL) + "?authMechanism=PLAIN"
        bad = _with_credentials(plain, "intruder", PASSWORD_IN_URL) + "?authMechanism=PLAIN"
    else:
        # MongoDB checks the SCRAM credentials of a user it knows, with or without --auth.
        user = f"rel_user_{uuid.uuid4().hex[:8]}"
        with pymongo.MongoClient(plain) as client:
            client[name].command("createUser", user, pwd=PASSWORD, roles=["readWrite"])
        good = _with_credentials(plain, user, PASSWORD_IN_URL) + f"?authSource={name}"
        bad = _with_credentials(plain, "intruder", PASSWORD_IN_URL) + f"?authSource={name}"
    try:
        yield good, bad, plain
    finally:
        if user is not None:
            with pymongo.MongoClient(plain) as client:
                client[name].command("dropUser", user)
        drop_database(plain)


EVERY_STEP_PLAN = """
name: secret-everywhere
on_failure: rollback
vars:
  db: "{{ env.SEC_DB_URL }}"
  bad_db: "{{ env.SEC_BAD_URL }}"
  web: "{{ env.SEC_WEB_URL }}"
rollback:
  - id: rb-restore
    uses: mongo.restore
    with: {uri: "{{ vars.db }}", from: "{{ steps.backup.outputs.path }}", drop: true}
  - {id: rb-echo, uses: shell, with: {command: [echo, "rolled back {{ vars.db }}"]}}
phases:
  - id: mongo
    steps:
      - {id: preflight, uses: mongo.preflight, with: {uri: "{{ vars.db }}", backup_path: backups}}
      - {id: backup, uses: mongo.backup, with: {uri: "{{ vars.db }}", out: backups, verify: restore}}
      - id: transform
        uses: mongo.transform
        with:
          uri: "{{ vars.db }}"
          collection: PropertyBankDetails
          function: "migration.recipes.bank_details:split_swift_bic_iban"
          log_dir: backups
      - id: validate
        uses: mongo.validate
        with:
          uri: "{{ vars.db }}"
          report_dir: backups
          checks:
            - {name: count, type: count, collection: PropertyBankDetails,
               equals: "{{ steps.backup.outputs.collections['PropertyBankDetails'] }}"}
            - {name: intact, type: collections_intact, manifest: "{{ steps.backup.outputs.path }}",
               except: [PropertyBankDetails]}
      - id: restore
        uses: mongo.restore
        with: {uri: "{{ vars.db }}", from: "{{ steps.backup.outputs.path }}", drop: true}
      - {id: refused, uses: mongo.preflight, continue_on_error: true, with: {uri: "{{ vars.bad_db }}"}}
  - id: general
    steps:
      - {id: argv, uses: shell, with: {command: [echo, "db is {{ vars.db }}"]}}
      - id: sh
        uses: shell
        with: {command: "echo {{ vars.db }}; echo \\"$SEC_DB_URL\\" >&2; env | grep SEC_", shell: true}
      - id: failing
        uses: shell
        continue_on_error: true
        with: {command: [sh, -c, "echo $SEC_DB_URL >&2; exit 3"]}
      - {id: py, uses: python, with: {function: "leaky:leak", params: {uri: "{{ vars.db }}"}}}
      - id: py-fails
        uses: python
        continue_on_error: true
        with: {function: "leaky:fail", params: {uri: "{{ vars.db }}"}}
      - {id: need, uses: require, with: {commands: [sh], env: [SEC_DB_URL]}}
      - {id: gate, uses: confirm, with: {message: "continue with {{ vars.db }}?"}}
      - id: web
        uses: http.check
        with: {url: "{{ vars.web }}/health", headers: {X-Database: "{{ vars.db }}"}}
      - id: tell
        uses: notify
        with: {text: "done on {{ vars.db }}", command: [sh, -c, "echo $MIGRATION_NOTIFY_TEXT"]}
      - id: app
        uses: process.start
        with: {command: [sh, -c, "exec sleep 30", app, "{{ vars.db }}"], settle: 0.2}
      - {id: app-stop, uses: process.stop, with: {id: app}}
      - {id: nap, uses: sleep, with: {seconds: 0}}
    checkpoint:
      - that: "vars.db != '' and steps.py.outputs.uri != vars.db"
        message: "the python step saw {{ vars.db }}"
"""

LEAKY = """
from migration.errors import StepError

def leak(uri):
    return {"uri": uri, "nested": {"list": [uri, {"again": uri}]}}


def chatty(uri):
    print("printed by the function:", uri)
    import sys
    print("and on stderr:", uri, file=sys.stderr)

def fail(uri):
    raise RuntimeError(f"could not use {uri}")
"""


def _every_text(root: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes().decode("utf-8", "replace")


def _assert_secret_free(where: str, text: str) -> None:
    for form in SECRET_FORMS:
        assert form not in text, (
            f"{form!r} found in {where}: ...{text[max(0, text.find(form) - 200) :][:400]}"
        )


@pytest.mark.mongo
def test_a_password_in_the_url_never_appears_anywhere(
    tmp_path: Path, secret_urls: tuple[str, str, str], http_base: str
) -> None:
    good, bad, _ = secret_urls
    write_plan(tmp_path / "plan.yaml", EVERY_STEP_PLAN)
    write_plan(tmp_path / "leaky.py", LEAKY)
    env = cli_env({"SEC_DB_URL": good, "SEC_BAD_URL": bad, "SEC_WEB_URL": http_base})
    base = ["--state-dir", "state", "--yes"]

    outputs = [
        migration(tmp_path, "validate", "plan.yaml", env=env),
        migration(tmp_path, "run", "plan.yaml", *base, "--dry-run", env=env, timeout=300),
        migration(tmp_path, "run", "plan.yaml", *base, "--log-format", "json", env=env, timeout=300),
    ]
    ran = outputs[-1]
    assert ran.returncode == 0, ran.stderr[-3000:]
    outputs.append(
        migration(
            tmp_path, "run", "plan.yaml", *base, "--fresh", "--log-format", "console", env=env, timeout=300
        )
    )
    assert outputs[-1].returncode == 0, outputs[-1].stderr[-3000:]
    outputs += migration_batch(
        [
            (tmp_path, ["status", "secret-everywhere", "--json", "--state-dir", "state"]),
            (tmp_path, ["report", "plan.yaml", "--state-dir", "state"]),
            (tmp_path, ["report", "plan.yaml", "--format", "html", "--state-dir", "state"]),
        ],
        env=env,
    )
    outputs.append(
        migration(tmp_path, "rollback", "plan.yaml", *base, "--log-format", "json", env=env, timeout=300)
    )
    assert outputs[-1].returncode == 0, outputs[-1].stderr[-3000:]

    # The secret was really used: the steps connected with it, the refused one said why.
    assert "***" in ran.stderr
    assert "refused the credentials" in ran.stderr or "refused" in ran.stderr
    checked = 0
    for result in outputs:
        # (The python step that fails logs its traceback on purpose: masked, as every log line.)
        _assert_secret_free(f"stdout of {result.args}", result.stdout)
        _assert_secret_free(f"stderr of {result.args}", result.stderr)
        checked += 2
    for path, text in _every_text(tmp_path):
        if path.name in ("leaky.py",):
            continue
        _assert_secret_free(str(path.relative_to(tmp_path)), text)
        checked += 1
    written = {p.name.split("-")[0] for p in (tmp_path / "backups").glob("*.json")}
    assert {"migration", "validation"} <= written, written
    TALLY["security: outputs and files checked for the password"] += checked


SANDBOX_PAYLOADS = [
    "cycler.__init__.__globals__.os.popen('touch pwned').read()",
    "lipsum.__globals__['os'].system('touch pwned')",
    "''.__class__.__mro__[1].__subclasses__()",
    "self._TemplateReference__context",
    "joiner.__init__.__globals__.os.system('touch pwned')",
    "namespace.__init__.__globals__",
    "''|attr('__class__')",
    "run.__class__.__init__.__globals__",
]


def test_templates_cannot_reach_python_internals_anywhere(tmp_path: Path) -> None:
    """In vars, with, when, checkpoints, descriptions of rollback steps: refused, never run."""
    calls = []
    for i, payload in enumerate(SANDBOX_PAYLOADS):
        for where in ("vars", "with", "when", "that", "rollback"):
            workdir = tmp_path / f"{where}-{i}"
            workdir.mkdir()
            write_plan(workdir / "plan.yaml", _sandbox_plan(where, payload))
            calls.append((workdir, ["run", "plan.yaml", "--state-dir", "state"]))
    results = migration_batch(calls)
    for (workdir, _), result in zip(calls, results, strict=True):
        TALLY["security: sandbox escapes tried"] += 1
        assert_no_traceback(result)
        assert not (workdir / "pwned").exists(), f"{workdir.name}: the template ran a command"
        # Refused up front (2), or (the reported bug) when the step, checkpoint or rollback comes.
        assert result.returncode in (1, 2, 3, 4), (workdir.name, result.stderr[-500:])
        last = result.stderr.strip().splitlines()[-1]
        assert any(word in last for word in ("sandbox", "unsafe", "undefined", "no attribute")), (
            workdir.name,
            last,
        )


def _sandbox_plan(where: str, payload: str) -> str:
    template = "{{ " + payload + " }}"
    quoted = '"' + template.replace('"', '\\"') + '"'
    expression = '"' + payload.replace('"', '\\"') + '"'
    vars_ = f"vars:\n  x: {quoted}\n" if where == "vars" else ""
    when = f", when: {expression}" if where == "when" else ""
    command = f"[echo, {quoted}]" if where == "with" else "[echo, ok]"
    checkpoint = f"    checkpoint:\n      - that: {expression}\n" if where == "that" else ""
    rollback = (
        f"rollback:\n  - {{id: undo, uses: shell, with: {{command: [echo, {quoted}]}}}}\n"
        if where == "rollback"
        else ""
    )
    failing = '      - {id: boom, uses: shell, with: {command: ["false"]}}\n' if where == "rollback" else ""
    return (
        f"name: sandbox\n{vars_}{rollback}phases:\n  - id: a\n    steps:\n"
        f"      - {{id: s, uses: shell{when}, with: {{command: {command}}}}}\n{failing}{checkpoint}"
    )


def test_values_given_with_var_or_env_are_data_not_templates(tmp_path: Path) -> None:
    payload = "{{ cycler.__init__.__globals__.os.popen('touch pwned').read() }}"
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: literal
        vars:
          from_env: "{{ env.LITERAL_VALUE }}"
          from_cli: default
        phases:
          - id: a
            steps:
              - {id: s, uses: shell, with: {command: [sh, -c, 'printf "%s|%s" "$1" "$2" > seen.txt', x,
                 "{{ vars.from_env }}", "{{ vars.from_cli }}"]}}
        """,
    )
    result = migration(
        tmp_path,
        "run",
        "plan.yaml",
        "--state-dir",
        "state",
        "--var",
        f"from_cli={payload}",
        env=cli_env({"LITERAL_VALUE": payload}),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "seen.txt").read_text() == f"{payload}|{payload}"
    assert not (tmp_path / "pwned").exists()


INJECTIONS = [
    "; touch injected",
    "&& touch injected",
    "| touch injected",
    "$(touch injected)",
    "`touch injected`",
    "${IFS}touch${IFS}injected",
    "x'; touch injected; echo '",
    'x"; touch injected; echo "',
    "\ntouch injected\n",
    "> injected",
    "$(touch injected)'\"`touch injected`",
    "\\'; touch injected #",
]


def _shell_plan(context: str, shell: str = "true") -> str:
    """Three sources of the value (a var, the environment, a step's output), in one quoting context."""
    wrap = {"bare": "{v}", "double": '\\"{v}\\"', "single": "'{v}'"}[context]
    lines = []
    for source, expr in (
        ("var", "vars.x"),
        ("env", "env.INJECT"),
        ("output", "steps.produce.outputs.stdout"),
    ):
        value = wrap.format(v="{{ " + expr + " }}")
        lines.append(
            f'      - {{id: use-{source}, uses: shell, with: {{command: "printf %s {value} > {source}.txt", '
            f"shell: {shell}}}}}"
        )
    return (
        "name: quoting\nvars:\n  x: placeholder\nphases:\n  - id: a\n    steps:\n"
        "      - {id: produce, uses: shell, with: {command: [printenv, INJECT]}}\n" + "\n".join(lines) + "\n"
    )


def _injection_calls(tmp_path: Path, context: str) -> list[tuple[Path, list[str]]]:
    calls = []
    for i, payload in enumerate(INJECTIONS):
        for shell in ("true", "/bin/bash"):
            workdir = tmp_path / f"{context}-{i}-{shell.strip('/').replace('/', '-')}"
            workdir.mkdir()
            write_plan(workdir / "plan.yaml", _shell_plan(context, shell))
            (workdir / "payload").write_text(payload)
            calls.append((workdir, ["run", "plan.yaml", "--state-dir", "state", "--var", f"x={payload}"]))
    return calls


def _check_injections(
    calls: list[tuple[Path, list[str]]], results: list[Invocation], refusal_ok: bool = False
) -> None:
    """Nothing injected, ever; each value arrives intact (or, if ``refusal_ok``, the plan is
    refused up front, exit 2, before anything ran: an equally safe answer)."""
    injected = [
        f"{workdir.name}: {(workdir / 'payload').read_text()!r}"
        for workdir, _ in calls
        if (workdir / "injected").exists()
    ]
    TALLY["security: shell injection attempts"] += 3 * len(calls)
    assert not injected, f"values ran as commands: {injected}"
    for (workdir, _), result in zip(calls, results, strict=True):
        payload = (workdir / "payload").read_text()
        if refusal_ok and result.code == 2:
            assert result.stderr.startswith("error: plan.yaml:") and result.stderr.count("\n") == 1
            assert not list(workdir.glob("*.txt")), f"{workdir.name}: refused, but after running steps"
            continue
        assert result.code == 0, (workdir.name, result.stderr[-1000:])
        for source in ("var", "env", "output"):
            seen = (workdir / f"{source}.txt").read_text()
            if source == "output":
                seen, expected = seen.strip("\n"), payload.strip("\n")
            elif source == "var":
                expected = str(parse_var_overrides([f"x={payload}"])["x"])  # --var values are YAML
            else:
                expected = payload
            assert seen == expected, (workdir.name, source, seen, expected)


def _run_injections(calls: list[tuple[Path, list[str]]]) -> list[Invocation]:
    """In this process (click's CliRunner): the shells the steps start are real ones."""
    return [
        invoke(workdir, *args, env={"INJECT": (workdir / "payload").read_text()}) for workdir, args in calls
    ]


def test_values_templated_into_shell_commands_cannot_inject(tmp_path: Path) -> None:
    calls = _injection_calls(tmp_path, "bare")
    _check_injections(calls, _run_injections(calls))


@pytest.mark.parametrize("context", ["double", "single"])
def test_values_templated_inside_quotes_in_shell_commands_cannot_inject(context: str, tmp_path: Path) -> None:
    calls = _injection_calls(tmp_path, context)
    _check_injections(calls, _run_injections(calls), refusal_ok=True)


def test_what_a_python_step_prints_is_masked_and_kept_off_stdout(tmp_path: Path) -> None:
    write_plan(tmp_path / "leaky.py", LEAKY)
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: chatty
        phases:
          - id: a
            steps:
              - id: py
                uses: python
                with: {function: "leaky:chatty", params: {uri: "{{ env.SEC_DB_URL }}"}}
        """,
    )
    url = f"mongodb://admin:{PASSWORD_IN_URL}@db.internal:27017/vnp"
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=cli_env({"SEC_DB_URL": url}))
    TALLY["security: outputs and files checked for the password"] += 2
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_secret_free("stderr", result.stderr)
    _assert_secret_free("stdout", result.stdout)
    assert result.stdout == "", f"a step wrote to stdout: {result.stdout[:300]!r}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.mongo
def test_state_files_are_private_whatever_the_umask(tmp_path: Path, mongo_url: str) -> None:
    """0600 files, 0700 directories under the state dir, even with a permissive umask."""
    seed(mongo_url, 10)
    write_plan(
        tmp_path / "plan.yaml",
        f"""
        name: private
        phases:
          - id: a
            steps:
              - {{id: backup, uses: mongo.backup, with: {{uri: "{mongo_url}", out: backups}}}}
              - {{id: fail-once, uses: python, continue_on_error: true, with: {{function: "nosuchmodule:f"}}}}
        """,
    )
    result = _run_with_umask(tmp_path, 0o000)
    assert result.returncode == 0, result.stderr[-2000:]
    state = tmp_path / "state"
    for path in [state, *state.rglob("*")]:
        want = 0o700 if path.is_dir() else 0o600
        assert _mode(path) == want, f"{path.relative_to(tmp_path)} is {oct(_mode(path))}"
    TALLY["security: state paths checked for 0600/0700"] += len(list(state.rglob("*"))) + 1


@pytest.mark.mongo
def test_backups_are_private(tmp_path: Path, mongo_url: str) -> None:
    seed(mongo_url, 10)
    write_plan(
        tmp_path / "plan.yaml",
        f"""
        name: private-backup
        phases:
          - id: a
            steps:
              - {{id: backup, uses: mongo.backup, with: {{uri: "{mongo_url}", out: backups, gzip: true}}}}
        """,
    )
    result = _run_with_umask(tmp_path, 0o022)
    assert result.returncode == 0, result.stderr[-2000:]
    backups = tmp_path / "backups"
    paths = [p for p in backups.rglob("*")]
    assert len(paths) >= 5
    wrong = [
        f"{p.relative_to(tmp_path)} {oct(_mode(p))}"
        for p in paths
        if _mode(p) != (0o700 if p.is_dir() else 0o600)
    ]
    assert not wrong, wrong


def _run_with_umask(workdir: Path, umask: int) -> Any:
    import os
    import subprocess
    import sys

    def set_umask() -> None:
        os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "migration.cli", "run", "plan.yaml", "--state-dir", "state"],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=set_umask,
    )
