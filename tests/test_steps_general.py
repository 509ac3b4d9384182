"""General step types against real subprocesses and a real local HTTP server."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from migration.errors import Interrupted, StepError
from migration.steps import StepContext, get_step_type
from migration.steps._subprocess import read_stat, run_command
from migration.steps.gates import Confirm
from migration.steps.http import HttpCheck, json_subset_mismatch
from migration.steps.notify import Notify
from migration.steps.python_call import Python
from migration.steps.require import Require
from migration.steps.shell import Shell
from migration.steps.sizes import parse_size
from migration.steps.sleep import Sleep

PY = sys.executable


def make_ctx(step: Any, tmp_path: Path, **params: Any) -> StepContext[Any]:
    return StepContext(step_id="s1", params=step.Params(**params), workdir=tmp_path)


def alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def wait_dead(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


# --- a real HTTP server ----------------------------------------------------------------


class WebServer:
    """Answers with ``default`` unless responses are queued; records every request."""

    def __init__(self) -> None:
        self.default: tuple[int, bytes, str] = (200, b"ok", "text/plain")
        self.queue: list[tuple[int, bytes, str]] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer.lock:
                    outer.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                    status, payload, kind = outer.queue.pop(0) if outer.queue else outer.default
                if payload == b"ECHO-AUTH":
                    payload = (self.headers.get("Authorization") or "").encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, status: int, body: bytes | str | dict[str, Any] = b"") -> None:
        self.default = _response(status, body)

    def then(self, status: int, body: bytes | str | dict[str, Any] = b"") -> None:
        self.queue.append(_response(status, body))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _response(status: int, body: bytes | str | dict[str, Any]) -> tuple[int, bytes, str]:
    if isinstance(body, dict):
        return status, json.dumps(body).encode(), "application/json"
    return status, body.encode() if isinstance(body, str) else body, "text/plain"


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer()
    yield server
    server.stop()


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/health"


# --- shell -----------------------------------------------------------------------------


def test_registry_has_the_general_step_types() -> None:
    for name in (
        "shell",
        "http.check",
        "process.start",
        "process.stop",
        "confirm",
        "notify",
        "python",
        "sleep",
        "require",
    ):
        assert get_step_type(name) is not None, name


def test_shell_runs_argv_and_captures_stdout_and_stderr(tmp_path: Path) -> None:
    code = "import sys; print('hello'); print('oops', file=sys.stderr)"
    ctx = make_ctx(Shell, tmp_path, command=[PY, "-c", code])
    outputs = Shell().run(ctx)
    assert outputs["exit_code"] == 0
    assert outputs["stdout"] == "hello"
    assert outputs["stderr"] == "oops"
    json.dumps(outputs)


def test_shell_unexpected_exit_code_fails_with_last_stderr_line(tmp_path: Path) -> None:
    code = "import sys; print('first', file=sys.stderr); print('disk full', file=sys.stderr); sys.exit(3)"
    ctx = make_ctx(Shell, tmp_path, command=[PY, "-c", code])
    with pytest.raises(StepError) as err:
        Shell().run(ctx)
    assert "exited with code 3 (expected 0)" in str(err.value)
    assert str(err.value).endswith("disk full")
    assert err.value.outputs["exit_code"] == 3


def test_shell_ok_codes_accept_other_exit_codes(tmp_path: Path) -> None:
    ctx = make_ctx(Shell, tmp_path, command=[PY, "-c", "raise SystemExit(3)"], ok_codes=[0, 3])
    assert Shell().run(ctx)["exit_code"] == 3


def test_shell_string_command_needs_shell_true() -> None:
    with pytest.raises(ValidationError, match="shell: true"):
        Shell.Params(command="echo hi")
    with pytest.raises(ValidationError, match="one string"):
        Shell.Params(command=["echo", "hi"], shell=True)


def test_shell_true_runs_the_string_with_sh_and_merges_env(tmp_path: Path) -> None:
    ctx = make_ctx(
        Shell,
        tmp_path,
        command='echo "$GREETING $PORT $FLAG" | tr a-z A-Z',
        shell=True,
        env={"GREETING": "hi", "PORT": 3000, "FLAG": True},
    )
    ctx.env = {"PATH": os.environ["PATH"], "UNRELATED": "x"}
    assert Shell().run(ctx)["stdout"] == "HI 3000 TRUE"


def test_shell_runs_in_workdir_by_default_and_resolves_relative_cwd(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    pwd = [PY, "-c", "import os; print(os.getcwd())"]
    assert Shell().run(make_ctx(Shell, tmp_path, command=pwd))["stdout"] == str(tmp_path)
    out = Shell().run(make_ctx(Shell, tmp_path, command=pwd, cwd="sub"))["stdout"]
    assert out == str(tmp_path / "sub")
    with pytest.raises(StepError, match="does not exist"):
        Shell().run(make_ctx(Shell, tmp_path, command=pwd, cwd="missing"))


def test_shell_closes_stdin_so_a_prompt_fails_instead_of_hanging(tmp_path: Path) -> None:
    ctx = make_ctx(Shell, tmp_path, command=[PY, "-c", "input('Password: ')"], timeout=20)
    started = time.monotonic()
    with pytest.raises(StepError) as err:
        Shell().run(ctx)
    assert time.monotonic() - started < 10
    assert "EOFError" in err.value.outputs["stderr"]  # type: ignore[operator]


def test_shell_command_not_found_is_one_clear_line(tmp_path: Path) -> None:
    ctx = make_ctx(Shell, tmp_path, command=["no-such-tool-8a3f", "--version"])
    with pytest.raises(StepError, match="command not found: no-such-tool-8a3f"):
        Shell().run(ctx)


def test_shell_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    ctx = make_ctx(Shell, tmp_path, shell=True, timeout=1, command="sleep 60 & echo $! > child.pid; sleep 60")
    started = time.monotonic()
    with pytest.raises(StepError, match=r"timed out after 1s") as err:
        Shell().run(ctx)
    assert time.monotonic() - started < 10
    assert err.value.outputs["timed_out"] is True
    grandchild = int((tmp_path / "child.pid").read_text())
    assert wait_dead(grandchild), "the background child of the shell survived the timeout"


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    ctx = make_ctx(Shell, tmp_path, command=[PY, "-c", code])
    started = time.monotonic()
    result = run_command(
        [PY, "-c", code],
        cwd=tmp_path,
        env=os.environ,
        timeout=1.0,
        redact=ctx.redact.text,
        log=ctx.log,
        stop_flag=ctx.stop_flag,
        grace=0.5,
    )
    assert time.monotonic() - started < 8
    assert result.timed_out
    assert result.exit_code == -signal.SIGKILL
    assert result.stdout == "ignoring"


def test_shell_stop_flag_terminates_the_child_and_raises_interrupted(tmp_path: Path) -> None:
    ctx = make_ctx(Shell, tmp_path, shell=True, command="echo $$ > sh.pid; sleep 60")
    timer = threading.Timer(0.7, ctx.stop_flag.set, args=("SIGTERM",))
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="SIGTERM"):
        Shell().run(ctx)
    assert time.monotonic() - started < 10
    assert wait_dead(int((tmp_path / "sh.pid").read_text()))


def test_shell_interrupted_raised_by_a_signal_handler_kills_the_group(tmp_path: Path) -> None:
    # The runner's SIGINT handler may raise Interrupted in the main thread, anywhere.
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("interrupted by SIGALRM")

    previous = signal.signal(signal.SIGALRM, handler)
    ctx = make_ctx(Shell, tmp_path, shell=True, command="sleep 60 & echo $! > child.pid; sleep 60")
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.7)
        with pytest.raises(Interrupted):
            Shell().run(ctx)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert wait_dead(int((tmp_path / "child.pid").read_text()))


def test_shell_masks_secrets_in_outputs_and_logs(tmp_path: Path) -> None:
    code = (
        "import sys; print('password is s3cr3tpw'); print('url mongodb://u:hunter22@h/db', file=sys.stderr)"
    )
    ctx = make_ctx(Shell, tmp_path, command=[PY, "-c", code])
    ctx.redact.add("s3cr3tpw")
    with capture_logs() as logs:
        outputs = Shell().run(ctx)
    assert outputs["stdout"] == "password is ***"
    assert "hunter22" not in outputs["stderr"] and "***" in outputs["stderr"]
    logged = json.dumps(logs, default=str)
    assert "password is ***" in logged
    assert "s3cr3tpw" not in logged and "hunter22" not in logged


def test_shell_failure_message_is_redacted(tmp_path: Path) -> None:
    code = "import sys; sys.exit('auth failed for s3cr3tpw')"
    ctx = make_ctx(Shell, tmp_path, command=[PY, "-c", code, "s3cr3tpw"])
    ctx.redact.add("s3cr3tpw")
    with pytest.raises(StepError) as err:
        Shell().run(ctx)
    assert "s3cr3tpw" not in str(err.value) and "***" in str(err.value)


def test_shell_keeps_only_a_tail_of_long_output(tmp_path: Path) -> None:
    code = "for i in range(20000): print(f'line {i:05d} ' + 'x' * 40)\nprint('END')"
    started = time.monotonic()
    outputs = Shell().run(make_ctx(Shell, tmp_path, command=[PY, "-c", code]))
    assert time.monotonic() - started < 20
    assert len(outputs["stdout"]) == 4000
    assert outputs["stdout"].endswith("x\nEND")
    assert "line 19999" in outputs["stdout"]


def test_shell_does_not_wait_for_background_processes_holding_its_output(tmp_path: Path) -> None:
    ctx = make_ctx(Shell, tmp_path, shell=True, command="sleep 30 & echo $! > bg.pid; echo done")
    started = time.monotonic()
    try:
        assert Shell().run(ctx)["stdout"] == "done"
        assert time.monotonic() - started < 10
    finally:
        os.kill(int((tmp_path / "bg.pid").read_text()), signal.SIGKILL)


def test_shell_quoted_fields_only_with_shell_true() -> None:
    assert Shell.quoted_fields({"command": "echo {{ x }}", "shell": True}) == {"command"}
    assert Shell.quoted_fields({"command": ["echo", "{{ x }}"]}) == set()


def test_shell_preview_shows_command_and_cwd_and_runs_nothing(tmp_path: Path) -> None:
    ctx = make_ctx(Shell, tmp_path, command="touch made-it", shell=True, timeout=5)
    text = Shell().preview(ctx)
    assert "touch made-it" in text and str(tmp_path) in text and "5s" in text
    assert not (tmp_path / "made-it").exists()


# --- http.check --------------------------------------------------------------------------


def test_http_check_passes_and_reports_status(web: WebServer, tmp_path: Path) -> None:
    outputs = HttpCheck().run(make_ctx(HttpCheck, tmp_path, url=web.url + "/"))
    assert outputs["status"] == 200 and outputs["checks"] == 1
    assert 0 <= outputs["elapsed"] < 5


def test_http_check_failure_says_what_was_expected_and_what_came_back(web: WebServer, tmp_path: Path) -> None:
    web.answer(503, "down for maintenance")
    with pytest.raises(StepError) as err:
        HttpCheck().run(make_ctx(HttpCheck, tmp_path, url=web.url + "/health"))
    message = str(err.value)
    assert f"GET {web.url}/health" in message
    assert "expected status 200, got 503: down for maintenance" in message
    assert err.value.outputs["status"] == 503
    assert len(web.requests) == 1  # no retries unless asked


def test_http_check_waits_until_the_app_is_up_within_the_deadline(web: WebServer, tmp_path: Path) -> None:
    for _ in range(3):
        web.then(502, "bad gateway")
    outputs = HttpCheck().run(make_ctx(HttpCheck, tmp_path, url=web.url, deadline=10, interval=0.05))
    assert outputs["status"] == 200 and outputs["attempts"] == 4


def test_http_check_gives_up_at_the_deadline(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StepError) as err:
        HttpCheck().run(
            make_ctx(
                HttpCheck, tmp_path, url=closed_port_url(), deadline=1.0, interval=0.05, max_interval=0.2
            )
        )
    took = time.monotonic() - started
    assert 0.9 <= took < 4
    assert "connection refused" in str(err.value) and "attempts" in str(err.value)


def test_http_check_retries_a_fixed_number_of_times(web: WebServer, tmp_path: Path) -> None:
    web.answer(500, "boom")
    with pytest.raises(StepError, match="after 3 attempts"):
        HttpCheck().run(make_ctx(HttpCheck, tmp_path, url=web.url, retries=2, interval=0.01))
    assert len(web.requests) == 3


def test_http_check_hold_for_fails_when_the_server_goes_bad(web: WebServer, tmp_path: Path) -> None:
    threading.Timer(0.6, web.answer, args=(500, "crashed")).start()
    started = time.monotonic()
    with pytest.raises(StepError) as err:
        HttpCheck().run(make_ctx(HttpCheck, tmp_path, url=web.url, hold_for=5, interval=0.1))
    assert time.monotonic() - started < 4
    message = str(err.value)
    assert "healthy at first, then failed" in message and "hold_for 5s" in message
    assert "got 500: crashed" in message
    assert err.value.outputs["checks"] >= 3  # type: ignore[operator]


def test_http_check_hold_for_passes_while_healthy(web: WebServer, tmp_path: Path) -> None:
    started = time.monotonic()
    outputs = HttpCheck().run(make_ctx(HttpCheck, tmp_path, url=web.url, hold_for=0.6, interval=0.1))
    assert time.monotonic() - started >= 0.6
    assert outputs["checks"] >= 5


def test_http_check_expect_json_is_a_nested_subset(web: WebServer, tmp_path: Path) -> None:
    web.answer(200, {"status": "ok", "db": {"connected": True, "latency_ms": 3}, "v": [1, 2]})
    ok = make_ctx(HttpCheck, tmp_path, url=web.url, expect_json={"db": {"connected": True}})
    assert HttpCheck().run(ok)["status"] == 200
    bad = make_ctx(HttpCheck, tmp_path, url=web.url, expect_json={"db": {"connected": False}})
    with pytest.raises(StepError, match=r"\$\.db\.connected: expected false, got true"):
        HttpCheck().run(bad)
    missing = make_ctx(HttpCheck, tmp_path, url=web.url, expect_json={"build": "x"})
    with pytest.raises(StepError, match=r"\$\.build: missing"):
        HttpCheck().run(missing)


def test_json_subset_rules() -> None:
    assert json_subset_mismatch({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2, "c": 3}], "d": 4}) is None
    assert json_subset_mismatch({"a": [1]}, {"a": [1, 2]}) is not None
    assert json_subset_mismatch({"n": 1}, {"n": True}) is not None
    assert json_subset_mismatch({"n": 1}, {"n": 1.0}) is None


def test_http_check_expect_json_on_a_text_answer(web: WebServer, tmp_path: Path) -> None:
    web.answer(200, "<html>hello</html>")
    with pytest.raises(StepError, match="expected JSON, got"):
        HttpCheck().run(make_ctx(HttpCheck, tmp_path, url=web.url, expect_json={"a": 1}))


def test_http_check_expect_body_and_status_list(web: WebServer, tmp_path: Path) -> None:
    web.answer(201, "created: id=42")
    ctx = make_ctx(HttpCheck, tmp_path, url=web.url, expect_status=[200, 201], expect_body="id=42")
    assert HttpCheck().run(ctx)["status"] == 201
    ctx = make_ctx(HttpCheck, tmp_path, url=web.url, expect_status=[200, 201], expect_body="id=7")
    with pytest.raises(StepError, match="expected the body to contain 'id=7'"):
        HttpCheck().run(ctx)


def test_http_check_sends_method_json_body_and_headers(web: WebServer, tmp_path: Path) -> None:
    ctx = make_ctx(
        HttpCheck,
        tmp_path,
        url=web.url + "/bank",
        method="put",
        body={"iban": "DE89"},
        headers={"X-Trace": "abc"},
    )
    HttpCheck().run(ctx)
    request = web.requests[-1]
    assert request["method"] == "PUT" and request["path"] == "/bank"
    assert json.loads(request["body"]) == {"iban": "DE89"}
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Trace"] == "abc"


def test_http_check_never_shows_the_authorization_header(web: WebServer, tmp_path: Path) -> None:
    web.answer(401, b"ECHO-AUTH")  # the server echoes the header back in its error body
    ctx = make_ctx(HttpCheck, tmp_path, url=web.url, headers={"Authorization": "Bearer tok-9f8e7d"})
    with capture_logs() as logs, pytest.raises(StepError) as err:
        HttpCheck().run(ctx)
    assert web.requests[-1]["headers"]["Authorization"] == "Bearer tok-9f8e7d"
    assert "tok-9f8e7d" not in str(err.value) and "got 401" in str(err.value)
    assert "tok-9f8e7d" not in json.dumps(logs, default=str)
    assert "tok-9f8e7d" not in HttpCheck().preview(ctx)


def test_http_check_url_must_be_http() -> None:
    with pytest.raises(ValidationError, match="not an http"):
        HttpCheck.Params(url="localhost:3000")


def test_http_check_stops_waiting_on_interrupt(tmp_path: Path) -> None:
    ctx = make_ctx(HttpCheck, tmp_path, url=closed_port_url(), deadline=60, interval=0.2)
    threading.Timer(0.5, ctx.stop_flag.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        HttpCheck().run(ctx)
    assert time.monotonic() - started < 5


# --- confirm --------------------------------------------------------------------------------


def test_confirm_without_terminal_fails_and_names_yes(tmp_path: Path) -> None:
    ctx = make_ctx(Confirm, tmp_path, message="Restart production?")
    with pytest.raises(StepError, match="pass --yes to confirm non-interactively"):
        Confirm().run(ctx)


def test_confirm_with_assume_yes(tmp_path: Path) -> None:
    ctx = make_ctx(Confirm, tmp_path, message="Restart production?", expect="GO")
    ctx.assume_yes = True
    assert Confirm().run(ctx)["confirmed_by"] == "--yes"


@pytest.fixture
def terminal_input(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Feed ``sys.stdin`` from a real pipe (select() works on it as on a terminal)."""

    def feed(text: str) -> None:
        read_fd, write_fd = os.pipe()
        os.write(write_fd, text.encode())
        os.close(write_fd)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.FileIO(read_fd, "r")))

    return feed


def interactive_ctx(tmp_path: Path, **params: Any) -> StepContext[Any]:
    ctx = make_ctx(Confirm, tmp_path, **params)
    ctx.interactive = True
    ctx.env = {"USER": "alice"}
    return ctx


def test_confirm_typed_text_must_match_exactly(
    tmp_path: Path, terminal_input: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal_input("resume production\nRESUME PRODUCTION\n")
    ctx = interactive_ctx(tmp_path, message="Go live?", expect="RESUME PRODUCTION")
    with capture_logs():  # unconfigured structlog would print to stdout
        assert Confirm().run(ctx)["confirmed_by"] == "alice"
    err = capsys.readouterr()
    assert "Go live?" in err.err and "does not match" in err.err and err.out == ""


def test_confirm_declines_after_three_wrong_answers(tmp_path: Path, terminal_input: Any) -> None:
    terminal_input("a\nb\nc\nGO\n")
    with pytest.raises(StepError, match="3 answers did not match 'GO'"):
        Confirm().run(interactive_ctx(tmp_path, message="Go?", expect="GO"))


def test_confirm_yes_no_question(tmp_path: Path, terminal_input: Any) -> None:
    terminal_input("y\n")
    assert Confirm().run(interactive_ctx(tmp_path, message="Go?"))["confirmed_by"] == "alice"
    terminal_input("n\n")
    with pytest.raises(StepError, match="answered 'n'"):
        Confirm().run(interactive_ctx(tmp_path, message="Go?"))
    terminal_input("")
    with pytest.raises(StepError, match="end of input"):
        Confirm().run(interactive_ctx(tmp_path, message="Go?"))


# --- notify ---------------------------------------------------------------------------------


def test_notify_posts_json_text_to_the_webhook(web: WebServer, tmp_path: Path) -> None:
    ctx = make_ctx(Notify, tmp_path, url=web.url + "/hook", text="done; pw s3cr3tpw")
    ctx.redact.add("s3cr3tpw")
    assert Notify().run(ctx)["status"] == 200
    request = web.requests[-1]
    assert request["method"] == "POST"
    assert json.loads(request["body"]) == {"text": "done; pw ***"}


def test_notify_fails_clearly_on_non_2xx(web: WebServer, tmp_path: Path) -> None:
    web.answer(404, "no_service")
    with pytest.raises(StepError, match="expected a 2xx status, got 404: no_service"):
        Notify().run(make_ctx(Notify, tmp_path, url=web.url, text="hi"))
    with pytest.raises(StepError, match="connection refused"):
        Notify().run(make_ctx(Notify, tmp_path, url=closed_port_url(), text="hi"))


def test_notify_command_gets_the_text_in_its_environment(tmp_path: Path) -> None:
    code = "import os; open('sent.txt', 'w').write(os.environ['MIGRATION_NOTIFY_TEXT'])"
    ctx = make_ctx(Notify, tmp_path, command=[PY, "-c", code], text="migration finished")
    assert Notify().run(ctx)["exit_code"] == 0
    assert (tmp_path / "sent.txt").read_text() == "migration finished"
    failing = make_ctx(Notify, tmp_path, command=[PY, "-c", "raise SystemExit('no route')"], text="x")
    with pytest.raises(StepError, match="exited with code 1: no route"):
        Notify().run(failing)


def test_notify_needs_exactly_one_target() -> None:
    with pytest.raises(ValidationError, match="exactly one of url"):
        Notify.Params(text="hi")
    with pytest.raises(ValidationError, match="exactly one of url"):
        Notify.Params(text="hi", url="http://x/", command=["true"])


# --- python ---------------------------------------------------------------------------------


@pytest.fixture
def module(tmp_path: Path) -> str:
    """A fresh module name in the working directory (names differ per test: sys.modules caches)."""
    name = "fixes_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{name}.py").write_text(
        "def counts(collection, limit=10):\n"
        "    return {'collection': collection, 'limit': limit}\n"
        "def answer():\n"
        "    return 42\n"
        "def nothing():\n"
        "    return None\n"
        "def with_ctx(ctx, n):\n"
        "    return {'step': ctx.step_id, 'n': n}\n"
        "def broken():\n"
        "    raise ValueError('bad row 17')\n"
        "def odd():\n"
        "    import datetime\n"
        "    return {'when': datetime.date(2026, 2, 11)}\n"
        "NOT_CALLABLE = 3\n"
    )
    return name


def test_python_calls_the_function_with_params(tmp_path: Path, module: str) -> None:
    ctx = make_ctx(Python, tmp_path, function=f"{module}:counts", params={"collection": "P"})
    assert Python().run(ctx) == {"collection": "P", "limit": 10}


def test_python_return_value_shapes(tmp_path: Path, module: str) -> None:
    assert Python().run(make_ctx(Python, tmp_path, function=f"{module}:answer")) == {"result": 42}
    assert Python().run(make_ctx(Python, tmp_path, function=f"{module}:nothing")) == {}
    when = Python().run(make_ctx(Python, tmp_path, function=f"{module}:odd"))
    assert when == {"when": "2026-02-11"}


def test_python_passes_ctx_only_when_asked(tmp_path: Path, module: str) -> None:
    ctx = make_ctx(Python, tmp_path, function=f"{module}:with_ctx", params={"n": 2})
    assert Python().run(ctx) == {"step": "s1", "n": 2}


def test_python_exception_becomes_a_step_error(tmp_path: Path, module: str) -> None:
    with pytest.raises(StepError, match="raised ValueError: bad row 17"):
        Python().run(make_ctx(Python, tmp_path, function=f"{module}:broken"))


def test_python_bad_import_paths_name_module_and_function(tmp_path: Path, module: str) -> None:
    with pytest.raises(StepError, match="no module named 'nowhere_x1'"):
        Python().run(make_ctx(Python, tmp_path, function="nowhere_x1:run"))
    with pytest.raises(StepError, match=f"module '{module}' has no 'missing'"):
        Python().run(make_ctx(Python, tmp_path, function=f"{module}:missing"))
    with pytest.raises(StepError, match="is not a function"):
        Python().run(make_ctx(Python, tmp_path, function=f"{module}:NOT_CALLABLE"))
    with pytest.raises(ValidationError, match="module:function"):
        Python.Params(function="just_a_module")


def test_python_module_failing_to_import_says_so(tmp_path: Path) -> None:
    name = "broken_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{name}.py").write_text("import not_installed_pkg_zz\ndef f():\n    pass\n")
    with pytest.raises(StepError, match=f"module '{name}' failed: No module named 'not_installed"):
        Python().run(make_ctx(Python, tmp_path, function=f"{name}:f"))


def test_python_finds_modules_on_pythonpath(tmp_path: Path) -> None:
    name = "lib_" + uuid.uuid4().hex[:8]
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / f"{name}.py").write_text("def f():\n    return {'ok': True}\n")
    ctx = make_ctx(Python, tmp_path, function=f"{name}:f")
    assert "WARNING" in Python().preview(ctx)
    ctx.env = {"PYTHONPATH": "lib"}
    assert "WARNING" not in Python().preview(ctx)
    assert Python().run(ctx) == {"ok": True}


# --- sleep ----------------------------------------------------------------------------------


def test_sleep_waits_and_wakes_on_interrupt(tmp_path: Path) -> None:
    started = time.monotonic()
    Sleep().run(make_ctx(Sleep, tmp_path, seconds=0.3))
    assert time.monotonic() - started >= 0.3
    ctx = make_ctx(Sleep, tmp_path, seconds=60)
    threading.Timer(0.3, ctx.stop_flag.set).start()
    with pytest.raises(Interrupted):
        Sleep().run(ctx)
    assert time.monotonic() - started < 5


# --- require --------------------------------------------------------------------------------


def test_require_lists_everything_missing_in_one_line(tmp_path: Path) -> None:
    ctx = make_ctx(
        Require,
        tmp_path,
        commands=["sh", "no-such-tool-8a3f", "nor-this-one"],
        env=["DATABASE_URL", "EMPTY", "PRESENT"],
        free_disk={"path": "backups/new", "bytes": "1000 x 1000TB"},
    )
    ctx.env = {"PATH": os.environ["PATH"], "EMPTY": "", "PRESENT": "yes"}
    with pytest.raises(StepError) as err:
        Require().run(ctx)
    message = str(err.value)
    assert "\n" not in message
    assert "commands not on PATH: no-such-tool-8a3f, nor-this-one" in message
    assert "environment variables not set: DATABASE_URL, EMPTY" in message
    assert f"free disk at {tmp_path / 'backups/new'}" in message and "need" in message
    assert "sh" in err.value.outputs["commands"]  # type: ignore[operator]


def test_require_passes_and_reports_what_it_found(tmp_path: Path) -> None:
    ctx = make_ctx(
        Require, tmp_path, commands=["sh"], env=["TOKEN"], free_disk={"path": ".", "bytes": "2 \u00d7 1KiB"}
    )
    ctx.env = {"PATH": os.environ["PATH"], "TOKEN": "abcd"}
    outputs = Require().run(ctx)
    assert outputs["commands"]["sh"].endswith("/sh")
    assert outputs["env"] == ["TOKEN"] and "abcd" not in json.dumps(outputs)
    assert outputs["free_bytes"] > 2048
    assert outputs["free_disk"][0]["required_bytes"] == 2048


def test_parse_size_forms() -> None:
    assert parse_size(1000) == 1000
    assert parse_size("10GB") == 10 * 1000**3
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("2 x 5GB") == parse_size("2 \u00d7 5GB") == 10 * 1000**3
    assert parse_size("2 \u00d7 123456") == 246912
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
    with pytest.raises(ValidationError, match="not a size"):
        Require.Params.model_validate({"free_disk": {"path": ".", "bytes": "ten"}})


def test_rendered_numbers_in_argv_env_and_headers_become_text(tmp_path: Path) -> None:
    # "{{ vars.port }}" renders to an int; a process only ever sees text.
    params = Shell.Params.model_validate({"command": ["echo", 3000, True], "env": {"N": 1}})
    assert params.command == ["echo", "3000", "true"] and params.env == {"N": "1"}
    assert HttpCheck.Params.model_validate({"url": "http://x/", "headers": {"X-N": 2}}).headers == {
        "X-N": "2"
    }
    outputs = Shell().run(StepContext(step_id="s", params=params, workdir=tmp_path))
    assert outputs["stdout"] == "3000 true"


def test_templates_are_judged_after_rendering() -> None:
    # The plan loader validates raw `with:` values; a whole-value template may render to a list.
    Shell.Params(command="{{ vars.argv }}")
    disk = Require.Params.model_validate(
        {"free_disk": {"path": ".", "bytes": "2 x {{ steps.p.outputs.data_bytes }}"}}
    )
    assert disk.free_disk[0].required == "2 x {{ steps.p.outputs.data_bytes }}"


def test_confirm_on_a_real_terminal_ignores_type_ahead(tmp_path: Path) -> None:
    import pty
    import select
    import subprocess

    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from structlog.testing import capture_logs\n"
        "from migration.steps import StepContext\n"
        "from migration.steps.gates import Confirm\n"
        "ctx = StepContext(step_id='gate', workdir=Path('.'), interactive=True,\n"
        "                  env={'USER': 'bob'}, params=Confirm.Params(message='Go live?', expect='GO'))\n"
        "with capture_logs():\n"
        "    print(Confirm().run(ctx)['confirmed_by'], flush=True)\n"
    )
    master, slave = pty.openpty()
    child = subprocess.Popen([PY, "-c", script], stdin=slave, stderr=slave, stdout=subprocess.PIPE)
    os.close(slave)
    try:
        os.write(master, b"nope\n")  # typed before the question is on screen
        screen = b""
        deadline = time.monotonic() + 30
        while b"Type 'GO'" not in screen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                screen += os.read(master, 4096)
        assert b"Go live?" in screen
        os.write(master, b"GO\n")
        out, _ = child.communicate(timeout=30)
        time.sleep(0.1)
        while select.select([master], [], [], 0)[0]:
            try:
                screen += os.read(master, 4096)
            except OSError:
                break
    finally:
        child.kill()
        os.close(master)
    assert out.decode().strip() == "bob"
    assert b"does not match" not in screen
