"""The ``mongo.preflight`` step type: can we reach the server, and will a backup fit?"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from migration.errors import StepError
from migration.steps.base import Preview, Step, StepContext, StepParams
from migration.steps.mongo.backup import collection_sizes
from migration.steps.mongo.common import (
    connect,
    free_disk_bytes,
    human_bytes,
    server_info,
    topology,
    user_collections,
)
from migration.steps.registry import register


@register
class MongoPreflight(Step["MongoPreflight.Params"]):
    """Check the server before a migration: version, topology, data size, free disk.

    Connects (a bad URI, an unreachable host within 5 s or refused credentials fail
    with one clear line), reads the server version and topology (``standalone``,
    ``replica set <name>`` or ``sharded``), counts and sizes every collection (from
    ``collStats``), and, given ``backup_path``, measures the free disk there (at the
    nearest folder that exists; nothing is created). Fails when the free disk is
    less than ``disk_factor`` times the data size, naming both figures. A dry run
    reads the same figures and reports a shortfall as a warning.

    Example:
        ```yaml
        - id: preflight
          uses: mongo.preflight
          with:
            uri: "{{ vars.db }}"
            backup_path: "{{ vars.backup_root }}"
            disk_factor: 2
        ```
    """

    name = "mongo.preflight"
    outside_effects = False
    outputs = {
        "version": "server version",
        "topology": "standalone, replica set <name> or sharded",
        "collections": "collection name -> {count, bytes}",
        "data_bytes": "data size of all collections",
        "free_bytes": "free disk at backup_path (null without it)",
        "needed_bytes": "disk_factor x data_bytes",
        "database": "database name",
        "ferretdb": "true on FerretDB",
        "measured_at": "the folder where free disk was measured (with backup_path)",
    }

    class Params(StepParams):
        uri: str = Field(description="connection string naming the database")
        backup_path: str | None = Field(default=None, description="where the backup will go")
        disk_factor: float = Field(default=2.0, gt=0, description="free disk >= factor x data")

    def _measure(self, ctx: StepContext[MongoPreflight.Params]) -> tuple[dict[str, Any], str]:
        """The figures, and the shortfall message ('' when the disk is large enough)."""
        params = ctx.params
        client, db = connect(params.uri)
        try:
            info = server_info(client)
            shape = topology(client)
            sizes = collection_sizes(db, user_collections(db))
        finally:
            client.close()
        data_bytes = sum(size for _, size in sizes.values())
        needed = int(params.disk_factor * data_bytes)
        outputs: dict[str, Any] = {
            "version": info["version"],
            "topology": shape,
            "collections": {name: {"count": count, "bytes": size} for name, (count, size) in sizes.items()},
            "data_bytes": data_bytes,
            "free_bytes": None,
            "needed_bytes": needed,
            "database": db.name,
            "ferretdb": info["ferretdb"],
        }
        shortfall = ""
        if params.backup_path is not None:
            probe, free = free_disk_bytes(ctx.path(params.backup_path))
            outputs["free_bytes"] = free
            outputs["measured_at"] = str(probe)
            if free < needed:
                shortfall = (
                    f"free disk at {params.backup_path}: {human_bytes(free)} < "
                    f"{params.disk_factor:g} × data {human_bytes(data_bytes)} "  # noqa: RUF001
                    f"(needs {human_bytes(needed)}; measured at {probe})"
                )
        return outputs, shortfall

    def run(self, ctx: StepContext[MongoPreflight.Params]) -> dict[str, Any]:
        outputs, shortfall = self._measure(ctx)
        ctx.log.info(
            "preflight",
            version=outputs["version"],
            topology=outputs["topology"],
            collections=len(outputs["collections"]),
            data=human_bytes(outputs["data_bytes"]),
            free=None if outputs["free_bytes"] is None else human_bytes(outputs["free_bytes"]),
        )
        if shortfall:
            raise StepError(shortfall, outputs=outputs)
        return outputs

    def preview(self, ctx: StepContext[MongoPreflight.Params]) -> str:
        outputs, shortfall = self._measure(ctx)
        lines = [
            f"server {outputs['version']} ({outputs['topology']}"
            + (", FerretDB" if outputs["ferretdb"] else "")
            + f"), database {outputs['database']}: {len(outputs['collections'])} collections, "
            f"data {human_bytes(outputs['data_bytes'])}"
        ]
        for name, figures in outputs["collections"].items():
            lines.append(f"  {name}: {figures['count']} documents, {human_bytes(figures['bytes'])}")
        if outputs["free_bytes"] is not None:
            lines.append(
                f"free disk at {ctx.params.backup_path}: {human_bytes(outputs['free_bytes'])} "
                f"(needs {ctx.params.disk_factor:g} × data = "  # noqa: RUF001
                f"{human_bytes(outputs['needed_bytes'])})"
            )
        if shortfall:
            lines.append(f"WARNING: {shortfall}")
        # The same read-only figures as the run: checkpoints over them are judged now.
        return Preview("\n".join(lines), problems=[shortfall] if shortfall else [], outputs=outputs)
