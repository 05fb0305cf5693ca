"""``fairuse import``, ``fairuse push`` and ``fairuse enforce``: the gateway integrations on the command line."""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

stderr = Console(stderr=True, soft_wrap=True)

_DB_HELP = "fairuse's SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db)."
_PREFIX_DEFAULT = lambda: os.environ.get("FAIRUSE_PREFIX", "fairuse")  # noqa: E731 - click takes a callable default


def _fail(message: object) -> None:
    stderr.print(Text("error: ", style="red") + Text(str(message)), highlight=False)
    sys.exit(2)


def _plan_pairs(pairs: tuple[str, ...]) -> dict[str, str] | None:
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        group, separator, plan = pair.partition("=")
        if not separator or not plan:
            raise click.BadParameter(f"expected GROUP=PLAN, got {pair!r}", param_hint="'--plan'")
        mapping[group] = plan
    return mapping


@click.command("import")
@click.argument("kind", type=click.Choice(["newapi", "oneapi", "litellm"]))
@click.option("--from", "source_url", help="SQLAlchemy URL of the gateway's database (default: database_url in --config).")
@click.option("--config", type=click.Path(path_type=Path), help="Gateway TOML with a [gateways.NAME] table (see docs/gateway.md).")
@click.option("--name", help="Gateway name: prefixes the ids of new-api and one-api subjects and names the cursor (default: KIND).")
@click.option("--quota-per-usd", type=click.FloatRange(min=0, min_open=True),
              help="new-api/one-api quota units per US dollar (default 500000).")
@click.option("--credits-per-usd", type=click.FloatRange(min=0, min_open=True), help="fairuse plan credits per US dollar (default 1).")
@click.option("--plan", "plan_pairs", multiple=True, metavar="GROUP=PLAN",
              help="Map a gateway group (LiteLLM: team alias) to a fairuse plan; repeatable. Unmapped groups keep their name.")
@click.option("--target", type=click.Choice(["store", "stream"]),
              help="store: score with the batch core into --db; stream: append to PREFIX:events for the workers "
                   "(default: stream with --follow, else store).")
@click.option("--follow", is_flag=True, help="Keep polling for new rows until stopped.")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between polls with --follow.")
@click.option("--settle-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Leave rows younger than this for the next poll, so rows committed late are not skipped.")
@click.option("--context-hours", default=24.0, show_default=True, type=click.FloatRange(min=0),
              help="With --target store: hours of earlier rows scored again with each batch.")
@click.option("--batch-size", default=5_000, show_default=True, type=click.IntRange(1), help="Rows per read.")
@click.option("--db", "database_url", help=_DB_HELP)
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True, help="Redis of the event stream.")
@click.option("--prefix", default=_PREFIX_DEFAULT, show_default="fairuse or $FAIRUSE_PREFIX", help="Redis key prefix of the stream.")
@click.option("--rejects", type=click.Path(path_type=Path), default=Path("fairuse-rejects.txt"), show_default=True,
              help="Where rejected rows are written, one 'SOURCE:ROW: FIELD: REASON' line each.")
@click.option("--no-model", is_flag=True, help="Skip the IsolationForest anomaly detector (store target).")
@click.option("--partitions", default=1, show_default=True, type=click.IntRange(1),
              help="Partitioned streams the workers read: with N above 1, events go to PREFIX:events:0 to N-1 by account.")
def import_command(kind, source_url, config, name, quota_per_usd, credits_per_usd, plan_pairs, target, follow, interval,
                   settle_seconds, context_hours, batch_size, database_url, redis_url, prefix, rejects, no_model, partitions) -> None:
    """Import a gateway's request log (KIND: newapi, oneapi or litellm) from its database."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from detector.gateway_import import Importer
    from detector.plans import ConfigError
    from detector.readers import ReaderError
    from detector.readers.gateways import gateway_settings, open_log_reader
    from detector.store import open_store
    
    try:
        settings = gateway_settings(kind, name, config, database_url=source_url, quota_per_usd=quota_per_usd,
                                    credits_per_usd=credits_per_usd, plans=_plan_pairs(plan_pairs))
        if not settings.database_url:
            raise ConfigError("no gateway database: pass --from URL or set database_url in --config")
        store = open_store(database_url)
        _check_sqlite_source(settings.database_url)
        reader = open_log_reader(create_engine(settings.database_url, pool_pre_ping=True), settings)
    except (ConfigError, ReaderError, SQLAlchemyError) as error:
        _fail(error)

    target = target or ("stream" if follow else "store")
    sink = _sink(target, store, redis_url, prefix, context_hours, no_model, partitions)
    importer = Importer(reader, store.engine, sink, batch_size=batch_size, settle_seconds=settle_seconds)

    def report(result) -> None:
        _write_rejects(rejects, result.rejects)
        if target == "store" and result.events:
            now = datetime.now(UTC)
            store.record_run(started_at=now, finished_at=now, inputs=[importer.cursor_name], records=result.rows,
                             rejected=len(result.rejects), duplicates=0, findings=result.findings,
                             decisions=result.decisions, policy=sink.policy.origin, summary={"warnings": result.warnings})
        click.echo(f"{settings.name}: {result.rows} rows read, {result.events} events, {len(result.rejects)} rejected, "
                   f"{result.skipped} not requests; {_sent(target, result, prefix)}")

    if not follow:
        try:
            report(importer.import_once())
        except (ReaderError, SQLAlchemyError) as error:
            _fail(error)
        return

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    importer.follow(stop, interval, on_pass=lambda result: report(result) if result.rows else None)


def _check_sqlite_source(url: str) -> None:
    """Raise ConfigError when ``url`` names a SQLite file that does not exist, which SQLite would create empty."""
    from sqlalchemy.engine import make_url

    from detector.plans import ConfigError

    parsed = make_url(url)
    path = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return
    if not Path(path).is_file():
        raise ConfigError(f"gateway database {url!r}: no such file {path}; check --from or database_url in --config")


def _sink(target, store, redis_url, prefix, context_hours, no_model, partitions=1):
    from detector.gateway_import import StoreSink, StreamSink

    if target == "stream":
        import redis as redis_library

        return StreamSink(redis_library.Redis.from_url(redis_url), f"{prefix}:events", partitions=partitions)

    from detector.model_registry import ModelError, load_model
    from detector.plans import load_plans
    from detector.policy import load_policy

    model = None
    if not no_model:
        try:
            model = load_model()
        except ModelError as error:
            stderr.print(f"warning: anomaly detector skipped: {error}", highlight=False)
    return StoreSink(store, plans=load_plans(), policy=load_policy(), model=model, context_seconds=context_hours * 3600)


def _sent(target: str, result, prefix: str) -> str:
    if target == "stream":
        return f"{result.events} appended to {prefix}:events"
    return f"{result.findings} findings, {result.decisions} new decisions stored"


def _write_rejects(path: Path, rejects) -> None:
    if not rejects:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(reject.format() + "\n" for reject in rejects)
    stderr.print(f"{len(rejects)} rejected rows appended to {path}", highlight=False)


PUSH_CHUNK = 10_000


@click.command("push")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "input_format", type=click.Choice(["jsonl", "csv", "parquet"]),
              help="Input format (default: from the extension or content).")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True, help="Redis of the event stream.")
@click.option("--prefix", default=_PREFIX_DEFAULT, show_default="fairuse or $FAIRUSE_PREFIX", help="Redis key prefix of the stream.")
@click.option("--rejects", type=click.Path(path_type=Path), default=Path("fairuse-rejects.txt"), show_default=True,
              help="File the rejected records are appended to.")
@click.option("--partitions", default=1, show_default=True, type=click.IntRange(1),
              help="Partitioned streams the workers read: with N above 1, events go to PREFIX:events:0 to N-1 by account.")
def push_command(paths, input_format, redis_url, prefix, rejects, partitions) -> None:
    """Append event files to the stream the workers consume, as a gateway would: to try or replay the stream path."""
    import redis as redis_library

    from detector.gateway_import import ImportReport, StreamSink
    from detector.readers import ReaderError, read_events
    from detector.summary import printable

    try:
        read = read_events(paths, format=input_format)
    except ReaderError as error:
        _fail(error)
    for warning in read.warnings:
        stderr.print(Text("warning: ", style="yellow") + printable(warning), highlight=False)
    _write_rejects(rejects, read.rejects)
    if read.frame.empty:
        _fail(f"no valid events in {', '.join(map(str, paths))}; see {rejects}")

    sink = StreamSink(redis_library.Redis.from_url(redis_url), f"{prefix}:events", partitions=partitions)
    try:
        for start in range(0, len(read.frame), PUSH_CHUNK):
            sink.send(read.frame.iloc[start:start + PUSH_CHUNK], read.frame.iloc[:0], ImportReport())
    except redis_library.RedisError as error:
        _fail(f"{redis_url}: {error}; {start:,} of {len(read.frame):,} events were appended before it failed. "
              "Pushing the file again is safe: workers drop request_ids already in their windows")
    click.echo(f"{len(read.frame):,} events appended to {prefix}:events, {len(read.rejects):,} rejected, "
               f"{read.duplicates:,} repeated request_ids left out")


@click.command("enforce")
@click.option("--config", required=True, type=click.Path(path_type=Path),
              help="Gateway TOML; every [gateways.NAME] with an enforce table is enforced (see docs/gateway.md).")
@click.option("--gateway", "names", multiple=True, help="Enforce only this gateway name; repeatable.")
@click.option("--dry-run", is_flag=True, help="Make no call: record the calls a pass would make in the audit table.")
@click.option("--follow", is_flag=True, help="Keep enforcing: a pass on every decision change, and every --interval seconds.")
@click.option("--interval", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between passes with --follow.")
@click.option("--db", "database_url", help=_DB_HELP)
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True,
              help="Redis with the decisions change stream (only wakes --follow early).")
@click.option("--prefix", default=_PREFIX_DEFAULT, show_default="fairuse or $FAIRUSE_PREFIX", help="Redis key prefix of the change stream.")
def enforce_command(config, names, dry_run, follow, interval, database_url, redis_url, prefix) -> None:
    """Mirror the decisions in force into gateways through their admin APIs, and undo ended ones."""
    from detector.plans import ConfigError
    from detector.readers.gateways import load_gateways
    from detector.store import open_store
    from workers.enforce import build_enforcer
    from workers.enforce.follow import run_passes
    from workers.enforce.follow import follow as follow_changes

    try:
        gateways = load_gateways(config)
        unknown = sorted(set(names) - gateways.keys())
        if unknown:
            raise ConfigError(f"{config}: no [gateways.{unknown[0]}] table; listed: {', '.join(sorted(gateways))}")
        chosen = [settings for name, settings in gateways.items() if settings.enforce and (not names or name in names)]
        if not chosen:
            raise ConfigError(f"{config}: no gateway has an [gateways.NAME.enforce] table; add one with api_url")
        store = open_store(database_url)
        enforcers = [build_enforcer(settings, store, dry_run=dry_run or None) for settings in chosen]
    except ConfigError as error:
        _fail(error)

    def report(reports) -> None:
        for result in reports:
            click.echo(f"{result.gateway}: {result.applied} applied, {result.undone} undone, {result.untouched} left to staff, "
                       f"{result.rejected} rejected, {result.pending} pending, {result.unchanged} unchanged"
                       + (" (dry run: see gateway_calls)" if dry_run else ""))
            for error in result.errors:
                stderr.print(f"warning: {error}", highlight=False)
            for subject in result.malformed:
                stderr.print(f"warning: {subject!r} names no valid {result.gateway} token or user id; "
                             "its decision was skipped, the others were enforced", highlight=False)
            if result.unmatched:
                stderr.print(f"warning: {result.unmatched} suspensions name no token or user in {result.gateway}'s "
                             "database; nothing was disabled for them", highlight=False)

    if not follow:
        reports = run_passes(enforcers)
        report(reports)
        if any(result.pending or result.errors for result in reports):
            sys.exit(1)
        return

    import redis as redis_library

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    follow_changes(enforcers, stop, store_engine=store.engine, client=redis_library.Redis.from_url(redis_url),
                   prefix=prefix, interval=interval, on_pass=report)
