"""``migration history``: every run of every plan kept in a MongoDB state store."""

from __future__ import annotations

from typing import Any

from migration.store_mongo.connection import DEFAULT_PREFIX, Connection

# The keys of a history row, in the order the table shows them.
COLUMNS = (
    "plan",
    "run_id",
    "digest",
    "target",
    "hosts",
    "operator",
    "started_at",
    "finished_at",
    "status",
    "downtime_s",
)


def history(conn: Connection, plan: str | None = None) -> list[dict[str, Any]]:
    """One row per run, oldest first: plan, digest, target, hosts in order, operator, times, status."""
    where: dict[str, Any] = {"set_aside": {"$ne": True}}
    if plan:
        where["plan"] = plan
    with conn.errors("reading the history"):
        docs = list(conn.collection("runs").find(where, {"state_json": 0}))
    docs.sort(key=lambda d: (str(d.get("started_at") or ""), str(d.get("_id"))))
    return [
        {
            "plan": doc.get("plan"),
            "run_id": doc.get("run_id") or str(doc["_id"]),
            "digest": doc.get("plan_digest"),
            "target": doc.get("target"),
            "hosts": [h for h in doc.get("hosts") or [] if isinstance(h, str)],
            "operator": doc.get("operator"),
            "started_at": doc.get("started_at"),
            "finished_at": doc.get("finished_at"),
            "status": doc.get("status"),
            "downtime_s": doc.get("downtime_s"),
        }
        for doc in docs
    ]


def last_success(conn: Connection, plan: str, target: str | None) -> dict[str, Any] | None:
    """The latest succeeded run of ``plan`` against ``target`` (for ``run_once``), or None."""
    rows = [r for r in history(conn, plan) if r["status"] == "succeeded" and r["target"] == target]
    return rows[-1] if rows else None


def format_history(rows: list[dict[str, Any]]) -> str:
    """A plain table, one run a row."""
    if not rows:
        return "no runs\n"
    header = ["PLAN", "RUN", "DIGEST", "TARGET", "HOSTS", "OPERATOR", "START", "END", "STATUS", "DOWNTIME"]
    table = [header]
    for r in rows:
        downtime = r.get("downtime_s")
        table.append(
            [
                str(r.get("plan") or ""),
                str(r.get("run_id") or ""),
                str(r.get("digest") or "")[:12],
                str(r.get("target") or "-"),
                " > ".join(r.get("hosts") or []) or "-",
                str(r.get("operator") or "-"),
                str(r.get("started_at") or "-"),
                str(r.get("finished_at") or "-"),
                str(r.get("status") or "-"),
                f"{downtime:g} s" if isinstance(downtime, int | float) else "-",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join(lines) + "\n"


def open_history(url: str, prefix: str = DEFAULT_PREFIX) -> list[dict[str, Any]]:
    """History of the store at ``url`` (opens and closes its own connection)."""
    conn = Connection(url, prefix=prefix)
    try:
        return history(conn)
    finally:
        conn.close()
