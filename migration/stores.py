"""Which store keeps the state of a command: files under ``STATE_DIR``, or a MongoDB database.

``--state-url`` (or ``MIGRATION_STATE_URL``, or the plan's ``state:`` key) selects the
MongoDB store and wins over ``--state-dir``/``MIGRATION_STATE_DIR``; without any of
them the file store is used, as always.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration import report
from migration.errors import MigrationError, UsageError
from migration.plan import templates
from migration.secrets import Redactor, mask_url
from migration.state import StateBackend, StateStore, operator_name
from migration.store_mongo import LeaseLost, MongoStateStore
from migration.store_mongo.connection import Connection, describe_target, parse_seconds
from migration.store_mongo.history import history as mongo_history
from migration.store_mongo.history import last_success as mongo_last_success
from migration.store_mongo.store import DEFAULT_LEASE_SECONDS


def default_state_dir() -> Path:
    return Path(os.environ.get("MIGRATION_STATE_DIR") or "state")


@dataclass(frozen=True)
class StoreChoice:
    """Where a command keeps its state: ``url`` (MongoDB) when set, else ``state_dir``."""

    state_dir: Path
    url: str | None = None
    lease_seconds: float | None = None

    @property
    def where(self) -> str:
        return mask_url(self.url) if self.url else str(self.state_dir)

    def with_plan_state(self, plan_state: str | None, env: Mapping[str, str]) -> StoreChoice:
        """The choice once the plan is known: its ``state:`` key, if no URL was given."""
        if self.url or not plan_state:
            return self
        return StoreChoice(self.state_dir, render_state_url(plan_state, env), self.lease_seconds)


def choose(
    state_dir: Path | None = None, url: str | None = None, lease_seconds: float | None = None
) -> StoreChoice:
    """The store given by the options, then the environment (the plan may add its ``state:``)."""
    url = url or os.environ.get("MIGRATION_STATE_URL") or None
    if url is not None and "://" not in url:
        raise UsageError(f"the state URL {url!r} is not a mongodb:// URL (mongodb://HOST/DB)")
    # MIGRATION_LEASE_SECONDS is read (and checked) by the MongoDB store, only when one is used.
    seconds = (
        parse_seconds(lease_seconds, DEFAULT_LEASE_SECONDS, "--lease-seconds")
        if lease_seconds is not None
        else None
    )
    return StoreChoice(state_dir if state_dir is not None else default_state_dir(), url, seconds)


def render_state_url(value: str, env: Mapping[str, str]) -> str:
    """A plan's ``state:`` value: a plain URL or a template over ``env`` only."""
    if templates.is_template(value):
        try:
            rendered = templates.render_value(value, {"env": env, "vars": {}, "steps": {}, "run": {}})
        except templates.TemplateError as exc:
            raise UsageError(f"state: {exc} (only env is available there)") from None
        value = str(rendered)
    if "://" not in value:
        raise UsageError(f"state: {mask_url(value)!r} is not a mongodb:// URL (mongodb://HOST/DB)")
    return value


def open_store(
    choice: StoreChoice,
    plan_name: str,
    redact: Redactor | None = None,
    *,
    target: str | None = None,
    on_lease_lost: Callable[[LeaseLost], None] | None = None,
) -> StateBackend:
    """The store of one plan (nothing is locked yet: see ``acquire``)."""
    if choice.url:
        return MongoStateStore(
            choice.url,
            plan_name,
            redact,
            target=target,
            lease_seconds=choice.lease_seconds,
            local_dir=choice.state_dir / plan_name,
            on_lease_lost=on_lease_lost,
        )
    return StateStore(choice.state_dir, plan_name, redact)


def plan_names(choice: StoreChoice) -> list[str]:
    """Every plan with a current run in the store (``migration status`` without a plan)."""
    if choice.url:
        conn = Connection(choice.url)
        try:
            with conn.errors("listing plans"):
                docs = conn.collection("current").find({"plan": {"$exists": True}}, {"plan": 1})
                return sorted({str(doc["plan"]) for doc in docs})
        finally:
            conn.close()
    root = choice.state_dir
    if not root.exists():
        return []
    return sorted(p.name for p in root.glob("*") if p.is_dir() and (p / "current").exists())


def history(choice: StoreChoice, plan: str | None = None) -> list[dict[str, Any]]:
    """One row per run (oldest first) of every plan in the store, or of ``plan``."""
    if choice.url:
        conn = Connection(choice.url)
        try:
            return mongo_history(conn, plan)
        finally:
            conn.close()
    return _file_history(choice.state_dir, plan)


def last_success(choice: StoreChoice, plan: str, target: str | None) -> dict[str, Any] | None:
    """The latest succeeded run of ``plan`` against ``target`` (None: never)."""
    if choice.url:
        conn = Connection(choice.url)
        try:
            return mongo_last_success(conn, plan, target)
        finally:
            conn.close()
    rows = [r for r in _file_history(choice.state_dir, plan) if r["status"] == "succeeded"]
    rows = [r for r in rows if r["target"] == target]
    return rows[-1] if rows else None


def _file_history(root: Path, plan: str | None) -> list[dict[str, Any]]:
    """History from the run files under ``root``; the hosts are those the run documents name."""
    names = [plan] if plan else sorted(p.name for p in root.glob("*") if p.is_dir()) if root.exists() else []
    rows: list[dict[str, Any]] = []
    for name in names:
        store = StateStore(root, name)
        for run_id in store.list_runs():
            try:
                state: Any = store.load(run_id)
            except MigrationError:  # a damaged run is still a row of the history
                rows.append({"plan": name, "run_id": run_id, "status": "unreadable", "hosts": []})
                continue
            hosts = [h for h in state.get("hosts") or [state.get("host")] if isinstance(h, str)]
            downtime = (report.downtime(state) or {}).get("seconds")
            rows.append(
                {
                    "plan": name,
                    "run_id": run_id,
                    "digest": state.get("plan_digest"),
                    "target": state.get("target"),
                    "hosts": hosts,
                    "operator": state.get("operator"),
                    "started_at": state.get("started_at"),
                    "finished_at": state.get("finished_at"),
                    "status": state.get("status"),
                    "downtime_s": downtime,
                }
            )
    rows.sort(key=lambda r: (str(r.get("started_at") or ""), str(r["run_id"])))
    return rows


def target_of(uris: list[str]) -> str | None:
    """The database a plan migrates, without credentials: the first ``uri`` its steps render to."""
    return describe_target(uris[0]) if uris else None


__all__ = [
    "StoreChoice",
    "choose",
    "default_state_dir",
    "history",
    "last_success",
    "open_store",
    "operator_name",
    "plan_names",
    "render_state_url",
    "target_of",
]
