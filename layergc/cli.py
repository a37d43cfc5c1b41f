"""The `layergc` command: sweep, serve, report, db upgrade.

Exit status (DESIGN.md): 0 on success, 1 when the run had errors, 2 on bad
usage or configuration. `--json` prints one JSON object on stdout; logs and
progress go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from layergc.errors import ConfigError, LayergcError
from layergc.signals import stop_on_signals

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2

F = Callable[..., Any]


def _storage_options(fn: F) -> F:
    options = [
        click.option(
            "--root",
            type=click.Path(file_okay=False),
            help="Filesystem storage root (the registry's rootdirectory).",
        ),
        click.option(
            "--registry-config",
            type=click.Path(dir_okay=False),
            help="The Go registry's config.yml: its storage, cache and redis sections are used.",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="layergc TOML config file.",
        ),
        click.option("--db", help="Index database URL or SQLite file (default: ./layergc.db)."),
        click.option(
            "--dry-run/--no-dry-run", default=None, help="Record and report; delete nothing."
        ),
        click.option(
            "--delete-untagged/--keep-untagged",
            default=None,
            help="Also delete manifests no tag, index or subject keeps.",
        ),
        click.option(
            "--upload-timeout",
            help="Purge uploads started longer ago than this (Go duration, default 168h).",
        ),
        click.option(
            "--grace", help="Delete garbage only once it is older than this (default 24h)."
        ),
        click.option(
            "--settle", help="Wait of the delete protocol for in-flight requests (default 5s)."
        ),
        click.option(
            "--after-delete-command",
            help="Run after blobs are quarantined (e.g. restart a registry with in-memory cache).",
        ),
        click.option(
            "--after-delete-timeout", help="Timeout of --after-delete-command (default 120s)."
        ),
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default=None,
            help="Log format on stderr.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error", "critical"]),
            default=None,
            help="Log level on stderr (sweep: warning unless set, serve: info).",
        ),
        click.option("-v", "--verbose", count=True, help="More logging."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings(config_file: str | None, values: dict[str, Any]) -> Any:
    from layergc.config import load_settings

    cli = {k: v for k, v in values.items() if v is not None and k != "verbose"}
    try:
        return load_settings(cli, config_file=config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _configure_logging(settings: Any, verbose: int, *, quiet_default: bool) -> None:
    """-v and -vv win; then the configured level, except that a one-shot sweep
    (quiet_default) keeps stderr to warnings unless a level other than the
    default was asked for."""
    from layergc.logs import configure_logging

    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    elif quiet_default and settings.log_level == "info":
        level = logging.WARNING
    else:
        level = logging.getLevelName(settings.log_level.upper())
    configure_logging(settings.log_format or "text", level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="layergc")
def main() -> None:
    """Garbage collector for CNCF distribution (docker-registry) storage."""


@main.command()
@_storage_options
@click.option(
    "--json", "as_json", is_flag=True, default=None, help="Print the report as one JSON object."
)
def sweep(config_file: str | None, verbose: int, as_json: bool | None, **values: Any) -> None:
    """Find and delete stale uploads and unreferenced blobs, once."""
    from layergc.gc import prefetch

    values["json"] = as_json
    settings = _settings(config_file, values)
    # Forked before the imports below (half a second, the disk idle meanwhile).
    warming = prefetch.start(settings.storage)
    try:
        report = _sweep_once(settings, verbose)
    finally:
        if warming is not None:
            warming.stop()
    if settings.json:
        from layergc.gc.index import json_text  # loaded already, by run_sweep

        click.echo(json_text(report))
    else:
        from layergc.summary import render

        click.echo(render(report))
    sys.exit(EXIT_OK if report["status"] == "succeeded" and not report["errors"] else EXIT_ERRORS)


def _sweep_once(settings: Any, verbose: int) -> dict[str, Any]:
    from layergc.gc.run import run_sweep
    from layergc.progress import Progress

    _configure_logging(settings, verbose, quiet_default=True)
    progress = Progress()
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            return run_sweep(settings, progress=progress, stop=stop, take_lease=True)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except LayergcError as exc:
        click.echo(f"layergc: {exc}", err=True)
        sys.exit(EXIT_ERRORS)
    finally:
        progress.close()


@main.command()
@_storage_options
@click.option("--schedule", help='Cron expression for sweeps, e.g. "0 3 * * *".')
@click.option("--interval", help="Interval between sweeps (Go duration), instead of --schedule.")
@click.option("--purge-interval", help="Interval between stale-upload purges (default 1h).")
@click.option(
    "--misfire-grace",
    help="Run a missed sweep at start-up if it is at most this late (default 1h).",
)
@click.option("--metrics-addr", help="Serve /metrics and /healthz here, e.g. 127.0.0.1:9464.")
@click.option("--lease-ttl", help="Replica lease period (default 60s).")
@click.option("--replica-id", help="This replica's name in the lease (default host:pid).")
def serve(config_file: str | None, verbose: int, **values: Any) -> None:
    """Run sweeps on a schedule, as a daemon."""
    from layergc.gc.scheduler import serve as serve_forever

    settings = _settings(config_file, values)
    _configure_logging(settings, verbose, quiet_default=False)
    try:
        serve_forever(settings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--db", help="Index database URL or SQLite file (default: ./layergc.db).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=20, show_default=True, help="How many runs and candidates.")
def report(db: str | None, as_json: bool, limit: int) -> None:
    """Show past runs and pending candidates from the index."""
    from layergc.gc.db import open_index
    from layergc.gc.reporting import index_report, render_index_report

    index = open_index(db)
    data = index_report(index, limit)
    click.echo(json.dumps(data) if as_json else render_index_report(data))


@main.group()
def db() -> None:
    """Manage the index database."""


@db.command("upgrade")
@click.option("--db", "url", help="Index database URL or SQLite file (default: ./layergc.db).")
def db_upgrade(url: str | None) -> None:
    """Apply Alembic migrations up to head."""
    from layergc.gc.db import upgrade

    upgrade(url)
    click.echo("index database is at the latest revision")


if __name__ == "__main__":
    main()
