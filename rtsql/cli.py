"""The ``rtsql`` command line: a thin client over the library.

Each command parses its arguments, opens the database, makes one library call and renders the
result through ``rtsql.output``. Library errors (``RtsqlError``) become ``Error: ...`` with exit
code 1; click's usage errors exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import availability, catalog, db, engines, output, settings
from . import ingest as ingest_mod
from .errors import RtsqlError, UnknownUser
from .vocabulary import (
    DEFAULT_K,
    DEFAULT_METHOD,
    DEFAULT_STRATEGY,
    MAX_K,
    SIMILAR_METHODS,
    STRATEGIES,
)

FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(output.FORMATS), default="table", show_default=True,
    help="Output format: table for people, json/jsonl/csv for scripts.")


class RtsqlGroup(click.Group):
    """Turns library errors into clean messages with a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RtsqlError as exc:
            raise click.ClickException(str(exc)) from None


class State:
    def __init__(self, db_path: str):
        self.db_path = db_path
        self._con = None

    def connect(self):
        if self._con is None:
            self._con = db.connect(self.db_path)
        return self._con

    def connect_reader(self):
        """For read-only commands: the database, or tail's snapshot while tail holds it."""
        if self._con is None:
            self._con, snap = db.connect_for_reading(self.db_path)
            if snap is not None:
                import datetime as dt

                when = dt.datetime.fromtimestamp(snap.stat().st_mtime).strftime("%H:%M:%S")
                click.echo(f"(answered from the snapshot {snap}, published {when}: "
                           "`rtsql tail` or `rtsql serve` holds the database)", err=True)
        return self._con

    def close(self):
        if self._con is not None:
            self._con.close()
            self._con = None


def _emit(columns, rows, fmt):
    output.render(columns, rows, fmt, out=sys.stdout)


def _progress_factory():
    """A per-file progress bar on a terminal, for files big enough to wait for."""
    if not sys.stderr.isatty():
        return None

    def for_file(path: Path):
        if path.stat().st_size < (32 << 20):
            return None
        bar = click.progressbar(length=path.stat().st_size, label=path.name, file=sys.stderr)
        done = [0]

        def update(current, total):
            bar.length = max(total, 1)
            bar.update(current - done[0])
            done[0] = current
            if current >= total:
                bar.render_finish()

        return update

    return for_file


@click.group(cls=RtsqlGroup)
@click.option("--db", "db_path", envvar=db.ENV_DB, default=db.DEFAULT_DB, show_default=True,
              help="Database file (also read from RTSQL_DB).")
@click.version_option(package_name="rtsql")
@click.pass_context
def main(ctx, db_path):
    """rtsql: real-time recommendations inside DuckDB.

    \b
    Example:
        rtsql demo
        rtsql --db shop.duckdb ingest events/ && rtsql --db shop.duckdb status
    """
    ctx.obj = State(db_path)
    ctx.call_on_close(ctx.obj.close)


# --------------------------------------------------------------------------- schema

@main.command()
@click.option("--list", "list_only", is_flag=True,
              help="Show applied and pending migrations without changing (or creating) the file.")
@FORMAT_OPTION
@click.pass_obj
def migrate(state: State, list_only, fmt):
    """Bring the database schema up to date (every command also does this on open).

    \b
    Example:
        rtsql migrate --list
    """
    path = Path(state.db_path)
    if list_only:
        states = db.migration_status(path)
        _emit(["version", "name", "state", "applied_at"],
              [(s.version, s.name, s.state, s.applied_at) for s in states], fmt)
        return
    applied = db.migrate_file(path)
    click.echo(f"{len(applied)} migration(s) applied; {path} is up to date", err=True)


# --------------------------------------------------------------------------- ingest

def _input_format_option(f, old_spelling: str | None = "--format"):
    """--input-format (the old spelling stays accepted, hidden, where it means nothing else)."""
    f = click.option("--input-format", "in_format", type=click.Choice(ingest_mod.FORMATS),
                     help="Input format (default: from the file extension).")(f)
    if old_spelling:
        f = click.option(old_spelling, "in_format_alias", hidden=True,
                         type=click.Choice(ingest_mod.FORMATS))(f)
    return f


def _input_format(in_format, alias):
    return in_format or alias


def _mapping_options(f, old_spelling: str | None = "--format"):
    f = click.option("--event-type", help="Event type for files that have no event_type column.")(f)
    f = click.option("--map", "maps", multiple=True, metavar="CANONICAL=SOURCE",
                     help="Column mapping, e.g. --map user_id=userId (repeatable).")(f)
    return _input_format_option(f, old_spelling)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@(lambda f: _mapping_options(f, None))
@click.option("--force", is_flag=True, help="Ingest even content that was ingested before.")
@FORMAT_OPTION
@click.option("--output-format", "fmt_alias", hidden=True, type=click.Choice(output.FORMATS))
@click.pass_obj
def ingest(state: State, paths, in_format, maps, event_type, force, fmt, fmt_alias):
    """Load event files (CSV, JSON-lines, Parquet; .gz too) and directories.

    Bad rows go to the rejects table with their reason, file and line; the exit code is 0 when
    every file could be read, even with rejects.

    \b
    Example:
        rtsql ingest sample_events/events
        rtsql ingest ratings.csv --map user_id=userId --map item_id=movieId \\
            --map value=rating --map ts=timestamp --event-type rating
    """
    fmt = fmt_alias or fmt
    mapping = ingest_mod.ColumnMapping.parse(maps, event_type)
    files = ingest_mod.expand_paths(paths, in_format)  # every path checked before opening the db
    con = state.connect()
    results = ingest_mod.ingest(con, files, fmt=in_format, mapping=mapping, force=force,
                                progress=_progress_factory())
    _emit(["file", "format", "status", "ingested", "rejected", "skipped", "message"],
          [(_short(r.path), r.format, r.status, r.ingested, r.rejected, r.skipped, r.message)
           for r in results], fmt)
    total = [sum(getattr(r, k) for r in results) for k in ("ingested", "rejected", "skipped")]
    click.echo(f"{len(results)} file(s): {total[0]} events ingested, {total[1]} rejected, "
               f"{total[2]} skipped", err=True)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise click.ClickException(f"{len(failed)} file(s) could not be read; nothing of them "
                                   "was written: " + "; ".join(r.message for r in failed))


def _short(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


@main.command()
@click.argument("directory")
@click.option("--pattern", "patterns", multiple=True, metavar="GLOB",
              help="Only files matching this glob (repeatable; default: every known format).")
@click.option("--recursive", is_flag=True, help="Also follow files in subfolders.")
@click.option("--poll", is_flag=True,
              help="Poll instead of inotify (NFS, SMB, container bind mounts).")
@click.option("--once", is_flag=True, help="Catch up on the backlog, refresh, publish and exit.")
@click.option("--publish", "publish_path", metavar="PATH",
              help="Snapshot for readers [default: DB name with .snapshot.duckdb].")
@click.option("--no-refresh", is_flag=True, help="Only ingest (refresh later, e.g. from cron).")
@_mapping_options
@click.pass_obj
def tail(state: State, directory, patterns, recursive, poll, once, publish_path, no_refresh,
         in_format, in_format_alias, maps, event_type):
    """Follow a folder of event files: ingest new lines as they arrive, refresh, publish.

    Exactly once across crashes: offsets commit with the events. Rotated, truncated, deleted
    and moved-in files are handled. Stops cleanly on Ctrl-C / SIGTERM. While it runs, readers
    (`rtsql recommend`, BI tools) use the published snapshot.

    \b
    Example:
        rtsql tail /var/log/shop --pattern '*.jsonl'
        rtsql tail incoming/ --once
    """
    from . import snapshot
    from . import tail as tail_mod

    options = tail_mod.TailOptions(
        patterns=tuple(patterns) or ("*",), recursive=recursive, poll=poll,
        fmt=in_format or in_format_alias, mapping=ingest_mod.ColumnMapping.parse(maps, event_type),
        publish=Path(publish_path) if publish_path else snapshot.default_path(state.db_path),
        refresh=not no_refresh)
    totals = tail_mod.follow(state.db_path, directory, options, once=once,
                             log=lambda line: click.echo(line, err=True))
    click.echo(f"tail: {totals.events} events, {totals.rejects} rejects from {totals.files} "
               f"file batch(es); snapshot {options.publish}", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback unless you say otherwise).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="RTSQL_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on every route but /health "
                   "(also read from RTSQL_TOKEN).")
@click.option("--tail", "tail_dir", metavar="DIR",
              help="Also follow a folder of event files, as `rtsql tail DIR` does.")
@click.option("--pattern", "patterns", multiple=True, metavar="GLOB",
              help="With --tail: only files matching this glob (repeatable).")
@click.option("--recursive", is_flag=True, help="With --tail: also follow subfolders.")
@click.option("--poll", is_flag=True, help="With --tail: poll instead of inotify.")
@click.option("--publish", "publish_path", metavar="PATH",
              help="Snapshot for readers [default: DB name with .snapshot.duckdb].")
@click.option("--no-refresh", is_flag=True, help="Do not refresh in the background.")
@click.option("--max-body-mb", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Largest request body accepted.")
@_mapping_options
@click.pass_obj
def serve(state: State, host, port, token, tail_dir, patterns, recursive, poll, publish_path,
          no_refresh, max_body_mb, in_format, in_format_alias, maps, event_type):
    """Serve recommendations and take events over HTTP (the process that owns the database).

    Reads come from memory (the same rows as the SQL macros) in about a millisecond; POST
    /events commits before answering, and the next read sees the events. Refreshes run in the
    background; a snapshot is published for `rtsql recommend` and BI tools. OpenAPI docs at
    /docs. SIGTERM or Ctrl-C: in-flight requests finish, writes commit, exit 0.

    \b
    Example:
        rtsql serve --port 8000
        curl 'localhost:8000/recommend/user-42?k=5'
        rtsql serve --tail incoming/ --token "$SECRET"
    """
    from . import server, snapshot
    from . import service as service_mod
    from . import tail as tail_mod

    if tail_dir is not None and not Path(tail_dir).expanduser().is_dir():
        raise click.ClickException(f"{tail_dir} is not a directory")
    if token is not None and not token.strip():
        raise click.ClickException("the token is empty (--token or RTSQL_TOKEN): give one, or "
                                   "leave both out to serve without authentication")
    if not token and not _is_loopback(host):
        click.echo(f"rtsql serve: warning: listening on {host} without a token: anyone who can "
                   "reach this port can read recommendations and write or forget data; give "
                   "--token (or RTSQL_TOKEN)", err=True)
    options = service_mod.ServiceOptions(
        tail_dir=tail_dir,
        tail=tail_mod.TailOptions(
            patterns=tuple(patterns) or ("*",), recursive=recursive, poll=poll,
            fmt=in_format or in_format_alias,
            mapping=ingest_mod.ColumnMapping.parse(maps, event_type), refresh=not no_refresh),
        publish=Path(publish_path) if publish_path else snapshot.default_path(state.db_path))
    service = service_mod.Service(state.db_path, options, log=lambda line: click.echo(line, err=True))
    sock = server.bind(host, port)

    def ready() -> None:  # once the database is ours and the state loaded, not before
        click.echo(f"rtsql serve: http://{host}:{sock.getsockname()[1]} (docs at /docs), "
                   f"database {state.db_path}, snapshot {options.publish}"
                   + (", token required" if token else "")
                   + "; loading the compiled scorer (the first start after an install "
                     "compiles it: up to half a minute, requests get 503 meanwhile)", err=True)

    server.run(service, sock, token=token, max_body_bytes=max_body_mb << 20, on_ready=ready,
               log=lambda line: click.echo(line, err=True))
    click.echo("rtsql serve: stopped", err=True)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@main.command()
@click.argument("path")
@click.option("--map", "maps", multiple=True, metavar="CANONICAL=SOURCE",
              help="Column mapping, e.g. --map item_id=movieId --map tags=genres.")
@_input_format_option
@click.pass_obj
def items(state: State, path, maps, in_format, in_format_alias):
    """Upsert the item catalog (title, category, tags, description, embedding, other columns).

    Tags may be a list or a '|'-separated string; other columns are kept as attributes.

    \b
    Example:
        rtsql items sample_events/items.csv
    """
    mapping = catalog_mapping(maps)
    counts = catalog.load_items(state.connect(), path, fmt=in_format or in_format_alias,
                                mapping=mapping)
    click.echo(f"{counts['upserted']} catalog rows upserted ({counts['new_items']} new items), "
               f"{counts['rejected']} rejected")


@main.group()
def item():
    """Hide items from every list (sold out, withdrawn) and show them again.

    \b
    Example:
        rtsql item hide sku-12
    """


@item.command("hide")
@click.argument("item_ids", nargs=-1, required=True)
@click.pass_obj
def item_hide(state: State, item_ids):
    """Leave items out of every list from now on: recommend, similar_items, trending,
    user_recommendations, the server. No refresh needed; their events still count.

    \b
    Example:
        rtsql item hide sku-12 sku-40
    """
    count = availability.set_available(state.connect(), list(item_ids), False)
    click.echo(f"{count} item{'s' if count != 1 else ''} hidden")


@item.command("show")
@click.argument("item_ids", nargs=-1, required=True)
@click.pass_obj
def item_show(state: State, item_ids):
    """Show hidden items again (an availability window from the catalog still applies).

    \b
    Example:
        rtsql item show sku-12
    """
    count = availability.set_available(state.connect(), list(item_ids), True)
    click.echo(f"{count} item{'s' if count != 1 else ''} shown")


def catalog_mapping(maps) -> ingest_mod.ColumnMapping:
    return ingest_mod.ColumnMapping(dict(settings.assignments(
        maps, "--map", "NAME=COLUMN", catalog.CATALOG_COLUMNS)))


@main.command("event-types")
@click.option("--set", "assignments", multiple=True, metavar="TYPE=WEIGHT",
              help="Add or change an event type's weight (repeatable).")
@click.option("--uses-value/--ignores-value", default=None,
              help="With --set: multiply the weight by the event's value (like ratings).")
@click.option("--negative-values/--no-negative-values", default=None,
              help="With --set: accept negative values for this type (refunds, thumbs-down); "
                   "ingest rejects them otherwise.")
@FORMAT_OPTION
@click.pass_obj
def event_types(state: State, assignments, uses_value, negative_values, fmt):
    """List event types and their weights, or change them.

    \b
    Example:
        rtsql event-types --set purchase=10 --set wishlist=3
    """
    from . import events

    con = state.connect()
    for name, weight in settings.assignments(assignments, "--set", "TYPE=WEIGHT"):
        events.set_event_type(con, name, weight, uses_value, negative_values)
    _emit(events.COLUMNS, events.event_types(con), fmt)


@main.command("settings")
@click.argument("name", required=False)
@click.argument("value", required=False)
@click.option("--reset", is_flag=True, help="Return NAME to its default.")
@FORMAT_OPTION
@click.pass_obj
def settings_cmd(state: State, name, value, reset, fmt):
    """Show all settings, or show / change one.

    \b
    Example:
        rtsql settings
        rtsql settings ingest_chunk_mb 128
    """
    con = state.connect()
    if name and reset:
        settings.reset(con, name)
    elif name and value is not None:
        settings.set_value(con, name, value)
    elif name:
        settings.setting(name)
    values = settings.get_all(con)
    names = [name] if name else sorted(settings.SETTINGS)
    _emit(["name", "value", "default", "help"],
          [(n, values[n], settings.SETTINGS[n].default, settings.SETTINGS[n].help) for n in names],
          fmt)


@main.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0, None),
              help="How many rows to show.")
@click.option("--source", help="Only rejects from this file (path as ingested).")
@FORMAT_OPTION
@click.pass_obj
def rejects(state: State, limit, source, fmt):
    """Show rows that were not ingested, with their reason, file and line.

    \b
    Example:
        rtsql rejects --limit 5
    """
    from . import events

    limit = min(limit, 2**62)  # beyond: every row (SQL's LIMIT stops at 2^63)
    _emit(["source", "line", "reason", "raw"],
          [(_short(s), line, reason, raw)
           for s, line, reason, raw in events.rejects(
               state.connect(), limit, str(Path(source).resolve()) if source else None)], fmt)


@main.command()
@FORMAT_OPTION
@click.pass_obj
def status(state: State, fmt):
    """Counts of what the database holds (from its snapshot while tail or serve holds it).

    \b
    Example:
        rtsql status --format json
    """
    from . import events, journal

    con = state.connect_reader()
    counts = events.summary(con)
    _emit(["what", "count"], counts.items(), fmt)
    if counts["rejects"] is not None:  # the database itself: no serve runs on it now
        if waiting := journal.waiting(con, state.db_path):
            click.echo(f"warning: {journal.path_for(state.db_path)} holds {waiting} event "
                       "bodies that rtsql serve answered (POST /events?wait=durable) and did "
                       "not load before it stopped; start rtsql serve once to load them",
                       err=True)


@main.command()
@click.argument("query")
@click.option("--write", is_flag=True,
              help="Open the database for writing (default: read-only).")
@FORMAT_OPTION
@click.pass_obj
def sql(state: State, query, write, fmt):
    """Run one SQL statement against the database and print its rows.

    Read-only by default: the database (or, while `rtsql tail` or `rtsql serve` holds it, its
    snapshot) is opened read-only, one statement runs, and reading or writing other files
    (read_csv, COPY TO, ATTACH) is refused. --write opens it for writing: deleting or
    changing rows of rtsql's tables can break the models and the ingest ledger (a `refresh
    --full` rebuilds the models; lost events do not come back).

    \b
    Example:
        rtsql sql "select event_type, count(*) from events group by all"
        rtsql sql --write "delete from rejects where source like '%test%'"
    """
    columns, rows, snap = db.run_sql(state.db_path, query, write=write)
    if snap is not None:
        click.echo(f"(answered from the snapshot {snap}: another process holds the database)",
                   err=True)
    if columns:
        _emit(columns, rows, fmt)


# --------------------------------------------------------------------------- models

def _refresh_progress():
    if not sys.stderr.isatty():
        return None
    bars = {}

    def update(stage, done, total):
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = click.progressbar(length=max(total, 1), label=f"refresh {stage}",
                                                  file=sys.stderr)
            bar.done = 0
        bar.update(done - bar.done)
        bar.done = done
        if done >= total:
            bar.render_finish()

    return update


def _external_events_options(f):
    """--events, --map, --event-type: event Parquet outside the database for the Spark job."""
    f = click.option("--event-type", help="With --events: the event type of files without one.")(f)
    f = click.option("--map", "maps", multiple=True, metavar="CANONICAL=SOURCE",
                     help="With --events: column mapping, as for ingest (repeatable).")(f)
    return click.option("--events", "event_uris", multiple=True, metavar="PARQUET",
                        help="Event Parquet files the database does not hold, for the Spark "
                             "job to read too (a path, glob or s3a:// / hdfs:// URI; "
                             "repeatable).")(f)


@main.command()
@click.option("--full", is_flag=True, help="Rebuild everything instead of the incremental update.")
@click.option("--engine", type=click.Choice(list(engines.ENGINES)), default=engines.Local.name,
              show_default=True,
              help="Who builds a full refresh: this process, or an Apache Spark job "
                   "(pip install 'rtsql[spark]'; see docs/spark.md).")
@click.option("--master", help="With --engine spark: the Spark master URL [default: local[2]].")
@click.option("--spark-conf", "spark_conf", multiple=True, metavar="KEY=VALUE",
              help="With --engine spark: a Spark configuration entry (repeatable).")
@click.option("--work", type=click.Path(file_okay=False),
              help="With --engine spark: keep the exported events and the job's output here "
                   "[default: a temporary folder, removed afterwards].")
@_external_events_options
@click.option("--drop-external", is_flag=True,
              help="Let a local full refresh drop the events a Spark --events build read "
                   "from outside the database.")
@click.pass_obj
def refresh(state: State, full, engine, master, spark_conf, work, event_uris, maps, event_type,
            drop_external):
    """Bring interaction matrix, neighbour lists, content and trending up to date.

    Incremental by default (exactly equal to a full rebuild); safe for cron: a second refresh
    of the same database exits with an error instead of overlapping.

    \b
    Example:
        rtsql refresh
        rtsql refresh --full
        rtsql refresh --full --engine spark --master spark://head:7077
    """
    from . import refresh as refresh_mod

    if engine == engines.Spark.name:
        if not full:
            raise click.UsageError("--engine spark builds full refreshes; add --full "
                                   "(incremental refreshes run locally)")
        builder = engines.Spark(
            master=master, conf=dict(settings.assignments(spark_conf, "--spark-conf",
                                                          "KEY=VALUE")),
            work=work, events=list(event_uris),
            mapping=ingest_mod.ColumnMapping.parse(maps, event_type))
    else:
        if master or spark_conf or work or event_uris or maps or event_type:
            raise click.UsageError("--master, --spark-conf, --work, --events, --map and "
                                   "--event-type go with --engine spark")
        builder = engines.Local(drop_external=drop_external)
    result = builder.full(state.connect(), progress=_refresh_progress(),
                          log=lambda line: click.echo(line, err=True)) if full \
        else refresh_mod.refresh(state.connect(), progress=_refresh_progress(),
                                 drop_external=drop_external)
    click.echo(result.summary())


@main.command("load-model")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.pass_obj
def load_model(state: State, path):
    """Install a model built by the Spark job (spark-submit on a cluster) into the database.

    One transaction: readers see the old model or the new one. The job's last event becomes
    the watermark, so `rtsql refresh` and `rtsql tail` continue from it. See docs/spark.md.

    \b
    Example:
        rtsql load-model /data/model
    """
    from . import refresh as refresh_mod

    click.echo(refresh_mod.load_model(state.connect(), path).summary())


@main.command("spark-job")
@click.option("--config", "config_path", type=click.Path(), required=True,
              help="Where to write the job config (from this database's settings).")
@click.option("--export", type=click.Path(file_okay=False),
              help="Also export the events (and, with --events, the id dictionaries) as "
                   "Parquet into this folder.")
@_external_events_options
@click.pass_obj
def spark_job_cmd(state: State, config_path, export, event_uris, maps, event_type):
    """Prepare a cluster build: the job config (and optionally the events) for spark-submit.

    \b
    Example:
        rtsql spark-job --config job.json --export /data/export
        spark-submit --master yarn $(python -c 'import rtsql.spark_job as j; print(j.__file__)') \\
            --events /data/export/events --config job.json --out /data/model
        rtsql load-model /data/model
    """
    import json

    from . import spark

    con = state.connect()
    config = spark.job_config(con)
    if event_uris:
        if not export:
            raise click.UsageError("--events needs --export (the job reads the database's id "
                                   "dictionaries from there)")
        config["external"] = spark.external_config(
            con, Path(export), list(event_uris), ingest_mod.ColumnMapping.parse(maps, event_type))
    Path(config_path).write_text(json.dumps(config, indent=1))
    click.echo(f"job config written to {config_path} (events up to event_id "
               f"{config['watermark']})")
    if export:
        folder = spark.export_events(con, Path(export), config["watermark"])
        click.echo(f"events exported to {folder}")


@main.command()
@click.argument("user_id")
@click.option("-k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K), help="How many items.")
@click.option("--strategy", type=click.Choice(STRATEGIES),
              default=DEFAULT_STRATEGY, show_default=True)
@click.option("--exclude", multiple=True, help="Item id to leave out (repeatable).")
@click.option("--category", help="Only items of this catalog category.")
@click.option("--variant", help="A/B variant's settings: a name, or 'auto' for the user's own.")
@FORMAT_OPTION
@click.pass_obj
def recommend(state: State, user_id, k, strategy, exclude, category, variant, fmt):
    """Top-k items for a user, with the reason for each.

    \b
    Example:
        rtsql recommend user-42 -k 5
        rtsql recommend user-42 --strategy content --category audio
    """
    from . import recommend as rec

    res = rec.recommend(state.connect_reader(), user_id, k, strategy=strategy,
                        exclude=list(exclude) or None, category=category, variant=variant)
    _emit(res.columns, res.rows, fmt)


@main.command()
@click.argument("item_id")
@click.option("-k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K), help="How many items.")
@click.option("--by", type=click.Choice(SIMILAR_METHODS), default=DEFAULT_METHOD, show_default=True,
              help="cf: people who interacted with it also did; content: catalog similarity.")
@FORMAT_OPTION
@click.pass_obj
def similar(state: State, item_id, k, by, fmt):
    """Items similar to an item.

    \b
    Example:
        rtsql similar sku-1 --by content
    """
    from . import recommend as rec

    res = rec.similar_items(state.connect_reader(), item_id, k, by)
    _emit(res.columns, res.rows, fmt)


@main.command("similar-users")
@click.argument("user_id")
@click.option("-k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K), help="How many users.")
@FORMAT_OPTION
@click.pass_obj
def similar_users(state: State, user_id, k, fmt):
    """Users with the most similar interaction history.

    \b
    Example:
        rtsql similar-users user-42 -k 5
    """
    from . import recommend as rec

    res = rec.similar_users(state.connect_reader(), user_id, k)
    _emit(res.columns, res.rows, fmt)


@main.command("trending")
@click.option("-k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K), help="How many items.")
@FORMAT_OPTION
@click.pass_obj
def trending_cmd(state: State, k, fmt):
    """Items gaining events in the latest window (trending_window_days).

    \b
    Example:
        rtsql trending -k 5 --format json
    """
    from . import recommend as rec

    res = rec.trending(state.connect_reader(), k)
    _emit(res.columns, res.rows, fmt)


@main.command()
@click.argument("user_id", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Read the ids from standard input, one per line (ids too long for a "
                   "command line); needs --yes.")
@click.pass_obj
def forget(state: State, user_id, yes, from_stdin):
    """Delete a user's events and everything derived from them (right to be forgotten).

    Also removes the user's impressions and the id from rejected rows, retires the user's key,
    republishes every snapshot, and rewrites the database file so no byte of the id is left
    (costs one copy of the database). See README "Safety".

    \b
    Example:
        rtsql forget user-42 --yes
        rtsql forget --stdin --yes < ids.txt
    """
    from . import privacy

    if (user_id is None) == (not from_stdin):
        raise click.UsageError("give one USER_ID, or --stdin with the ids on standard input")
    if from_stdin and not yes:
        raise click.UsageError("--stdin needs --yes (standard input holds the ids, not an "
                               "answer)")
    ids = [user_id] if user_id is not None else \
        [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    if not yes and not click.confirm(f"Delete every event of {user_id} and what was derived?"):
        raise click.Abort()
    failed = 0
    for one in ids:
        shown = one if len(one) <= 80 else one[:60] + f"... ({len(one)} characters)"
        try:
            result = privacy.forget_user(state.db_path, one)
        except UnknownUser as exc:
            if len(ids) == 1:
                raise
            click.echo(f"error: {str(exc).replace(repr(one), repr(shown))}", err=True)
            failed += 1
            continue
        click.echo(f"forgot {shown}: {result.summary()}")
    if failed:
        raise click.ClickException(f"{failed} of {len(ids)} ids were not forgotten")


# --------------------------------------------------------------------------- evaluation

def _overrides(assignments) -> dict[str, str]:
    out = dict(settings.assignments(assignments, "--set"))
    for name, value in out.items():
        settings.parse(name, value)  # unknown names and bad values fail here
    return out


@main.command()
@click.option("--protocol", type=click.Choice(["holdout", "prequential"]), default="holdout",
              show_default=True, help="EVAL.md protocol 1 (holdout) or 2 (prequential).")
@click.option("-k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K), help="List length.")
@click.option("--strategy", "strategies", multiple=True,
              type=click.Choice(STRATEGIES),
              help="Strategies to score (repeatable; default hybrid).")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="Evaluate with this setting changed (repeatable); the live one stays.")
@click.option("--limit", type=click.IntRange(1, None),
              help="Prequential: replay at most this many events.")
@click.option("--engine", type=click.Choice(["memory", "sql"]), default="memory",
              show_default=True,
              help="memory scores with rtsql serve's in-memory scorer; sql asks the recommend "
                   "macro (the same lists, 30x slower or more).")
@click.option("--refresh-every", default=100, show_default=True,
              help="Prequential: incremental refresh after this many events.")
@click.option("--events", "events_file", metavar="FILE",
              help="Evaluate on this events file instead of the database's events.")
@(lambda f: _input_format_option(f, "--events-format"))
@click.option("--map", "maps", multiple=True, metavar="CANONICAL=SOURCE",
              help="Column mapping of --events, as for ingest (repeatable).")
@click.option("--event-type", help="Event type of --events rows that have none.")
@FORMAT_OPTION
@click.pass_obj
def evaluate(state: State, protocol, k, strategies, assignments, limit, engine, refresh_every,
             events_file, in_format, in_format_alias, maps, event_type, fmt):
    """Offline accuracy of the recommendations, in a scratch database (live tables untouched).

    \b
    Example:
        rtsql evaluate --strategy hybrid --strategy item
        rtsql evaluate --protocol prequential --limit 2000
        rtsql evaluate --events ratings.csv --map user_id=userId --map item_id=movieId \
            --map value=rating --map ts=timestamp --event-type rating
    """
    from . import evaluate as ev

    overrides = _overrides(assignments)
    if events_file:
        source = db.connect_memory()
        results = ingest_mod.ingest(source, [events_file], fmt=in_format or in_format_alias,
                                    mapping=ingest_mod.ColumnMapping.parse(maps, event_type))
        if any(r.status == "failed" for r in results):
            raise click.ClickException(results[0].message)
    else:
        source, _ = db.connect_for_reading(state.db_path)
    if protocol == "holdout":
        rows = []
        for r in ev.holdout(source, k=k, strategies=strategies or (DEFAULT_STRATEGY,),
                            overrides=overrides, engine=engine):
            m = r.metrics
            rows.append((r.strategy, m.users, round(m.precision, 4), round(m.recall, 4),
                         round(m.ndcg, 4), round(m.map, 4), round(m.coverage, 4),
                         round(r.refresh_seconds, 2), round(r.query_ms_per_user, 1)))
        _emit(["strategy", "users"] + ev.metric_names(k) + ["refresh s", "ms/user"], rows, fmt)
    else:
        rows = []
        for strategy in strategies or (DEFAULT_STRATEGY,):
            res = ev.prequential(source, k=k, limit=limit, refresh_every=refresh_every,
                                 overrides=overrides, strategy=strategy, engine=engine)
            p50, p99 = ev.summarize_latencies(res.latencies)
            rows.append((strategy, res.evaluated, res.hits, round(res.hit_rate, 4),
                         round(p50, 1), round(p99, 1)))
        _emit(["strategy", "evaluated", "hits", f"HR@{k}", "step p50 ms", "step p99 ms"], rows,
              fmt)


@main.command()
@click.option("--budget", default=8, show_default=True, help="Trials, the current settings first.")
@click.option("--protocol", type=click.Choice(["holdout", "prequential"]), default="holdout",
              show_default=True)
@click.option("-k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K))
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, None),
              help="Prequential: events replayed per trial.")
@click.option("--seed", default=0, show_default=True)
@click.option("--apply", "apply_best", is_flag=True,
              help="Write the winning settings into the database (the next refresh uses them).")
@FORMAT_OPTION
@click.pass_obj
def tune(state: State, budget, protocol, k, limit, seed, apply_best, fmt):
    """Search settings on an offline protocol; print the best trials; --apply the winner.

    Every run is recorded in the tuning_runs table with the score of each trial.

    \b
    Example:
        rtsql tune --budget 12
        rtsql tune --budget 12 --apply
    """
    import json

    from . import evaluate as ev

    con = state.connect()
    metric = f"NDCG@{k}" if protocol == "holdout" else f"HR@{k}"

    def progress(done, total, trial):
        click.echo(f"trial {done}/{total}: {metric} {trial.score:.4f} "
                   f"{json.dumps(trial.overrides) if trial.overrides else '(current settings)'}",
                   err=True)

    trials = ev.tune(con, budget=budget, protocol=protocol, k=k, limit=limit, seed=seed,
                     progress=progress)
    baseline = next(t for t in trials if t.number == 0)
    run_id = ev.record_tuning(con, trials, protocol, metric, apply_best)
    _emit(["trial", metric, "vs current", "settings"],
          [(t.number, round(t.score, 4),
            round(t.score / baseline.score, 3) if baseline.score else None,
            json.dumps(t.overrides) if t.overrides else "(current settings)")
           for t in trials[:5]], fmt)
    best = trials[0]
    if apply_best and best.overrides:
        click.echo(f"applied trial {best.number} ({metric} {baseline.score:.4f} -> "
                   f"{best.score:.4f}); run {run_id} in tuning_runs; `rtsql refresh` uses it",
                   err=True)
    else:
        click.echo(f"run {run_id} recorded in tuning_runs"
                   + ("" if apply_best else "; --apply writes the best settings"), err=True)


# --------------------------------------------------------------------------- feedback

@main.command()
@click.argument("path")
@click.pass_obj
def impressions(state: State, path):
    """Record what was shown: user_id, item_id, ts, strategy (+ variant, rec_id, rank).

    Clicks and purchases that follow an impression of the same item for the same user within
    attribution_window_hours are credited to it (view impression_outcomes).

    \b
    Example:
        rtsql impressions shown-2026-11-28.csv
    """
    from . import feedback

    counts = feedback.load_impressions(state.connect(), path)
    click.echo(f"{counts['loaded']} impressions loaded, {counts['rejected']} rejected")


@main.command()
@click.option("--since", help="Only impressions at or after this time (ISO date).")
@click.option("--by", "by", default="day,strategy", show_default=True,
              help="Group by any of day, strategy, variant (comma-separated).")
@click.option("--plot", "plot_path", metavar="FILE.svg", help="Also draw CTR per day (SVG).")
@FORMAT_OPTION
@click.pass_obj
def report(state: State, since, by, plot_path, fmt):
    """Impressions, clicks, CTR, purchases and conversion per day, strategy or variant.

    \b
    Example:
        rtsql report --since 2026-11-01 --plot ctr.svg
        rtsql report --by variant --format csv
    """
    from . import feedback

    columns, rows = feedback.report(state.connect_reader(), since,
                                    tuple(b.strip() for b in by.split(",") if b.strip()))
    _emit(columns, rows, fmt)
    if plot_path:
        click.echo(f"plot: {feedback.plot_svg(columns, rows, plot_path)}", err=True)


@main.command()
@click.option("--set", "assignments", multiple=True, metavar="NAME=SHARE",
              help="A variant and its share of users (repeatable; shares add up to 1).")
@click.option("--setting", "variant_settings", multiple=True, metavar="NAME.SETTING=VALUE",
              help="A serving setting of one variant (repeatable).")
@click.option("--clear", is_flag=True, help="Remove every variant.")
@click.option("--auto", "auto", type=click.Choice(["clicks", "purchases", "off"]),
              help="Let each refresh move the shares toward the variant with the most clicks "
                   "(or purchases) per impression, by Thompson sampling; off: keep them.")
@click.option("--min-share", type=float, help="With --auto: the least share a variant keeps "
                                                "(setting ab_min_share, default 0.05).")
@click.option("--window-hours", type=float, help="With --auto: the hours of impressions the "
                                                  "evidence covers (ab_auto_window_hours, 168).")
@click.option("--history", is_flag=True, help="Print every change of the shares and its "
                                              "evidence (table ab_allocations) instead.")
@FORMAT_OPTION
@click.pass_obj
def variants(state: State, assignments, variant_settings, clear, auto, min_share, window_hours,
             history, fmt):
    """A/B variants: users split by a stable hash of their id, each with its serving settings.

    Users keep their variant when the shares change, unless the change needs their bucket.
    With --auto the shares follow the outcomes at each refresh (every change is recorded).

    \b
    Example:
        rtsql variants --set control=0.5 --set recent=0.5 \
            --setting recent.recency_half_life_days=1
        rtsql recommend user-42 --variant auto
        rtsql variants --auto clicks --min-share 0.1
        rtsql variants --history
    """
    from . import allocation, feedback

    con = state.connect()
    if clear:
        feedback.set_variants(con, {}, {})
    elif assignments or variant_settings:  # --setting alone is refused: it names no share
        feedback.set_variants_from_options(con, assignments, variant_settings)
    for name, value in (("ab_auto_metric", auto), ("ab_min_share", min_share),
                        ("ab_auto_window_hours", window_hours)):
        if value is not None:
            settings.set_value(con, name, str(value))
    if history:
        _emit(*allocation.history(con), fmt)
        return
    metric = settings.get(con, "ab_auto_metric")
    if metric != allocation.AUTO_OFF:
        click.echo(f"shares follow {metric} per impression at each refresh (ab_auto_metric; "
                   "`rtsql variants --auto off` stops it)", err=True)
    _emit(["variant", "share", "settings"], feedback.variants(con), fmt)


# --------------------------------------------------------------------------- data

@main.command()
@click.argument("out")
@click.option("--events", "n_events", default=1_000_000, show_default=True,
              help="Number of events.")
@click.option("--format", "out_format", type=click.Choice(["parquet", "csv", "jsonl"]),
              default="parquet", show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--catalog", "catalog_path", help="Also write an item catalog (CSV) here.")
@click.option("--sample", is_flag=True, help="Write the sample_events/ set into the folder OUT.")
def generate(out, n_events, out_format, seed, catalog_path, sample):
    """Write synthetic events (the benchmark shape) or the sample set.

    \b
    Example:
        rtsql generate bench.parquet --events 10000000
        rtsql generate sample_events --sample
    """
    from . import generate as gen

    if sample:
        for path in gen.write_sample(out):
            click.echo(path)
        return
    if n_events <= 0:
        raise click.BadParameter("must be positive", param_hint="--events")
    spec = gen.SyntheticSpec(events=n_events, seed=seed)
    table, (item_ids, item_category) = gen.synthetic_events(spec)
    gen.write_events(table, out, out_format)
    if catalog_path:
        gen.write_catalog(item_ids, item_category, catalog_path)
    click.echo(f"{table.num_rows} events, {spec.n_users} users, {len(item_ids)} items -> {out}")


@main.command()
@click.option("--dir", "sample_dir", default="sample_events", show_default=True,
              help="The sample folder (written by the seeded generator if missing).")
@click.pass_obj
def demo(state: State, sample_dir):
    """Build a database from sample_events/ and show what rtsql makes of it.

    \b
    Example:
        rtsql demo
        rtsql --db /tmp/demo.duckdb demo
    """
    from . import demo as demo_mod

    demo_mod.run(state.connect(), Path(sample_dir), echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
