"""mongo.transform with ``workers``: _id partitions in worker processes, against the real server.

Whatever happens (several workers, a crash of the step's process between two
records, a SIGKILL with partitions half-done), the database, the outputs and the
per-record log end up exactly as a one-worker, uninterrupted run leaves them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo.database import Database
from test_mongo_transform import PROJECT, THIS, records, seed, snapshot, transform, without_log

from migration.errors import StepError
from migration.steps.mongo.guarded_writes import GuardedWriter
from migration.steps.mongo.partitions import PartitionState, boundaries

pytestmark = pytest.mark.mongo

COMMON = {"function": f"{THIS}:relabel", "batch_size": 50, "max_errors": 100}


class Crash(Exception):
    """Stands for the step's process dying."""


def partitions_of(saved: dict[str, Any]) -> list[dict[str, Any]]:
    return list(saved.get("partitions") or [])


def half_done(saved: dict[str, Any]) -> int:
    return sum(
        1 for p in partitions_of(saved) if p["last_id"] is not None and p["state"] != PartitionState.DONE
    )


def test_three_workers_leave_what_one_worker_leaves(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "reference", 1200, ids=lambda i: ObjectId(f"{i:024x}"))
    seed(mongo_db, "parallel", 1200, ids=lambda i: ObjectId(f"{i:024x}"))
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **COMMON)
    saved: dict[str, Any] = {}
    outputs = transform(
        mongo_url, tmp_path / "par", collection="parallel", workers=3, on_progress=saved.update, **COMMON
    )
    assert without_log(outputs) == without_log(reference)
    assert snapshot(mongo_db, "parallel") == snapshot(mongo_db, "reference")
    # One merged log, in _id order, line for line the one-worker log; the parts are gone.
    assert records(outputs["log"]) == records(reference["log"])
    assert [p.name for p in (tmp_path / "par" / "backups").iterdir()] == [Path(outputs["log"]).name]
    parts = partitions_of(saved)
    assert len(parts) == 3 and saved["merged"] is True
    assert all(p["state"] == PartitionState.DONE and p["owner"] is None for p in parts)
    assert sum(p["counters"]["total"] for p in parts) == 1200
    assert all(p["counters"]["total"] > 200 for p in parts), "ranges should be roughly even"
    assert [p["lo"] for p in parts[1:]] == [p["hi"] for p in parts[:-1]]


def test_operations_run_in_workers_as_in_one_process(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    codes = ["GB82WEST12345698765432", "HSBCGB2LXXX", "", "garbage", None]
    for name in ("reference", "parallel"):
        mongo_db[name].insert_many([{"_id": i, "code": codes[i % 5], "bank": f"b{i}"} for i in range(300)])
    operations = [
        {"rename": {"bank": "bank_name"}},
        {
            "split": {
                "field": "code",
                "into": {
                    "iban_number": {"function": "migration.recipes.bank_details:is_valid_iban"},
                    "swift_bic_number": {"regex": "^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$"},
                },
            }
        },
    ]
    common = {"operations": operations, "batch_size": 40}
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **common)
    outputs = transform(mongo_url, tmp_path / "par", collection="parallel", workers=2, **common)
    assert without_log(outputs) == without_log(reference) and reference["invalid"] == 60
    assert snapshot(mongo_db, "parallel") == snapshot(mongo_db, "reference")
    assert records(outputs["log"]) == records(reference["log"])


def test_the_step_dying_between_records_resumes_to_the_same_result(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    """A cheap stand-in for the SIGKILL below: the step's process dies at a progress
    record (its workers left mid-batch), several times, with partitions half-done."""
    seed(mongo_db, "reference", 900)
    seed(mongo_db, "crashing", 900)
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **COMMON)
    saved: dict[str, Any] = {}
    story = []
    for attempt in range(4):
        calls = {"n": 0}
        # Die at a record that finds two or more partitions half-done (first from the
        # 3rd record on, then the 2nd, then the 4th): chosen by what the record says,
        # not by a count, so a server fast enough to finish a partition between two
        # records (one without a statement cap) still gets its crashes.
        crash_from = (3, 2, 4, None)[attempt]

        def hook(fields: dict[str, Any], calls: dict[str, int] = calls, crash_from: Any = crash_from) -> None:
            calls["n"] += 1
            if crash_from is not None and calls["n"] >= crash_from and half_done(fields) >= 2:
                raise Crash  # before it is persisted
            saved.clear()
            saved.update(json.loads(json.dumps(fields)))

        try:
            outputs = transform(
                mongo_url, tmp_path / "work", collection="crashing", workers=3,
                resume=dict(saved), on_progress=hook, **COMMON,
            )  # fmt: skip
            break
        except Crash:
            story.append(half_done(saved))
    assert max(story) >= 2, f"no crash left two partitions half-done: {story}"
    assert without_log(outputs) == without_log(reference)
    assert snapshot(mongo_db, "crashing") == snapshot(mongo_db, "reference")
    assert records(outputs["log"]) == records(reference["log"])
    assert [p.name for p in (tmp_path / "work" / "backups").iterdir()] == [Path(outputs["log"]).name]


def test_max_errors_counts_the_errors_of_every_partition(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 1200)  # relabel fails n = 251, 502, 753, 1004 (one or two a partition)
    saved: dict[str, Any] = {}
    with pytest.raises(StepError, match=r"too many errors \(\d, max_errors 2\)") as failed:
        transform(
            mongo_url, tmp_path, collection="things", workers=3, function=f"{THIS}:relabel",
            batch_size=50, max_errors=2, on_progress=saved.update,
        )  # fmt: skip
    assert failed.value.outputs["errors"] > 2
    log = Path(failed.value.outputs["log"])
    assert log.exists() and any(r["status"] == "error" for r in records(str(log)))
    assert all(p["state"] != PartitionState.RUNNING for p in partitions_of(saved))


def test_ids_that_cannot_be_cut_portably_run_with_one_worker(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    values: list[Any] = [3, 1.5, "b", "a", True, False, *[ObjectId() for _ in range(6)]]
    mongo_db.mixed.insert_many([{"_id": v, "n": i, "old": "x"} for i, v in enumerate(values)])
    saved: dict[str, Any] = {}
    outputs = transform(
        mongo_url, tmp_path, collection="mixed", function=f"{THIS}:explode_on_13", workers=3,
        on_progress=saved.update,
    )  # fmt: skip
    assert outputs["total"] == len(values) and outputs["migrated"] == len(values)
    assert "partitions" not in saved  # one worker: the plain progress record


def test_boundaries_split_evenly_and_never_more_than_the_documents(mongo_db: Database[Any]) -> None:
    seed(mongo_db, "things", 3000)
    cuts = boundaries(mongo_db.things, {}, 4, server_side=False)
    assert len(cuts) == 3
    for cut, even in zip(cuts, (750, 1500, 2250), strict=True):
        assert abs(cut - even) <= 3000 // 500, cuts  # within the sample's spacing
    assert boundaries(mongo_db.things, {"n": {"$lt": 1000}}, 2, server_side=True) == [500]
    seed(mongo_db, "few", 3)
    assert boundaries(mongo_db.few, {}, 8, server_side=False) == []


def test_workers_together_keep_one_writers_ferretdb_statements_in_flight(mongo_db: Database[Any]) -> None:
    def cap(writers: int) -> int:
        return GuardedWriter(mongo_db.x, True, str, concurrent_writers=writers).chunk

    assert [cap(1), cap(2), cap(3), cap(4), cap(64)] == [20, 10, 6, 5, 1]
    assert GuardedWriter(mongo_db.x, False, str, concurrent_writers=3).chunk == 0


# --- a real SIGKILL of the step's process, with partitions half-done --------------------

_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    sys.path[:0] = [{project!r}, {tests!r}]
    from migration.steps.base import StepContext
    from migration.steps.mongo.transform import MongoTransform

    progress = Path({progress!r})

    def persist(fields):
        tmp = progress.with_suffix(".tmp")
        tmp.write_text(json.dumps(fields))
        with open(tmp) as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, progress)

    params = MongoTransform.Params(**json.loads({params!r}))
    ctx = StepContext(step_id="t", params=params, workdir=Path({workdir!r}), on_progress=persist)
    MongoTransform().run(ctx)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def test_sigkill_with_partitions_half_done_resumes_to_a_one_worker_result(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    count = 1500
    seed(mongo_db, "reference", count)
    seed(mongo_db, "killed", count)
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **COMMON)
    progress = tmp_path / "progress.json"
    params = json.dumps({"uri": mongo_url, "collection": "killed", "workers": 3, **COMMON})
    script = _CHILD.format(
        project=str(PROJECT), tests=str(PROJECT / "tests"), progress=str(progress),
        params=params, workdir=str(tmp_path / "work"),
    )  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while True:
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline
        if progress.exists():
            saved = json.loads(progress.read_text())
            if half_done(saved) >= 2:
                break
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    saved = json.loads(progress.read_text())
    assert half_done(saved) >= 2 and saved["counters"]["total"] < count
    # The workers die with the step's process: nothing writes behind the resumed run.
    owners = [int(p["owner"].rsplit(":", 1)[1]) for p in partitions_of(saved) if p["owner"]]
    assert owners
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in owners):
        assert time.monotonic() < deadline, f"workers {owners} outlived the step's process"
        time.sleep(0.05)

    outputs = transform(mongo_url, tmp_path / "work", collection="killed", resume=saved, workers=3, **COMMON)
    assert without_log(outputs) == without_log(reference)
    assert snapshot(mongo_db, "killed") == snapshot(mongo_db, "reference")
    assert records(outputs["log"]) == records(reference["log"])
