#!/usr/bin/env python3
"""One measured operation, in its own process: ``child.py OPERATION '<json arguments>'``.

Prints one JSON line: ``seconds`` (the operation alone: imports and connecting
are done before the clock starts), ``peak_rss_kb`` (this process's VmHWM, the
high-water mark of its resident memory) and what the operation reports.

Operations: ``noop`` (the memory floor: imports and a connection), ``read``
(bare ``find_raw_batches`` in ``_id`` order, writing nothing), ``backup``
(the ``mongo.backup`` step), ``mongodump``, ``restore`` (the ``mongo.restore``
step), ``insert`` (bare ``insert_many`` of raw batches from a .bson file),
``mongorestore``, ``transform`` (the ``mongo.transform`` step; its worker processes' CPU
is added to ``cpu_seconds``), ``recipe`` (the bank-details recipe alone), ``bulk_floor``
(unordered ``bulk_write`` of ``UpdateOne`` by ``_id``: the write floor), ``naive`` (find,
then ``update_one`` per document, as a hand-written script does),
``update_many`` (one server-side statement), ``parallel_read`` (N threads
reading disjoint ``_id`` ranges), and for ``run.py --compare``: ``mongodump_db``
and ``mongorestore_db`` (the whole database, as a user runs them), ``naive_backup``
(``find()`` and ``bson.encode`` per document) and ``naive_restore`` (``bson.decode``
per document, ``insert_many``).

``cpu_seconds`` is this process's CPU (user + system, all threads) for the operation:
the client's cost, whatever the server costs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import pymongo  # noqa: E402
from bson.raw_bson import RawBSONDocument  # noqa: E402
from pymongo import monitoring  # noqa: E402

from migration.log import configure_logging  # noqa: E402
from migration.recipes.bank_details import InvalidValue, split_swift_bic_iban  # noqa: E402
from migration.steps.base import StepContext  # noqa: E402
from migration.steps.mongo import checksums, restore  # noqa: E402
from migration.steps.mongo.backup import MongoBackup  # noqa: E402
from migration.steps.mongo.dumpfmt import iter_documents  # noqa: E402
from migration.steps.mongo.restore import MongoRestore  # noqa: E402

COLLECTION = "PropertyBankDetails"
RECIPE = "migration.recipes.bank_details:split_swift_bic_iban"


class CommandTimes(monitoring.CommandListener):
    """Seconds spent waiting for each kind of server command (command monitoring).

    ``count_documents`` is an ``aggregate``; a cursor is ``find`` then ``getMore``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def _add(self, event: Any) -> None:
        name = "find+getMore" if event.command_name in ("find", "getMore") else event.command_name
        self.seconds[name] = self.seconds.get(name, 0.0) + event.duration_micros / 1e6
        self.calls[name] = self.calls.get(name, 0) + 1

    def started(self, event: Any) -> None:
        pass

    def succeeded(self, event: Any) -> None:
        self._add(event)

    def failed(self, event: Any) -> None:
        self._add(event)

    def summary(self) -> dict[str, Any]:
        keep = {k: v for k, v in self.seconds.items() if v >= 0.005}
        return {k: {"seconds": round(v, 3), "calls": self.calls[k]} for k, v in sorted(keep.items())}


COMMANDS = CommandTimes()
monitoring.register(COMMANDS)


def peak_rss_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def collection(url: str) -> Any:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
    client.admin.command("ping")
    return client.get_default_database()[COLLECTION]


def op_noop(args: dict[str, Any]) -> dict[str, Any]:
    collection(args["url"]).find_one({}, {"_id": 1})
    return {}


def op_read(args: dict[str, Any]) -> dict[str, Any]:
    coll = collection(args["url"])
    started = time.perf_counter()
    size = count = 0
    for batch in coll.find_raw_batches(sort=[("_id", 1)], batch_size=args.get("batch_size", 1000)):
        size += len(batch)
        count += checksums.count_in_buffer(batch)
    return {"seconds": time.perf_counter() - started, "bytes": size, "docs": count}


def op_count(args: dict[str, Any]) -> dict[str, Any]:
    """One exact ``count_documents({})``, as the backup takes before and after its dump."""
    coll = collection(args["url"])
    started = time.perf_counter()
    count = coll.count_documents({})
    return {"seconds": time.perf_counter() - started, "docs": count}


def op_lookup(args: dict[str, Any]) -> dict[str, Any]:
    """Median latency of one ``_id``-keyed statement: what every per-document write pays.

    ``seconds`` is ``find_one({_id})``; also ``update_one({_id})`` and the guarded form
    ``mongo.transform`` sends (``{_id, field: value-read}``). Touches a scratch field.
    """
    coll = collection(args["url"])
    limit = int(args.get("samples", 30))
    docs = list(coll.find({}, {"_id": 1, "account_holder_name": 1}, sort=[("_id", 1)], limit=limit))

    def median_of(statement: Any) -> float:
        latencies = []
        for number, doc in enumerate(docs):
            started = time.perf_counter()
            statement(number, doc)
            latencies.append(time.perf_counter() - started)
        return sorted(latencies)[len(latencies) // 2]

    found = median_of(lambda n, d: coll.find_one({"_id": d["_id"]}))
    plain = median_of(lambda n, d: coll.update_one({"_id": d["_id"]}, {"$set": {"bench_touch": n}}))
    guarded = median_of(
        lambda n, d: coll.update_one(
            {"_id": d["_id"], "account_holder_name": d.get("account_holder_name")},
            {"$set": {"bench_touch": -n}},
        )
    )
    return {
        "seconds": found,
        "update_one_ms": round(plain * 1000, 2),
        "guarded_update_one_ms": round(guarded * 1000, 2),
        "samples": len(docs),
    }


def op_parallel_read(args: dict[str, Any]) -> dict[str, Any]:
    """``workers`` threads each reading one ``_id`` range, as a parallel dump would."""
    coll = collection(args["url"])
    workers = int(args["workers"])
    ids = [d["_id"] for d in coll.find({}, {"_id": 1}, sort=[("_id", 1)])]
    bounds = [ids[len(ids) * k // workers] for k in range(workers)] + [None]
    sizes = [0] * workers
    started = time.perf_counter()

    def read(k: int) -> None:
        query: dict[str, Any] = {"_id": {"$gte": bounds[k]}}
        if bounds[k + 1] is not None:
            query["_id"]["$lt"] = bounds[k + 1]
        for batch in coll.find_raw_batches(query, sort=[("_id", 1)], batch_size=1000):
            sizes[k] += len(batch)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - started, "bytes": sum(sizes)}


def op_backup(args: dict[str, Any]) -> dict[str, Any]:
    if args.get("batch_size"):
        checksums.READ_BATCH_DOCS = int(args["batch_size"])
    out = Path(args["out"])
    params = MongoBackup.Params(
        uri=args["url"],
        out=str(out),
        verify=args.get("verify", "counts"),
        parallel_collections=int(args.get("parallel_collections", 4)),
    )
    ctx = StepContext(step_id="backup", params=params, workdir=out)
    started = time.perf_counter()
    outputs = MongoBackup().run(ctx)
    seconds = time.perf_counter() - started
    if not args.get("keep"):
        shutil.rmtree(outputs["path"], ignore_errors=True)
    return {
        "seconds": seconds,
        "bytes": outputs["bytes"],
        "docs": outputs["total_records"],
        "path": outputs["path"],
    }


def op_mongodump(args: dict[str, Any]) -> dict[str, Any]:
    out = Path(args["out"]) / f"mongodump-{os.getpid()}"
    started = time.perf_counter()
    subprocess.run(
        ["mongodump", f"--uri={args['url']}", f"--collection={COLLECTION}", f"--out={out}"],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.rglob("*.bson"))
    if not args.get("keep"):
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "bytes": size, "path": str(out)}


def op_restore(args: dict[str, Any]) -> dict[str, Any]:
    if args.get("batch_size"):
        restore.INSERT_BATCH_DOCS = int(args["batch_size"])
    params = MongoRestore.Params.model_validate(
        {
            "uri": args["url"],
            "from": args["from"],
            "drop": True,
            "allow_other_database": True,
            "verify": args.get("verify", "checksums"),
            "parallel_collections": int(args.get("parallel_collections", 4)),
            "insertion_workers": int(args.get("insertion_workers", 1)),
        }
    )
    ctx = StepContext(step_id="restore", params=params, workdir=Path(args["from"]))
    started = time.perf_counter()
    outputs = MongoRestore().run(ctx)
    seconds = time.perf_counter() - started
    manifest = json.loads((Path(args["from"]) / "backup-manifest.json").read_text())
    return {"seconds": seconds, "docs": outputs["total"], "bytes": manifest["totalBytes"]}


def op_insert(args: dict[str, Any]) -> dict[str, Any]:
    """What restore does minus the checks: drop, then ``insert_many`` of raw batches."""
    coll = collection(args["url"])
    coll.drop()
    size = int(args.get("batch_size", restore.INSERT_BATCH_DOCS))
    started = time.perf_counter()
    batch: list[RawBSONDocument] = []
    count = total_bytes = 0
    for raw in iter_documents(Path(args["file"])):
        batch.append(RawBSONDocument(raw))
        total_bytes += len(raw)
        if len(batch) >= size:
            coll.insert_many(batch, ordered=True)
            count += len(batch)
            batch = []
    if batch:
        coll.insert_many(batch, ordered=True)
        count += len(batch)
    return {"seconds": time.perf_counter() - started, "docs": count, "bytes": total_bytes}


def op_mongodump_db(args: dict[str, Any]) -> dict[str, Any]:
    """mongodump of the whole database, as a user runs it (4 collections at once by default)."""
    out = Path(args["out"]) / f"mongodump-{os.getpid()}"
    started = time.perf_counter()
    subprocess.run(["mongodump", f"--uri={args['url']}", f"--out={out}"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.rglob("*.bson"))
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "bytes": size}


def op_mongorestore_db(args: dict[str, Any]) -> dict[str, Any]:
    """mongorestore --drop of a backup's dump folder into the database of ``url``."""
    source, target = args["source_db"], args["target_db"]
    started = time.perf_counter()
    argv = ["mongorestore", f"--uri={args['url']}", "--drop", f"--nsFrom={source}.*", f"--nsTo={target}.*"]
    subprocess.run([*argv, args["from"]], check=True, capture_output=True)
    return {"seconds": time.perf_counter() - started}


def op_naive_backup(args: dict[str, Any]) -> dict[str, Any]:
    """The dump one writes by hand: find() every collection, bson.encode each document."""
    import bson

    coll = collection(args["url"])
    db = coll.database
    out = Path(args["out"]) / f"naive-{os.getpid()}"
    out.mkdir(parents=True)
    started = time.perf_counter()
    count = size = 0
    for name in sorted(db.list_collection_names()):
        with open(out / f"{name}.bson", "wb") as handle:
            for document in db[name].find({}, sort=[("_id", 1)]):
                data = bson.encode(document)
                handle.write(data)
                size += len(data)
                count += 1
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "docs": count, "bytes": size}


def op_naive_restore(args: dict[str, Any]) -> dict[str, Any]:
    """The restore one writes by hand: decode each document of each file, insert_many them."""
    import bson

    coll = collection(args["url"])
    db = coll.database
    cap = int(args.get("batch_size", 1000))
    started = time.perf_counter()
    count = 0
    for path in sorted(Path(args["from"]).glob("*.bson")):
        target = db[path.name.removesuffix(".bson")]
        target.drop()
        batch: list[Any] = []
        for raw in iter_documents(path):
            batch.append(bson.decode(raw))
            if len(batch) >= cap:
                target.insert_many(batch)
                count += len(batch)
                batch = []
        if batch:
            target.insert_many(batch)
            count += len(batch)
    return {"seconds": time.perf_counter() - started, "docs": count}


def op_mongorestore(args: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    subprocess.run(
        ["mongorestore", f"--uri={args['url']}", "--drop", f"--nsInclude=*.{COLLECTION}", args["from"]],
        check=True,
        capture_output=True,
    )
    return {"seconds": time.perf_counter() - started}


def op_transform(args: dict[str, Any]) -> dict[str, Any]:
    from migration.steps.mongo.transform import MongoTransform

    log_dir = Path(args["log_dir"])
    params = MongoTransform.Params(
        uri=args["url"],
        collection=COLLECTION,
        function=RECIPE,
        batch_size=int(args.get("batch_size", 500)),
        log_dir=str(log_dir),
        workers=int(args.get("workers", 1)),
    )
    ctx = StepContext(step_id="transform", params=params, workdir=log_dir)
    started = time.perf_counter()
    outputs = MongoTransform().run(ctx)
    seconds = time.perf_counter() - started
    keys = ("total", "migrated", "skipped", "invalid", "errors", "conflicts")
    return {"seconds": seconds, **{k: outputs.get(k) for k in keys}}


def op_bulk_floor(args: dict[str, Any]) -> dict[str, Any]:
    """The write floor: unordered ``bulk_write`` of one ``UpdateOne`` by ``_id`` per document.

    The same operators the recipe writes, in commands of ``chunk`` statements (20 on
    FerretDB 1.x, its cap). ``seconds`` and ``write_cpu_seconds`` cover the writes
    alone (the ``_id`` values are read first, untimed).
    """
    from pymongo import UpdateOne

    coll = collection(args["url"])
    ids = [d["_id"] for d in coll.find({}, {"_id": 1})]
    size = int(args.get("chunk", 1000))
    update = {"$set": {"iban_number": None, "swift_bic_number": None}, "$unset": {"swift_bic_iban": ""}}
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(ids), size):
        coll.bulk_write([UpdateOne({"_id": i}, update) for i in ids[start : start + size]], ordered=False)
    return {
        "seconds": time.perf_counter() - started,
        "write_cpu_seconds": round(time.process_time() - cpu, 4),
        "docs": len(ids),
    }


def op_recipe(args: dict[str, Any]) -> dict[str, Any]:
    """The bank-details recipe alone over the documents of a .bson file: its share of the CPU.

    ``seconds`` is the CPU time of the calls (decoding the file is not counted).
    """
    import bson

    docs = [bson.decode(raw) for raw in iter_documents(Path(args["file"]))]
    started = time.process_time()
    for document in docs:
        try:  # noqa: SIM105 - a context manager per call would be measured too
            split_swift_bic_iban(document)
        except InvalidValue:
            pass
    return {"seconds": time.process_time() - started, "docs": len(docs)}


def op_naive(args: dict[str, Any]) -> dict[str, Any]:
    """The script one writes by hand: read each document, compute, ``update_one`` it."""
    coll = collection(args["url"])
    started = time.perf_counter()
    migrated = invalid = 0
    for document in coll.find({}):
        try:
            update = split_swift_bic_iban(document)
        except InvalidValue:
            invalid += 1
            continue
        if update:
            coll.update_one({"_id": document["_id"]}, update)
            migrated += 1
    return {"seconds": time.perf_counter() - started, "migrated": migrated, "invalid": invalid}


EMPTY_VALUES = {"$in": [None, ""]}  # null also matches a missing field


def op_update_many(args: dict[str, Any]) -> dict[str, Any]:
    """One server-side statement: the empty values only, or every document (the write floor)."""
    coll = collection(args["url"])
    update = {
        "$set": {"iban_number": None, "swift_bic_number": None},
        "$unset": {"swift_bic_iban": ""},
    }
    query = {"swift_bic_iban": EMPTY_VALUES} if args["which"] == "empty" else {}
    started = time.perf_counter()
    result = coll.update_many(query, update)
    return {"seconds": time.perf_counter() - started, "migrated": result.modified_count}


OPERATIONS = {
    name.removeprefix("op_"): value
    for name, value in dict(globals()).items()
    if name.startswith("op_") and callable(value)
}


def main() -> int:
    operation, arguments = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    configure_logging("json", arguments.get("log_level", "warning"))
    cpu = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = OPERATIONS[operation](arguments)
    result["cpu_seconds"] = round(time.process_time() - cpu, 4)
    # Worker processes (mongo.transform workers) count as the client's CPU too.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if spent and operation == "transform":
        result["worker_cpu_seconds"] = round(spent, 4)
        result["cpu_seconds"] = round(result["cpu_seconds"] + spent, 4)
    if operation in ("backup", "restore", "transform"):
        result["server_commands"] = COMMANDS.summary()
    result.setdefault("seconds", 0.0)
    result["peak_rss_kb"] = peak_rss_kb()
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
