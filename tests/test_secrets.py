"""Secrets never reach a file under the state directory or the terminal; state is private."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import assert_no_traceback, cli_env, load_state, migration, step_states, write_plan

from migration.secrets import Redactor

DB_PASSWORD = "S3cretDbPassw0rd"
VAR_PASSWORD = "V4rOnlyPassw0rd"
API_TOKEN = "tok-0123456789abcdef"
VAR_SECRET = "only-on-the-command-line"
BASIC_AUTH = "c2VjcmV0OnNlY3JldA=="
SECRETS = [DB_PASSWORD, VAR_PASSWORD, API_TOKEN, BASIC_AUTH, VAR_SECRET]


class _EchoAuth(BaseHTTPRequestHandler):
    """Answers with the Authorization header it got: a server that leaks it back."""

    seen: list[str] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        type(self).seen.append(auth)
        body = json.dumps({"ok": True, "you_sent": auth}).encode()
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _EchoAuth)
    _EchoAuth.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


PLAN = """
name: secrets-demo
vars:
  db: "{{ env.DATABASE_URL }}"
  other_db: mongodb://nobody@localhost/x
  base: "@SERVER@"
  admin_password: set-with-var
phases:
  - id: talk
    steps:
      - id: echo-secrets
        uses: shell
        with:
          command: >-
            echo token="$API_TOKEN" db={{ vars.db }} other={{ vars.other_db }};
            echo to stderr: "$API_TOKEN" {{ vars.db }} >&2;
            echo admin {{ vars.admin_password }}
          shell: true
      - id: leak-and-fail
        uses: shell
        continue_on_error: true
        with:
          command: [sh, -c, "echo failing with $API_TOKEN and $DB >&2; exit 9"]
          env: {DB: "{{ vars.db }}"}
      - id: api-ok
        uses: http.check
        with:
          url: "{{ vars.base }}/ok"
          headers: {Authorization: "Bearer {{ env.API_TOKEN }}"}
          expect_json: {ok: true}
      - id: api-basic
        uses: http.check
        continue_on_error: true
        with:
          url: "{{ vars.base }}/broken"
          headers: {Authorization: "Basic @BASIC@"}
    checkpoint:
      - that: "steps['echo-secrets'].outputs.exit_code == 0"
"""


def _every_file(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())


def test_secrets_never_reach_state_or_output(tmp_path: Path, server: str) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN.replace("@SERVER@", server).replace("@BASIC@", BASIC_AUTH))
    env = cli_env(
        {
            "DATABASE_URL": f"mongodb://admin:{DB_PASSWORD}@127.0.0.1:9/vnp?authSource=admin",
            "API_TOKEN": API_TOKEN,
        }
    )
    other = f"other_db=mongodb://ops:{VAR_PASSWORD}@db.internal:27017/vnp"
    args = ["--state-dir", "state", "--var", other, "--var", f"admin_password={VAR_SECRET}"]

    outputs = [
        migration(tmp_path, "run", "plan.yaml", "--dry-run", *args, env=env),
        migration(tmp_path, "run", "plan.yaml", *args, "--log-format", "json", env=env),
        migration(tmp_path, "run", "plan.yaml", *args, "--fresh", "--log-format", "console", env=env),
    ]
    for result in outputs[1:]:
        assert result.returncode == 0, result.stderr
    for command in (["status", "secrets-demo", "--json"], ["report", "secrets-demo"]):
        outputs.append(migration(tmp_path, *command, "--state-dir", "state", env=env))
    outputs.append(migration(tmp_path, "report", "secrets-demo", "--format", "html", "--state-dir", "state"))

    # The secrets really went through: the server saw both headers.
    assert f"Bearer {API_TOKEN}" in _EchoAuth.seen
    assert f"Basic {BASIC_AUTH}" in _EchoAuth.seen
    for result in outputs:
        assert_no_traceback(result)
        for secret in SECRETS:
            assert secret not in result.stdout, f"{secret} in stdout of {result.args}"
            assert secret not in result.stderr, f"{secret} in stderr of {result.args}"
    files = list(_every_file(tmp_path / "state"))
    assert any(p.name.endswith(".events.jsonl") for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {path}"

    # What was captured is still there, masked.
    steps = step_states(load_state(tmp_path / "state", "secrets-demo"))
    assert steps["echo-secrets"]["outputs"]["stdout"] == (
        "token=*** db=mongodb://admin:***@127.0.0.1:9/vnp?authSource=admin"
        " other=mongodb://ops:***@db.internal:27017/vnp\nadmin ***"
    )
    assert steps["echo-secrets"]["outputs"]["stderr"] == (
        "to stderr: *** mongodb://admin:***@127.0.0.1:9/vnp?authSource=admin"
    )
    assert steps["leak-and-fail"]["status"] == "failed"
    assert "failing with *** and mongodb://admin:***@" in steps["leak-and-fail"]["error"]
    assert steps["api-ok"]["status"] == "succeeded"
    assert steps["api-basic"]["status"] == "failed"
    assert "***" in outputs[0].stdout  # the dry run shows the masked URL


def test_state_is_private(tmp_path: Path) -> None:
    write_plan(
        tmp_path / "plan.yaml",
        """
        name: private-demo
        phases:
          - id: only
            steps:
              - {id: hello, uses: shell, with: {command: [echo, hi]}}
        """,
    )
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json")
    assert result.returncode == 0, result.stderr

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "private-demo") == 0o700
    files = list(_every_file(tmp_path / "state"))
    assert {p.name for p in files} >= {"lock", "current"}
    assert {p.suffix for p in files} >= {".json", ".jsonl"}
    for path in files:
        assert mode(path) == 0o600, f"{path} is {oct(mode(path))}"


BEARER = "eyJhbGciOiJub25lIn0.bearer-only-in-a-var"

BEARER_PLAN = """
name: bearer-demo
vars:
  base: "@SERVER@"
  bearer: set-with-var
phases:
  - id: call
    steps:
      - id: curl-like
        uses: shell
        continue_on_error: true
        with:
          command:
            - sh
            - -c
            - >-
              echo "GET /ok Authorization: Bearer $T";
              echo "token_type=Bearer $T" >&2; exit 3
          env: {T: "{{ vars.bearer }}"}
      - id: api
        uses: http.check
        with:
          url: "{{ vars.base }}/ok"
          headers: {Authorization: "Bearer {{ vars.bearer }}"}
    checkpoint:
      - that: "steps.api.outputs.status == 200"
"""


def test_bearer_tokens_are_masked_in_logs_state_events_and_reports(tmp_path: Path, server: str) -> None:
    # The token comes from --var and travels under a name (T) that does not look
    # secret, and the shell step runs before the http.check step teaches the
    # redactor its header: only the Authorization/Bearer shape can give it away.
    write_plan(tmp_path / "plan.yaml", BEARER_PLAN.replace("@SERVER@", server))
    args = ["--state-dir", "state", "--var", f"bearer={BEARER}"]
    dry = migration(tmp_path, "run", "plan.yaml", *args, "--dry-run")
    # The dry run shows plan variables and a shell step's env by value, but the
    # token is a secret by where a later step uses it (an Authorization header):
    # masked in the vars, in the earlier step's env and in the header alike.
    assert dry.returncode == 0, dry.stderr
    api_preview = dry.stdout.partition("step api (http.check)")[2]
    assert "Authorization" in api_preview
    assert 'bearer: "***"' in dry.stdout.partition("phase 1/")[0]
    assert BEARER not in dry.stdout + dry.stderr
    results = [migration(tmp_path, "run", "plan.yaml", *args, "--log-format", "json")]
    assert results[0].returncode == 0, results[0].stderr
    for fmt in ("md", "html"):
        results.append(migration(tmp_path, "report", "bearer-demo", "--format", fmt, "--state-dir", "state"))
    results.append(migration(tmp_path, "status", "bearer-demo", "--json", "--state-dir", "state"))

    assert f"Bearer {BEARER}" in _EchoAuth.seen  # the real header went out
    for result in results:
        assert_no_traceback(result)
        assert BEARER not in result.stdout + result.stderr, result.args
    files = list(_every_file(tmp_path / "state"))
    assert any(p.name.endswith(".events.jsonl") for p in files)
    for path in files:
        assert BEARER not in path.read_text(errors="replace"), path

    steps = step_states(load_state(tmp_path / "state", "bearer-demo"))
    assert steps["api"]["status"] == "succeeded"
    curl = steps["curl-like"]
    assert curl["status"] == "failed"
    # Masked by its shape, or (once the http.check header was learned) as a whole.
    assert curl["outputs"]["stdout"] in ("GET /ok Authorization: Bearer ***", "GET /ok Authorization: ***")
    assert curl["outputs"]["stderr"] in ("token_type=Bearer ***", "token_type=***")
    assert "GET /ok Authorization: " in results[0].stderr, results[0].stderr  # the streamed line
    assert "Bearer ***" in results[1].stdout  # the report shows where the token was


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            'curl -H "Authorization: Bearer abc.def-123" https://x',
            'curl -H "Authorization: Bearer ***" https://x',
        ),
        ("authorization: Basic dXNlcjpwdw==", "authorization: Basic ***"),
        ('{"Authorization": "Bearer tok123", "x": 1}', '{"Authorization": "Bearer ***", "x": 1}'),
        ("Authorization: MyScheme tok more\nnext line", "Authorization: ***\nnext line"),
        ("AUTHORIZATION=tok1234", "AUTHORIZATION=***"),
        ("token_type=Bearer abcdefgh12345", "token_type=Bearer ***"),
        ("authorization failed", "authorization failed"),
        ("Bearer of bad news", "Bearer of bad news"),
    ],
)
def test_authorization_values_are_masked_by_their_shape(text: str, masked: str) -> None:
    assert Redactor().text(text) == masked
