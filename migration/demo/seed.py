"""Write the demo VNP dataset into a database; ``python -m migration.demo.seed``.

    python -m migration.demo.seed --uri mongodb://127.0.0.1:27017/vnp --size small
    python -m migration.demo.seed --uri "$DATABASE_URL" --size 1000000 --seed 7
    python -m migration.demo.seed --size small --expected     # no database needed

Prints the documents inserted per collection as JSON on stdout (``--expected``:
the ``swift_bic_iban`` distribution the recipe will find); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from migration.demo.dataset import (
    COLLECTIONS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_PROFILE,
    PROFILES,
    SeedError,
    collection_counts,
    expected_distribution,
    generate,
)
from migration.errors import MigrationError

# The unique indexes `prisma db push` creates for the VNP schema, plus one lookup index.
INDEXES: dict[str, list[tuple[str, str, bool]]] = {
    "User": [("email", "User_email_key", True)],
    "Property": [("portfolioId", "Property_portfolioId_idx", False)],
    "PropertyBankDetails": [("propertyId", "PropertyBankDetails_propertyId_key", True)],
}


def seed(
    uri: str,
    size: str | int = "small",
    seed: int = 42,
    drop: bool = True,
    *,
    profile: str = DEFAULT_PROFILE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, int]:
    """Fill the database named in ``uri`` with a VNP dataset; returns documents per collection.

    Args:
        uri: MongoDB URI naming the database.
        size: ``"small"`` (the guide's figures) or a number of properties.
        seed: the same seed gives the same documents, ids included.
        drop: drop the dataset's collections first; otherwise they must be empty.
        profile: ``messy`` (all kinds of swift_bic_iban values) or ``guide``.
        batch_size: documents per ``insert_many``; memory stays flat whatever the size.
        progress: called as ``progress(collection, inserted, total)`` after each batch.

    Raises:
        SeedError: bad size, profile or batch size, or a collection already holds data.
        migration.errors.StepError: the database cannot be reached.
    """
    from migration.steps.mongo.common import connect

    counts = collection_counts(size)
    expected_distribution(size, seed, profile)  # validates the profile before connecting
    if batch_size < 1:
        raise SeedError(f"batch_size must be at least 1, not {batch_size}")
    client, db = connect(uri)
    try:
        existing = set(db.list_collection_names())
        for name in COLLECTIONS:
            if drop:
                db.drop_collection(name)
            elif name in existing and db[name].estimated_document_count() > 0:
                raise SeedError(
                    f"collection {name} already has documents; drop it first "
                    "(drop=True; on the command line, omit --no-drop)"
                )
        inserted: dict[str, int] = {}
        for name in COLLECTIONS:
            done = 0
            batch: list[dict[str, Any]] = []
            for document in generate(name, size, seed, profile):
                batch.append(document)
                if len(batch) >= batch_size:
                    db[name].insert_many(batch, ordered=True)
                    done += len(batch)
                    batch = []
                    if progress is not None:
                        progress(name, done, counts[name])
            if batch:
                db[name].insert_many(batch, ordered=True)
                done += len(batch)
                if progress is not None:
                    progress(name, done, counts[name])
            for field, index_name, unique in INDEXES.get(name, []):
                db[name].create_index([(field, 1)], name=index_name, unique=unique)
            inserted[name] = done
        return inserted
    finally:
        client.close()


class _ProgressPrinter:
    """One stderr line per collection finished, and at most one every few seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.last = time.monotonic()
        self.started = self.last

    def __call__(self, collection: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= self.every:
            self.last = now
            rate = done / max(now - self.started, 1e-9)
            print(
                f"seed: {collection}: {done}/{total} ({rate:,.0f} docs/s)",
                file=sys.stderr,
                flush=True,
            )
            if done >= total:
                self.started = now


def _size(text: str) -> str | int:
    value = text.strip().lower()
    if value == "small":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected 'small' or a number of properties, not {text!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m migration.demo.seed",
        description="Seed a realistic VNP Dashboard database (for the migration demo).",
    )
    parser.add_argument(
        "--uri",
        default=os.environ.get("DATABASE_URL"),
        help="MongoDB URI naming the database (default: $DATABASE_URL)",
    )
    parser.add_argument(
        "--size",
        type=_size,
        default="small",
        help="'small' (15 users, 45 properties, 42 bank details) or a number "
        "of properties (every collection scales with it)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=DEFAULT_PROFILE,
        help="swift_bic_iban mix: messy (default, includes invalid values) "
        "or guide (the guide's 15 IBAN / 25 SWIFT / 2 empty)",
    )
    parser.add_argument(
        "--no-drop", action="store_true", help="do not drop the collections first (they must be empty)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"documents per insert (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--expected",
        action="store_true",
        help="print the swift_bic_iban distribution this seed generates "
        "and exit, without touching a database",
    )
    args = parser.parse_args(argv)  # fmt: skip
    try:
        if args.expected:
            result = expected_distribution(args.size, args.seed, args.profile)
        else:
            if not args.uri:
                parser.error("no database: pass --uri or set DATABASE_URL")
            result = seed(
                args.uri,
                args.size,
                args.seed,
                drop=not args.no_drop,
                profile=args.profile,
                batch_size=args.batch_size,
                progress=_ProgressPrinter(),
            )
    except (SeedError, MigrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
