#!/usr/bin/env python3
"""How ``mongo.transform`` scales: seed N documents, time the transform, compare sizes.

    python bench/transform_scaling.py                      # 50,000 and 100,000
    python bench/transform_scaling.py --sizes 5000 10000 20000
    python bench/transform_scaling.py --url mongodb://127.0.0.1:27017/

Without ``--url`` (or ``MIGRATION_TEST_MONGO_URL``) it starts the project's test
server (FerretDB 1.24, ``scripts/testdb.py``) and stops it afterwards. Each size
gets a fresh database with N ``PropertyBankDetails``-like documents (IBANs,
BICs, empty values) transformed by the bank-details recipe. Prints one JSON
line per size (seconds, documents per second, and the median latency of one
guarded update at that size, which shows whether the server finds a document
by ``_id`` through an index), then the ratio of the largest to the smallest
size's time: ~2x for 2x the documents is linear, ~4x quadratic. ``--latency-only``
seeds and times single guarded updates without the transform (quick, for sizes
where a quadratic server would take hours).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pymongo
import structlog
from bson import ObjectId

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "scripts"))

from migration.recipes.bank_details import make_iban  # noqa: E402
from migration.steps.base import StepContext  # noqa: E402
from migration.steps.mongo.transform import MongoTransform  # noqa: E402

BICS = ["HSBCGB2LXXX", "DEUTDEFF", "BNPAFRPPXXX", "NWBKGB2L", "COBADEFFXXX"]


def seed(db: Any, n: int, rng: random.Random) -> None:
    docs = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.4:
            value: str | None = make_iban("GB", f"WEST{rng.randrange(10**14):014d}")
        elif kind < 0.9:
            value = rng.choice(BICS)
        else:
            value = rng.choice(["", None])
        docs.append(
            {
                "_id": ObjectId(),
                "propertyId": ObjectId(),
                "bank_name": f"Bank {i % 97}",
                "account_name": f"Account holder {i}",
                "swift_bic_iban": value,
            }
        )
        if len(docs) == 5000:
            db.PropertyBankDetails.insert_many(docs, ordered=False)
            docs = []
    if docs:
        db.PropertyBankDetails.insert_many(docs, ordered=False)


def update_latency_ms(db: Any, samples: int = 30) -> float:
    """Median time of one guarded update ({_id, field: value}) at the current size."""
    ids = [d["_id"] for d in db.PropertyBankDetails.find({}, {"_id": 1}).limit(samples)]
    times = []
    for doc_id in ids:
        start = time.perf_counter()
        db.PropertyBankDetails.update_one(
            {"_id": doc_id, "bank_name": {"$exists": True}}, {"$set": {"bench_probe": 1}}
        )
        times.append(time.perf_counter() - start)
    db.PropertyBankDetails.update_many({"bench_probe": 1}, {"$unset": {"bench_probe": ""}})
    return statistics.median(times) * 1000


def measure(url: str, n: int, batch_size: int, seed_value: int, latency_only: bool) -> dict[str, Any]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    database_url = url.rstrip("/") + "/" + name
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(database_url)
    db = client[name]
    try:
        start = time.perf_counter()
        seed(db, n, random.Random(seed_value))
        seeded = time.perf_counter() - start
        latency = update_latency_ms(db)
        if latency_only:
            return {"documents": n, "guarded_update_ms": round(latency, 2), "seed_seconds": round(seeded, 2)}
        params = MongoTransform.Params(
            uri=database_url,
            collection="PropertyBankDetails",
            function="migration.recipes.bank_details:split_swift_bic_iban",
            batch_size=batch_size,
            max_errors=n,
        )
        with tempfile.TemporaryDirectory(prefix="bench-transform-") as workdir:
            ctx = StepContext(step_id="bench", params=params, workdir=Path(workdir))
            start = time.perf_counter()
            outputs = MongoTransform().run(ctx)
            elapsed = time.perf_counter() - start
        assert outputs["total"] == n, outputs
        return {
            "documents": n,
            "seconds": round(elapsed, 2),
            "docs_per_second": round(n / elapsed, 1),
            "guarded_update_ms": round(latency, 2),
            "seed_seconds": round(seeded, 2),
            "migrated": outputs["migrated"],
        }
    finally:
        client.drop_database(name)
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("MIGRATION_TEST_MONGO_URL"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="seed and time single guarded updates, without running the transform",
    )
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    server = None
    url = args.url
    if not url:
        import testdb

        server = testdb.start()
        url = server.url
        print(f"started FerretDB ({server.backend}) at {url}", file=sys.stderr)
    try:
        results = []
        for n in args.sizes:
            result = measure(url, n, args.batch_size, args.seed, args.latency_only)
            results.append(result)
            print(json.dumps(result), flush=True)
        if len(results) > 1 and not args.latency_only:
            small, large = results[0], results[-1]
            print(
                json.dumps(
                    {
                        "size_ratio": round(large["documents"] / small["documents"], 2),
                        "time_ratio": round(large["seconds"] / small["seconds"], 2),
                    }
                ),
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
