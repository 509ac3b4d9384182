"""Demo data for plans/examples/ecommerce-orders.yaml: customers and orders in their old shape.

Orders keep ``ordered_at`` as ISO 8601 text, ``status`` in mixed case and
``total`` as text, and name their customer only by ``customer_id``, which the
plan turns into a Date, lower case, a number and a denormalised
``customer_name``. ``broken`` orders get a date no format reads (to see the
plan stop and roll back). Called by the plan's ``python`` step when run with
``--var seed=true``; refuses a database that already has orders.
"""

from __future__ import annotations

import random
from typing import Any

from pymongo import MongoClient

from migration.errors import StepError

STATUSES = ["NEW", "Paid", "SHIPPED", "delivered", "Cancelled"]
# FerretDB 1.x hangs on an insert of 50 documents or more in one command.
INSERT_CHUNK = 40


def seed(uri: str, customers: int = 200, orders: int = 2000, broken: int = 0) -> dict[str, int]:
    rng = random.Random(20240301)
    client: MongoClient[Any] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        db = client.get_default_database()
        if db.orders.estimated_document_count():
            raise StepError(f"database {db.name!r} already has orders: seed an empty one")
        people = [
            {"_id": c, "name": f"Customer {c:04d}", "email": f"c{c}@example.com"} for c in range(customers)
        ]
        rows = []
        for i in range(orders):
            day, hour = 1 + i % 28, rng.randrange(24)
            offset = rng.choice(["Z", "+02:00", "-05:00", ""])
            rows.append(
                {
                    "_id": i,
                    "customer_id": rng.randrange(customers),
                    "ordered_at": f"2024-03-{day:02d}T{hour:02d}:{rng.randrange(60):02d}:00{offset}",
                    "status": rng.choice(STATUSES),
                    "total": f"{rng.randrange(100, 50000) / 100:.2f}",
                }
            )
        for row in rows[:broken]:
            row["ordered_at"] = "last Tuesday"
        for name, docs in (("customers", people), ("orders", rows)):
            for start in range(0, len(docs), INSERT_CHUNK):
                db[name].insert_many(docs[start : start + INSERT_CHUNK])
        return {"customers": customers, "orders": orders}
    finally:
        client.close()
