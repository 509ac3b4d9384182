"""process.start / process.stop with real detached processes and a real HTTP server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migration.errors import Interrupted, StepError
from migration.steps import StepContext
from migration.steps._subprocess import read_stat
from migration.steps.process import ProcessStart, ProcessStop

PY = sys.executable
PROJECT = Path(__file__).resolve().parent.parent


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, whatever happened."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def start(tmp_path: Path, cleanup: list[int], step_id: str = "app", **params: Any) -> dict[str, Any]:
    ctx = StepContext(step_id=step_id, params=ProcessStart.Params(**params), workdir=tmp_path)
    outputs = ProcessStart().run(ctx)
    cleanup.append(outputs["pgid"])
    return outputs


def stop(tmp_path: Path, started: dict[str, Any], **params: Any) -> dict[str, Any]:
    params.setdefault("id", "app")
    ctx = StepContext(
        step_id="stop",
        params=ProcessStop.Params(**params),
        workdir=tmp_path,
        outputs_of={params["id"]: started},
    )
    return ProcessStop().run(ctx)


def test_start_waits_for_ready_url_and_stop_terminates_it(tmp_path: Path, cleanup: list[int]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    began = time.monotonic()
    started = start(
        tmp_path,
        cleanup,
        command=[PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready_url=url,
        ready_timeout=30,
    )
    assert time.monotonic() - began < 30
    pid = started["pid"]
    assert alive(pid) and started["pgid"] == pid
    assert started["start_time"] == read_stat(pid)[2]  # type: ignore[index]
    assert started["log"] == str(tmp_path / ".migration" / "logs" / "app.log")
    json.dumps(started)
    # It runs in its own session: not in the test's process group.
    assert os.getpgid(pid) != os.getpgid(0)
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.status == 200

    outputs = stop(tmp_path, started)
    assert outputs["stopped"] is True and outputs["signal"] == "SIGTERM"
    assert not alive(pid)
    log = Path(started["log"]).read_text()
    assert "step app started" in log and "GET / HTTP" in log


def test_start_fails_clearly_when_the_process_exits_during_start(tmp_path: Path, cleanup: list[int]) -> None:
    code = "import sys; print('Error: cannot connect to database', flush=True); sys.exit(3)"
    with pytest.raises(StepError) as err:
        start(
            tmp_path,
            cleanup,
            command=[PY, "-c", code],
            ready_url=f"http://127.0.0.1:{free_port()}/",
            ready_timeout=30,
        )
    message = str(err.value)
    assert "exited with code 3 during start" in message
    assert "cannot connect to database" in message
    assert err.value.outputs["exit_code"] == 3


def test_start_without_ready_url_checks_it_stays_up(tmp_path: Path, cleanup: list[int]) -> None:
    with pytest.raises(StepError, match="exited with code 1 during start"):
        start(tmp_path, cleanup, command="sleep 0.2; exit 1", shell=True, settle=2)
    started = start(tmp_path, cleanup, command=["sleep", "30"], settle=0.3)
    assert alive(started["pid"])
    assert stop(tmp_path, started)["stopped"] is True


def test_start_gives_up_and_stops_the_process_when_never_ready(tmp_path: Path, cleanup: list[int]) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(StepError, match=r"not ready after 1s \(last: connection refused\)"):
        start(
            tmp_path,
            cleanup,
            shell=True,
            command=f"echo $$ > {pidfile}; exec sleep 60",
            ready_url=f"http://127.0.0.1:{free_port()}/",
            ready_timeout=1,
        )
    assert wait_dead(int(pidfile.read_text()))


def test_start_interrupted_while_waiting_stops_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    ctx = StepContext(
        step_id="app",
        params=ProcessStart.Params(
            command=f"echo $$ > {pidfile}; exec sleep 60",
            shell=True,
            ready_url=f"http://127.0.0.1:{free_port()}/",
        ),
        workdir=tmp_path,
    )
    threading.Timer(0.8, ctx.stop_flag.set).start()
    with pytest.raises(Interrupted):
        ProcessStart().run(ctx)
    assert wait_dead(int(pidfile.read_text()))


def test_start_records_the_service_before_it_is_ready_and_a_rerun_stops_it(
    tmp_path: Path, cleanup: list[int]
) -> None:
    """A migration killed while the service gets ready: the next attempt stops that one first."""
    port = free_port()
    recorded: list[dict[str, Any]] = []
    ctx = StepContext(
        step_id="app",
        params=ProcessStart.Params(
            command=["sleep", "60"], ready_url=f"http://127.0.0.1:{port}/", ready_timeout=30
        ),
        workdir=tmp_path,
        on_progress=recorded.append,
    )
    threading.Timer(0.5, ctx.stop_flag.set).start()
    # The durable record is written before the wait; an interrupt (unlike SIGKILL) stops it itself.
    with pytest.raises(Interrupted):
        ProcessStart().run(ctx)
    assert recorded and recorded[0]["pid"] > 0 and recorded[0]["start_time"] is not None

    # As if the first attempt had been SIGKILLed: its service (started without the
    # step's environment mark, as a daemon that cleans its environment would be) runs on.
    first = subprocess.Popen(["sleep", "60"], start_new_session=True)
    cleanup.append(first.pid)
    stat = read_stat(first.pid)
    assert stat is not None
    earlier = {"pid": first.pid, "pgid": first.pid, "start_time": stat[2], "boot_id": recorded[0]["boot_id"]}
    rerun = StepContext(
        step_id="app",
        params=ProcessStart.Params(command=["sleep", "60"], settle=0.2),
        workdir=tmp_path,
        resume=earlier,
    )
    outputs = ProcessStart().run(rerun)
    cleanup.append(outputs["pgid"])
    first.wait(timeout=10)
    assert first.returncode == -signal.SIGTERM, "the earlier attempt's service was left running"
    assert alive(outputs["pid"]) and outputs["pid"] != first.pid


def test_started_process_survives_the_migration_process_exiting(tmp_path: Path, cleanup: list[int]) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from migration.steps import StepContext
        from migration.steps.process import ProcessStart
        ctx = StepContext(step_id="app", workdir=Path({str(tmp_path)!r}),
                          params=ProcessStart.Params(command=["sleep", "60"], settle=0.2))
        print(json.dumps(ProcessStart().run(ctx)))
        """
    )
    done = subprocess.run(
        [PY, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=60, check=True
    )
    started = json.loads(done.stdout.strip().splitlines()[-1])
    cleanup.append(started["pgid"])
    time.sleep(0.3)
    assert alive(started["pid"]), "the service died with the migration process"
    # A resumed run (another process) stops it from the recorded outputs alone.
    outputs = stop(tmp_path, started)
    assert outputs["stopped"] is True
    assert wait_dead(started["pid"])


def test_stop_never_kills_a_reused_pid(tmp_path: Path, cleanup: list[int]) -> None:
    started = start(tmp_path, cleanup, command=["sleep", "30"], settle=0.1)
    # The same pid, but the recorded process started at another moment: someone else's.
    recorded = {**started, "start_time": started["start_time"] + 1}
    outputs = stop(tmp_path, recorded)
    assert outputs["stopped"] is False
    assert "now belongs to another process" in outputs["note"]
    assert alive(started["pid"])
    assert stop(tmp_path, started)["stopped"] is True


def test_stop_leaves_an_unrelated_process_alone(tmp_path: Path, cleanup: list[int]) -> None:
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    cleanup.append(other.pid)
    try:
        recorded = {"pid": other.pid, "pgid": other.pid, "start_time": 1}
        assert stop(tmp_path, recorded)["stopped"] is False
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_stop_is_idempotent_when_the_process_is_gone(tmp_path: Path, cleanup: list[int]) -> None:
    started = start(tmp_path, cleanup, command=["sleep", "30"], settle=0.1)
    assert stop(tmp_path, started)["stopped"] is True
    again = stop(tmp_path, started)
    assert again["stopped"] is False and "already exited" in again["note"]


def test_stop_after_a_reboot_touches_nothing(tmp_path: Path, cleanup: list[int]) -> None:
    started = start(tmp_path, cleanup, command=["sleep", "30"], settle=0.1)
    outputs = stop(tmp_path, {**started, "boot_id": "another-boot"})
    assert outputs["stopped"] is False and "rebooted" in outputs["note"]
    assert alive(started["pid"])


def test_stop_without_a_recorded_process_succeeds_with_a_note(tmp_path: Path) -> None:
    ctx = StepContext(step_id="stop", params=ProcessStop.Params(id="app"), workdir=tmp_path)
    outputs = ProcessStop().run(ctx)
    assert outputs["stopped"] is False and "recorded no process" in outputs["note"]


def test_stop_kills_the_whole_group(tmp_path: Path, cleanup: list[int]) -> None:
    started = start(tmp_path, cleanup, shell=True, settle=0.3, command="sleep 60 & echo $! > child.pid; wait")
    child = int((tmp_path / "child.pid").read_text())
    assert alive(child)
    assert stop(tmp_path, started)["stopped"] is True
    assert wait_dead(child)


def test_stop_stops_leftovers_when_the_leader_already_exited(tmp_path: Path, cleanup: list[int]) -> None:
    # The shell exits soon after start; its background child keeps the group alive.
    started = start(
        tmp_path,
        cleanup,
        shell=True,
        settle=0.1,
        command="sleep 60 > /dev/null 2>&1 & echo $! > child.pid; sleep 0.5",
    )
    assert wait_dead(started["pid"])
    child = int((tmp_path / "child.pid").read_text())
    assert alive(child)
    outputs = stop(tmp_path, started)
    assert outputs["stopped"] is True and "left of its group" in outputs["note"]
    assert wait_dead(child)


def test_stop_escalates_to_sigkill(tmp_path: Path, cleanup: list[int]) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    started = start(tmp_path, cleanup, command=[PY, "-c", code], settle=0.5)
    began = time.monotonic()
    outputs = stop(tmp_path, started, timeout=0.5)
    assert time.monotonic() - began < 5
    assert outputs["signal"] == "SIGKILL" and not alive(started["pid"])


def test_process_params_and_previews(tmp_path: Path, cleanup: list[int]) -> None:
    assert ProcessStart.quoted_fields({"command": "x", "shell": True}) == {"command"}
    with pytest.raises(ValueError, match="shell: true"):
        ProcessStart.Params(command="yarn start:prod")
    ctx = StepContext(
        step_id="app",
        workdir=tmp_path,
        params=ProcessStart.Params(
            command=["yarn", "start:prod"], log="app.log", ready_url="http://127.0.0.1:3000/"
        ),
    )
    text = ProcessStart().preview(ctx)
    assert "yarn start:prod" in text and str(tmp_path / "app.log") in text and "3000" in text
    assert not (tmp_path / "app.log").exists()
    started = start(tmp_path, cleanup, command=["sleep", "30"], settle=0.1, log="logs/s.log")
    assert (tmp_path / "logs" / "s.log").exists()
    stop_ctx = StepContext(
        step_id="stop", params=ProcessStop.Params(id="app"), workdir=tmp_path, outputs_of={"app": started}
    )
    assert f"would stop pid {started['pid']}" in ProcessStop().preview(stop_ctx)
    assert alive(started["pid"])
    stop(tmp_path, started)
    assert "nothing to stop" in ProcessStop().preview(stop_ctx)
