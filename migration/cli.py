"""The ``migration`` command: parse, call :mod:`migration.commands`, map errors to exit codes.

Machine-readable output goes to stdout; logs, progress and errors to stderr.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import structlog

from migration import commands, report, stores
from migration.errors import MigrationError
from migration.log import configure_logging, redactor
from migration.run_document import checkpoint_status
from migration.state import RunDoc, Status
from migration.store_mongo.history import format_history
from migration.stores import StoreChoice

F = TypeVar("F", bound=Callable[..., Any])

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory (default ./state; env MIGRATION_STATE_DIR).",
)
state_url_option = click.option(
    "--state-url",
    default=None,
    metavar="mongodb://HOST/DB",
    help="Keep the state in MongoDB (env MIGRATION_STATE_URL, or the plan's state:); wins over --state-dir.",
)
lease_seconds_option = click.option(
    "--lease-seconds",
    type=float,
    default=None,
    help="Lease length with --state-url (default 30; env MIGRATION_LEASE_SECONDS).",
)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {redactor().text(message)}", err=True)
    sys.exit(code)


def store_options(fn: F) -> F:
    """``--state-dir``, ``--state-url`` and ``--lease-seconds``, given to the command as ``store``."""

    @wraps(fn)
    def wrapper(
        *args: Any,
        state_dir: Path | None,
        state_url: str | None,
        lease_seconds: float | None,
        **kwargs: Any,
    ) -> Any:
        try:
            store = stores.choose(state_dir, state_url, lease_seconds)
        except MigrationError as exc:  # applied outside handle_errors on some commands
            _fail(str(exc), exc.exit_code)
        return fn(*args, store=store, **kwargs)

    return state_dir_option(state_url_option(lease_seconds_option(wrapper)))  # type: ignore[return-value]


log_format_option = click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="Console on a terminal, JSON lines otherwise.",
)
var_option = click.option(
    "--var", "var_pairs", multiple=True, metavar="K=V", help="Override a plan variable (repeatable)."
)
env_file_option = click.option("--env-file", default=None, help="Load environment variables from this file.")
yes_option = click.option("--yes", "assume_yes", is_flag=True, help="Pass confirm gates without a terminal.")
allow_plan_change_option = click.option(
    "--allow-plan-change", is_flag=True, help="Resume although the plan file changed."
)


def plan_inputs(fn: F) -> F:
    """The options that feed a plan: ``--var`` and ``--env-file``."""
    return var_option(env_file_option(fn))


def run_options(fn: F) -> F:
    """The options of every command that runs steps (run, resume, rollback)."""
    return store_options(plan_inputs(yes_option(fn)))


def handle_errors(fn: F) -> F:
    """The one place where errors become a line on stderr and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MigrationError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:
            with tempfile.NamedTemporaryFile(
                "w", prefix="migration-crash-", suffix=".log", delete=False
            ) as fh:
                fh.write(redactor().text("".join(traceback.format_exception(exc))))
            _fail(f"internal error: {type(exc).__name__}: {exc} (traceback in {fh.name})", 1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="migration")
def main() -> None:
    """Run production database migrations as checkpointed, resumable plans."""


def _summarise(state: RunDoc, fmt: str) -> None:
    """How a finished run or resume ends: a table on a terminal, one readable JSON line otherwise."""
    if fmt == "console":
        _print_summary(state)
    else:  # a pipe or a log collector: one JSON line that a person can read too
        structlog.get_logger("migration").info(report.summary_line(state), status=state["status"])


def _print_summary(state: RunDoc) -> None:
    lines = [f"run {state['run_id']}: {state['status']}"]
    for phase in state.get("phases", []):
        cp = checkpoint_status(phase)
        lines.append(
            f"  {phase['id']:<24} {phase['status']:<10}"
            + (f" checkpoint {cp}" if cp not in (None, Status.NONE, Status.PENDING) else "")
        )
        for st in phase.get("steps", []):
            lines.append(f"    {st['id']:<22} {st['status']:<10} {report.fmt_seconds(st.get('duration_s'))}")
    dt = report.downtime(state)
    if dt is not None:
        lines.append(f"  downtime: {report.fmt_seconds(dt['seconds'])} ({dt['note']})")
    click.echo("\n".join(lines), err=True)


@main.command()
@click.argument("plan")
@click.option("--dry-run", is_flag=True, help="Show what would run; change and write nothing.")
@run_options
@click.option("--fresh", is_flag=True, help="Start a new run (the old one must be finished or abandoned).")
@click.option("--again", is_flag=True, help="Run a run_once plan again where it already succeeded.")
@allow_plan_change_option
@log_format_option
@handle_errors
def run(
    plan: str,
    dry_run: bool,
    store: StoreChoice,
    var_pairs: tuple[str, ...],
    env_file: str | None,
    assume_yes: bool,
    fresh: bool,
    again: bool,
    allow_plan_change: bool,
    log_format: str,
) -> None:
    """Run PLAN, or resume its unfinished run."""
    fmt = configure_logging(log_format)
    request = commands.RunRequest(
        plan_path=plan,
        store=store,
        again=again,
        var_pairs=var_pairs,
        env_file=env_file,
        dry_run=dry_run,
        assume_yes=assume_yes,
        fresh=fresh,
        allow_plan_change=allow_plan_change,
        show_progress_bars=fmt == "console",
    )
    if dry_run:
        text, code = commands.dry_run(request)
        click.echo(text, nl=False)
        if code:  # the problems end the preview on stdout; say so where errors go
            structlog.get_logger("migration").error(
                "dry run: the run would fail; the problems end the preview", exit=code
            )
        sys.exit(code)
    state = commands.run(request)
    _summarise(state, fmt)


@main.command()
@click.argument("plan")
@run_options
@allow_plan_change_option
@log_format_option
@handle_errors
def resume(
    plan: str,
    store: StoreChoice,
    var_pairs: tuple[str, ...],
    env_file: str | None,
    assume_yes: bool,
    allow_plan_change: bool,
    log_format: str,
) -> None:
    """Resume PLAN's unfinished run (an error if there is none)."""
    fmt = configure_logging(log_format)
    request = commands.RunRequest(
        plan_path=plan,
        store=store,
        var_pairs=var_pairs,
        env_file=env_file,
        assume_yes=assume_yes,
        allow_plan_change=allow_plan_change,
        resume_only=True,
        show_progress_bars=fmt == "console",
    )
    state = commands.run(request)
    _summarise(state, fmt)


@main.command()
@click.argument("plan", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
@store_options
def status(plan: str | None, as_json: bool, store: StoreChoice) -> None:
    """Show the latest run of PLAN (or of every plan)."""
    configure_logging("auto")
    rows = commands.status(plan, store)
    if as_json:
        click.echo(json.dumps(rows[0] if plan and rows else rows, indent=2, default=str))
    else:
        click.echo(commands.format_status(rows), nl=False)


@main.command()
@click.argument("plan")
@plan_inputs
@handle_errors
def validate(plan: str, var_pairs: tuple[str, ...], env_file: str | None) -> None:
    """Check PLAN statically: no connections, nothing run."""
    configure_logging("auto")
    warnings = commands.validate(plan, var_pairs, env_file)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"{plan}: ok", err=True)


@main.command()
@click.argument("plan")
@run_options
@log_format_option
@handle_errors
def rollback(
    plan: str,
    store: StoreChoice,
    var_pairs: tuple[str, ...],
    env_file: str | None,
    assume_yes: bool,
    log_format: str,
) -> None:
    """Run the rollback for PLAN's latest run (or finish one that stopped)."""
    fmt = configure_logging(log_format)
    request = commands.RunRequest(
        plan_path=plan,
        store=store,
        var_pairs=var_pairs,
        env_file=env_file,
        assume_yes=assume_yes,
        show_progress_bars=fmt == "console",
    )
    state = commands.rollback(request)
    click.echo(f"run {state['run_id']}: {state['status']}", err=True)


@main.command()
@click.argument("plan")
@click.option(
    "--backup",
    required=True,
    help="Backup to rehearse on: a mongo.backup folder (with its manifest) or a mongodump folder.",
)
@plan_inputs
@click.option(
    "--database", default=None, help="Database the copy is restored into (default: the one the plan names)."
)
@click.option(
    "--estimate",
    "estimates",
    multiple=True,
    metavar="STEP=SECONDS",
    help="How long a skipped step takes, for the projected downtime (repeatable).",
)
@click.option("--keep-server", is_flag=True, help="Leave the copy running afterwards, to inspect it.")
@click.option(
    "--backend",
    type=click.Choice(["postgresql", "sqlite"]),
    default=None,
    help="Rehearsal server backend (default: $MIGRATION_TESTDB_BACKEND or postgresql).",
)
@log_format_option
@handle_errors
def rehearse(
    plan: str,
    backup: str,
    var_pairs: tuple[str, ...],
    env_file: str | None,
    database: str | None,
    estimates: tuple[str, ...],
    keep_server: bool,
    backend: str | None,
    log_format: str,
) -> None:
    """Rehearse PLAN on a throwaway local copy of a backup; the plan's database is never touched."""
    fmt = configure_logging(log_format)
    request = commands.RehearseRequest(
        plan_path=plan,
        backup=backup,
        var_pairs=var_pairs,
        env_file=env_file,
        database=database,
        backend=backend,
        keep_server=keep_server,
        estimates=estimates,
        show_progress_bars=fmt == "console",
    )
    result = commands.rehearse(request)
    click.echo(result.text, nl=False)
    if result.failure is not None:
        raise result.failure


@main.command()
@click.argument("plan")
@handle_errors
@store_options
def abandon(plan: str, store: StoreChoice) -> None:
    """Mark PLAN's unfinished run abandoned (undoes nothing) so a new run can start."""
    configure_logging("auto")
    state = commands.abandon(plan, store)
    click.echo(
        f"run {state['run_id']} abandoned (was {state['abandoned_from']}); "
        f"the next `migration run` starts a new run",
        err=True,
    )


@main.command()
@click.argument("name", required=False)
@handle_errors
def steps(name: str | None) -> None:
    """List step types with their parameters and outputs; with NAME, that one in full."""
    click.echo(commands.show_step(name) if name else commands.list_steps(), nl=False)


@main.command()
@handle_errors
def schema() -> None:
    """Print the JSON Schema of the plan format."""
    click.echo(commands.schema(), nl=False)


@main.command(name="report")
@click.argument("plan")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option("--run", "run_id", default=None, help="A run id (default: the latest run).")
@handle_errors
@store_options
def report_command(plan: str, fmt: str, run_id: str | None, store: StoreChoice) -> None:
    """Print a report of PLAN's latest run (or --run RUN_ID)."""
    click.echo(commands.make_report(plan, fmt, run_id, store), nl=False)


@main.command()
@click.argument("plan", required=False)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of runs.")
@handle_errors
@store_options
def history(plan: str | None, as_json: bool, store: StoreChoice) -> None:
    """List every run of every plan in the store (or of PLAN): hosts, operator, times, status."""
    configure_logging("auto")
    rows = commands.history(store, plan)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        click.echo(format_history(rows), nl=False)


if __name__ == "__main__":
    main(prog_name="migration")
