"""``mongo.transform`` with ``workers: N``: ``_id`` partitions transformed by worker processes.

The step's process cuts the collection into partitions (``partitions.py``),
records them, starts up to N worker processes (fresh interpreters) and
hands each a partition, then another until none is left. A worker runs the same
batch loop as a one-worker transform over its range, with its own guarded
batches, in-flight journal and log. After each batch it sends its position to
the step's process, which records it in the step's progress (durably) and only
then lets the worker go on; so the partitions' progress in the state is always
what their workers committed, and a SIGKILL of anything at any moment resumes
every partition after its last committed batch. When all are done, their logs
are concatenated in ``_id`` order into the step's log: the outputs and the log
are those of a one-worker run.

Workers ignore SIGINT/SIGTERM (the step's process asks them to stop at a safe
point) and die with the step's process (Linux parent-death signal).
``max_errors`` applies to the sum over the partitions, checked after each batch:
when exceeded, every worker stops at its next batch and the step fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from migration.errors import Interrupted, StepError
from migration.secrets import Redactor
from migration.steps.mongo.common import connect
from migration.steps.mongo.documents import decode_id, encode_id
from migration.steps.mongo.guarded_writes import GuardedWriter, Planner
from migration.steps.mongo.operations import Operation
from migration.steps.mongo.partitions import (
    PartitionRecord,
    PartitionState,
    merge_logs,
    owner_name,
    range_query,
    remove_parts,
)
from migration.steps.mongo.transform_batches import COUNTERS, BatchLoop, Position, zero_counters
from migration.steps.mongo.transform_context import make_planner

# How long the step's process waits for its workers to stop before killing them.
STOP_GRACE_SECONDS = 120
PR_SET_PDEATHSIG = 1


@dataclass
class WorkerSpec:
    """Everything a worker process needs (picklable: it crosses to a spawned process)."""

    uri: str
    collection: str
    function: str | None
    operations: list[Any] | None  # the operations as plain data, validated again there
    filter: dict[str, Any]
    batch_size: int
    max_errors: int
    workdir: Path
    env: dict[str, str]
    redact: Redactor
    ferretdb: bool
    workers: int
    args: dict[str, Any]


# --- in the worker process ----------------------------------------------------------------


class _PipeLogger:
    """Log events go to the step's process, which logs them with its own logger.

    Also a transform function's ``ctx.log`` in a worker (so it has ``bind``).
    """

    def __init__(self, conn: Connection, index: int | None, **bound: Any) -> None:
        self.conn, self.index, self.bound = conn, index, bound

    def _send(self, level: str, event: str, **fields: Any) -> None:
        where = {} if self.index is None else {"partition": self.index}
        self.conn.send(("log", level, event, {**where, **self.bound, **fields}))

    def bind(self, **fields: Any) -> _PipeLogger:
        return _PipeLogger(self.conn, self.index, **self.bound, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._send("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._send("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._send("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._send("error", event, **fields)


def _die_with_parent(parent: int) -> None:
    # Not on Linux: the pipe's end still stops the worker at its next message.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


# A worker is a fresh interpreter given the step's sys.path (functions are imported
# by the same name) and one end of a socket pair; unlike multiprocessing's spawn, it
# never re-imports the step's __main__ (a script without a main guard is safe).
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from migration.steps.mongo.transform_workers import child_main; child_main(sys.argv[2:])"
)


def start_worker(spec: WorkerSpec) -> tuple[Connection, subprocess.Popen[bytes]]:
    """Start a worker process; return the step's end of its connection, and the process."""
    mine, theirs = socket.socketpair()
    with theirs:
        argv = [
            sys.executable,
            "-c",
            _BOOTSTRAP,
            json.dumps(sys.path),
            str(theirs.fileno()),
            str(os.getpid()),
        ]
        process = subprocess.Popen(
            argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
    conn = Connection(mine.detach())
    conn.send(spec)
    return conn, process


def child_main(argv: list[str]) -> None:
    """The worker process's entry point: ``FD PARENT_PID``."""
    conn = Connection(int(argv[0]))
    worker_main(conn.recv(), conn, int(argv[1]))


def worker_main(spec: WorkerSpec, conn: Connection, parent: int) -> None:
    """Transform the partitions the step's process hands over, until told to exit."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _serve(spec, conn)
    except (EOFError, BrokenPipeError):
        return  # the step's process is gone
    except Exception as exc:  # cannot connect, cannot import the function, a bug
        text = spec.redact(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        conn.send(("failed", -1, {"error": f"worker failed: {text}", "outputs": None}))


def _serve(spec: WorkerSpec, conn: Connection) -> None:
    client, db = connect(spec.uri)
    try:
        operations = None
        if spec.operations is not None:
            operations = TypeAdapter(list[Operation]).validate_python(spec.operations)
        planner = make_planner(
            spec.function,
            operations,
            workdir=spec.workdir,
            env=spec.env,
            redact=spec.redact,
            db=db,
            args=spec.args,
            log=_PipeLogger(conn, None),
        )
        collection = db[spec.collection]
        while True:
            message = conn.recv()
            if message[0] != "partition":
                return
            _run_partition(spec, conn, collection, planner, message[1])
    finally:
        client.close()


def _run_partition(
    spec: WorkerSpec, conn: Connection, collection: Any, planner: Planner, record: Any
) -> None:
    index = record["index"]

    def check_stop() -> None:
        # Only "stop" or "exit" arrive unasked (an "ack" is awaited below), and the
        # connection's end also reads as ready: any of them means stop here.
        if conn.poll():
            raise Interrupted("stopped by the step's process")

    def record_position(position: Position) -> None:
        conn.send(("progress", index, _fields(position)))
        if conn.recv()[0] != "ack":
            raise Interrupted("stopped by the step's process")

    writer = GuardedWriter(
        collection, spec.ferretdb, spec.redact, check_stop, concurrent_writers=spec.workers
    )
    start = Position(
        None if record["last_id"] is None else decode_id(record["last_id"]),
        {k: int(record["counters"].get(k, 0)) for k in COUNTERS},
        Path(record["log"]),
        int(record["log_offset"]),
    )
    loop = BatchLoop(
        collection,
        planner,
        writer,
        base=range_query(spec.filter, record),
        batch_size=spec.batch_size,
        max_errors=spec.max_errors,
        record=record_position,
        check_stop=check_stop,
        log=_PipeLogger(conn, index),
    )
    try:
        end = loop.run(start)
    except Interrupted:
        conn.send(("stopped", index, None))
        return
    except StepError as exc:
        conn.send(("failed", index, {"error": str(exc), "outputs": exc.outputs}))
        return
    except Exception as exc:  # a PyMongoError, or a bug: the step's process reports it
        text = spec.redact(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        conn.send(("failed", index, {"error": text, "outputs": None}))
        return
    conn.send(("done", index, _fields(end)))


def _fields(position: Position) -> dict[str, Any]:
    return {
        "last_id": None if position.last_id is None else encode_id(position.last_id),
        "counters": dict(position.counters),
        "log_offset": position.log_offset,
    }


# --- in the step's process ----------------------------------------------------------------


class PartitionedRun:
    """Hands partitions to worker processes and records their progress."""

    def __init__(
        self,
        spec: WorkerSpec,
        records: list[PartitionRecord],
        log: Path,
        save: Callable[..., None],
        check_stop: Callable[[], None],
        logger: Any,
        advance: Callable[[int], None],
    ) -> None:
        self.spec = spec
        self.records = records
        self.log = log
        self.save = save  # (records) -> None: persists the step's progress
        self.check_stop = check_stop
        self.logger = logger
        self.advance = advance
        self.failure: str | None = None
        self.failed_outputs: dict[str, int] | None = None
        self.interrupted: str | None = None
        self.pids: dict[Connection, int] = {}

    def totals(self) -> dict[str, int]:
        totals = zero_counters()
        for record in self.records:
            for key in COUNTERS:
                totals[key] += int(record["counters"].get(key, 0))
        return totals

    def execute(self) -> dict[str, Any]:
        for record in self.records:
            if record["state"] != PartitionState.DONE:
                record["state"], record["owner"] = PartitionState.PENDING, None
        self._check_errors()
        todo = [r for r in self.records if r["state"] == PartitionState.PENDING]
        if todo and self.failure is None:
            self._drive(todo)
        if self.interrupted is not None:
            raise Interrupted(self.interrupted)
        totals = self.totals()
        if self.failure is not None:
            merge_logs(self.log, self.records, committed_only=False)
            raise StepError(self.failure, outputs={**(self.failed_outputs or totals), "log": str(self.log)})
        merge_logs(self.log, self.records)
        self.save(self.records, merged=True)
        remove_parts(self.records)
        return {**totals, "log": str(self.log)}

    def _check_errors(self) -> None:
        totals = self.totals()
        if totals["errors"] > self.spec.max_errors and self.failure is None:
            self.failure = (
                f"too many errors ({totals['errors']}, max_errors {self.spec.max_errors}) over "
                f"{len(self.records)} partitions (every record is in {self.log})"
            )

    def _drive(self, todo: list[PartitionRecord]) -> None:
        workers: dict[Connection, subprocess.Popen[bytes]] = {}
        busy: dict[Connection, PartitionRecord] = {}
        stopping = False
        try:
            for _ in range(min(self.spec.workers, len(todo))):
                conn, process = start_worker(self.spec)
                workers[conn] = process
                self.pids[conn] = process.pid
                self._assign(conn, todo, busy)
            while busy:
                if not stopping:
                    try:
                        self.check_stop()
                    except Interrupted as exc:
                        self.interrupted = str(exc)
                    if self.interrupted is not None or self.failure is not None:
                        stopping = True
                        for conn in busy:
                            with contextlib.suppress(OSError):  # a dead one reads as ended below
                                conn.send(("stop",))
                for ready in wait(list(busy), timeout=0.2):
                    conn = ready  # type: ignore[assignment]
                    try:
                        message = conn.recv()
                    except EOFError:
                        record = busy.pop(conn)
                        record["state"], record["owner"] = PartitionState.PENDING, None
                        self.failure = self.failure or f"the worker of partition {record['index']} died"
                        continue
                    self._handle(conn, message, busy, todo, stopping)
        finally:
            # A worker still in a batch stops at its next check, finding the
            # connection ended; a batch not recorded is replayed by a resumed run.
            for conn in workers:
                with contextlib.suppress(OSError):
                    conn.send(("exit",))
                conn.close()
            for process in workers.values():
                try:
                    process.wait(STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _assign(self, conn: Connection, todo: list[PartitionRecord], busy: dict[Connection, Any]) -> None:
        pending = [r for r in todo if r["state"] == PartitionState.PENDING]
        if not pending or self.failure is not None or self.interrupted is not None:
            return
        record = pending[0]
        record["state"], record["owner"] = PartitionState.RUNNING, owner_name(self.pids[conn])
        busy[conn] = record
        conn.send(("partition", dict(record)))

    def _handle(
        self,
        conn: Connection,
        message: tuple[Any, ...],
        busy: dict[Connection, PartitionRecord],
        todo: list[PartitionRecord],
        stopping: bool,
    ) -> None:
        kind = message[0]
        if kind == "log":
            _, level, event, fields = message
            getattr(self.logger, level)(event, **fields)
            return
        record = busy[conn]
        if kind in ("progress", "done"):
            fields = message[2]
            before = int(record["counters"].get("total", 0))
            record.update(fields)
            if kind == "done":
                record["state"], record["owner"] = PartitionState.DONE, None
            self.save(self.records)
            self.advance(int(record["counters"]["total"]) - before)
            self._check_errors()
            if kind == "progress":
                with contextlib.suppress(OSError):
                    conn.send(("stop",) if stopping or self.failure is not None else ("ack",))
            else:
                busy.pop(conn)
                self._assign(conn, todo, busy)
            return
        busy.pop(conn)
        record["state"], record["owner"] = PartitionState.PENDING, None
        if kind == "failed" and self.failure is None:
            self.failure = message[2]["error"]
            outputs = message[2]["outputs"]
            if outputs:
                others = [r for r in self.records if r is not record]
                self.failed_outputs = {
                    k: int(outputs.get(k, 0)) + sum(int(r["counters"].get(k, 0)) for r in others)
                    for k in COUNTERS
                }
        self.save(self.records)
