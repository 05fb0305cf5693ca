"""The ``fairuse`` console command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from detector import __version__
from detector.runtime import configure_process
from fairuse_gateway.partitions import MAX_PARTITIONS

# Messages are printed with soft_wrap, so a long path or value stays on one line
# that grep can find. Tables get 140 columns when output is not a terminal.
stderr = Console(stderr=True, soft_wrap=True)
stdout = Console(width=None if sys.stdout.isatty() else 140)


class FairuseGroup(click.Group):
    """The command group: errors a user can fix end the command with one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except Exception as error:  # noqa: BLE001 - sorted by user_error below, the rest re-raised
            message = user_error(error)
            if message is None:
                raise
            logging.getLogger("fairuse").debug("command failed", exc_info=True)
            stderr.print(Text("error: ", style="red") + Text(message), highlight=False)
            sys.exit(2)


def user_error(error: Exception) -> str | None:
    """Return the message for an error the user can fix (bad path, URL, config, unreachable service), else None."""
    import redis
    from sqlalchemy.exc import ArgumentError, OperationalError

    from detector.plans import ConfigError

    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}; check the path and its permissions"
    if isinstance(error, ConfigError):
        return str(error)
    if isinstance(error, ArgumentError):
        return f"{error}; write a SQLAlchemy URL such as sqlite:///fairuse.db or postgresql+psycopg://user@host/db"
    if isinstance(error, OperationalError):
        return f"cannot use the database: {error.orig or error}; check --db and that the server is running"
    if isinstance(error, redis.ConnectionError):
        return f"cannot reach Redis: {error}; check --redis and that the server is running"
    if isinstance(error, ValueError) and "Redis URL" in str(error):
        return f"{error}; for example redis://127.0.0.1:6379/0"
    return None


@click.group(cls=FairuseGroup)
@click.version_option(__version__, prog_name="fairuse")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Abuse detection and fair-use moderation for AI API gateways."""
    configure_process()
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _finite_ratio(value: float) -> float:
    if value != value:  # NaN compares unequal to itself and would switch the check off.
        raise click.BadParameter("expected a number from 0 to 1, got nan", param_hint="'--max-reject-ratio'")
    return value


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "input_format", type=click.Choice(["jsonl", "csv", "parquet", "combined"]),
              help="Input format; detected from the file name or content when left out.")
@click.option("--plans", type=click.Path(path_type=Path), help="Plan catalogue TOML (default: $FAIRUSE_PLANS or the shipped one).")
@click.option("--policy", type=click.Path(path_type=Path), help="Policy TOML (default: $FAIRUSE_POLICY or the shipped one).")
@click.option("--db", "database_url", help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")
@click.option("--out", type=click.Path(path_type=Path), help="Write decisions here as JSON lines; findings and subject scores go beside it.")
@click.option("--rejects", type=click.Path(path_type=Path), help="Where to write rejected records (default: beside --out, or fairuse-rejects.txt in the working folder).")
@click.option("--max-reject-ratio", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              callback=lambda _context, _parameter, value: _finite_ratio(value),
              help="Fail when more than this share of records is rejected.")
@click.option("--model", "model_version", help="IsolationForest version in models/ (default: the active one, see `fairuse models list`).")
@click.option("--no-model", is_flag=True, help="Skip the IsolationForest anomaly detector.")
@click.option("--simulate", is_flag=True, help="Store decisions as simulated: reported, never enforced.")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes the detectors run in, forked, on inputs of 200,000 events or more. "
                   "With 1, inputs of 50,000 events or more run them in threads, which was faster on a "
                   "2-core machine and took less memory.")
def score(paths, input_format, plans, policy, database_url, out, rejects, max_reject_ratio,
          model_version, no_model, simulate, processes) -> None:
    """Score gateway request logs and write moderation decisions."""
    from detector.batch import BatchError, BatchOptions, run_batch
    from detector.model_registry import ModelError
    from detector.plans import ConfigError
    from detector.readers import ReaderError
    from detector.summary import printable, render_summary

    options = BatchOptions(
        paths=paths, format=input_format, plans=plans, policy=policy, database_url=database_url,
        out=out, rejects=rejects, max_reject_ratio=max_reject_ratio, model_version=model_version,
        use_model=not no_model, simulate=simulate, processes=processes,
    )
    total = sum(path.stat().st_size for path in paths if path.is_file())
    # Refreshed by the read callback, not by a thread of its own: the detectors fork only
    # when no other thread runs.
    progress = Progress(TextColumn("reading"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), console=stderr, transient=True, disable=total < 8 << 20,
                        auto_refresh=False)

    def advance(done: int) -> None:
        progress.advance(task, done)
        progress.refresh()

    try:
        with progress:
            task = progress.add_task("read", total=total or None)
            report = run_batch(options, progress=advance)
    except (BatchError, ReaderError, ConfigError, ModelError) as error:
        stderr.print(Text("error: ", style="red") + printable(error), highlight=False)
        sys.exit(2)

    for warning in report.warnings:
        stderr.print(Text("warning: ", style="yellow") + printable(warning), highlight=False)
    if report.rejects_path:
        count = len(report.read.rejects)
        stderr.print(printable(f"{count:,} rejected record{'' if count == 1 else 's'} written to {report.rejects_path}"))
    stdout.print(render_summary(report))
    for name, path in report.outputs.items():
        stdout.print(printable(f"{name}: {path}"), highlight=False)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--keys", default=500, show_default=True, type=click.IntRange(1), help="Number of API keys.")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1), help="Days of traffic.")
@click.option("--seed", default=1, show_default=True, type=int, help="Random seed; the same seed writes the same files.")
@click.option("--gzip", "compress", is_flag=True, help="Write events.jsonl.gz instead of events.jsonl.")
def simulate(out_dir, keys, days, seed, compress) -> None:
    """Write labelled synthetic gateway traffic (events and labels) to OUT_DIR."""
    from detector.simulate import simulate_traffic

    result = simulate_traffic(out_dir, keys=keys, days=days, seed=seed, compress=compress)
    stdout.print(f"{result.events:,} events for {result.keys:,} keys: {result.events_path}")
    stdout.print(f"labels: {result.labels_path}")
    stdout.print(
        f"hosting networks: {result.hosting_path} (score with FAIRUSE_HOSTING_NETWORKS={result.hosting_path} "
        "to leave the simulated cloud servers out of key sharing)"
    )


@main.command()
@click.argument("labels", type=click.Path(exists=True, path_type=Path))
@click.argument("decisions", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(labels, decisions, as_json) -> None:
    """Compare DECISIONS (JSON lines) with LABELS from `fairuse simulate`."""
    import json

    from detector.evaluate import evaluate as run_evaluation
    from detector.evaluate import render_report

    try:
        report = run_evaluation(labels, decisions)
    except ValueError as error:  # a labels or decisions file of another shape
        stderr.print(Text("error: ", style="red") + Text(str(error)), highlight=False)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        stdout.print(render_report(report))


@main.group()
def gateways() -> None:
    """Gateways allowed to read decisions over HTTP."""


@gateways.command("add")
@click.argument("name")
@click.option("--db", "database_url", help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")
def gateways_add(name, database_url) -> None:
    """Register gateway NAME and print its API key (shown once, stored hashed)."""
    from detector.store import open_store
    from detector.store.gateways import GatewayError, GatewayRegistry

    try:
        api_key = GatewayRegistry(open_store(database_url).engine).add(name)
    except GatewayError as error:
        stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(2)
    stderr.print(f"gateway {name} added; its X-Api-Key follows on standard output and is not shown again", highlight=False)
    click.echo(api_key)


@gateways.command("list")
@click.option("--db", "database_url", help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")
def gateways_list(database_url) -> None:
    """List gateways with their creation, revocation and last pull times."""
    from detector.store import open_store
    from detector.store.gateways import GatewayRegistry

    for gateway in GatewayRegistry(open_store(database_url).engine).list():
        state = f"revoked {gateway.revoked_at:%Y-%m-%d %H:%M}" if gateway.revoked_at else "active"
        pulled = f"last pull {gateway.last_pull_at:%Y-%m-%d %H:%M:%S}" if gateway.last_pull_at else "never pulled"
        click.echo(f"{gateway.name}\t{state}\tcreated {gateway.created_at:%Y-%m-%d %H:%M}\t{pulled}")


@gateways.command("revoke")
@click.argument("name")
@click.option("--db", "database_url", help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")
def gateways_revoke(name, database_url) -> None:
    """Revoke gateway NAME's API key."""
    from detector.store import open_store
    from detector.store.gateways import GatewayError, GatewayRegistry

    try:
        GatewayRegistry(open_store(database_url).engine).revoke(name)
    except GatewayError as error:
        stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(2)
    click.echo(f"gateway {name} revoked")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="TCP port to listen on.")
@click.option("--db", "database_url", help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True, help="Redis holding published decisions.")
@click.option("--prefix", default=lambda: os.environ.get("FAIRUSE_PREFIX", "fairuse"), show_default="fairuse or $FAIRUSE_PREFIX",
              help="Redis key prefix the workers publish decisions under.")
def api(host, port, database_url, redis_url, prefix) -> None:
    """Serve the HTTP decisions API for gateways."""
    import uvicorn

    from detector.store import open_store
    from fairuse_gateway import DecisionClient
    from workers.http_api import create_app

    app = create_app(open_store(database_url), DecisionClient(redis_url, prefix=prefix))
    uvicorn.run(app, host=host, port=port, log_level="info")


@main.command()
@click.option("--db", "database_url", help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True, help="Redis with the event stream.")
@click.option("--prefix", default=lambda: os.environ.get("FAIRUSE_PREFIX", "fairuse"), show_default="fairuse or $FAIRUSE_PREFIX",
              help="Redis key prefix: events are read from PREFIX:events, decisions written under PREFIX:decision:.")
@click.option("--batch-size", default=50_000, show_default=True, type=click.IntRange(1), help="Maximum entries per micro-batch; a batch takes what is waiting, up to this.")
@click.option("--claim-idle-ms", default=60_000, show_default=True, type=click.IntRange(0),
              help="Take over entries another worker left unacknowledged for this many milliseconds.")
@click.option("--no-model", is_flag=True, help="Skip the IsolationForest anomaly detector.")
@click.option("--plans", type=click.Path(path_type=Path), help="Plan catalogue TOML (default: $FAIRUSE_PLANS or the shipped one).")
@click.option("--policy", type=click.Path(path_type=Path), help="Policy TOML (default: $FAIRUSE_POLICY or the shipped one).")
@click.option("--model-refresh", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between reads of the active model and shadow from the registry.")
@click.option("--state/--window", "use_state", default=True, show_default=True,
              help="--state (the default) scores on in-memory per-subject state, owning partitions of the stream; "
                   "--window re-scores each subject's stored 7-day window with every micro-batch (see "
                   "docs/streaming-state.md). --claim-idle-ms applies to --window only: partitions move by lease.")
@click.option("--partitions", default=1, show_default=True, type=click.IntRange(1, MAX_PARTITIONS),
              help="With --state: partitioned streams PREFIX:events:0 to N-1 (PREFIX:events when 1). "
                   "Gateways must append with the same number.")
@click.option("--checkpoint-seconds", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="With --state: seconds between writes of each partition's state to Redis; longer for a state "
                   "whose write would take more than 2% of the time. 0 writes after every round.")
# The default is workers.checkpoint.DEFAULT_MAX_BYTES, written out so that --help does not import pandas.
@click.option("--checkpoint-max-bytes", default=1 << 30, show_default="1 GiB", type=click.IntRange(1),
              help="With --state: bytes above which a partition's checkpoint is rejected before it is read, "
                   "and the partition starts empty.")
# The default is detector.state.tail.DEFAULT_LATENESS, written out so that --help does not import pandas.
@click.option("--lateness", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="With --state: seconds of event time an event may arrive after its partition's newest one and "
                   "still be scored as the batch command scores it. Findings wait that long; 0 scores at once.")
def worker(database_url, redis_url, prefix, batch_size, claim_idle_ms, no_model, plans, policy, model_refresh,
           use_state, partitions, checkpoint_seconds, checkpoint_max_bytes, lateness) -> None:
    """Consume the Redis event stream: score, store and publish decisions until stopped."""
    import signal
    import threading

    import redis as redis_library

    from detector.model_switch import ModelSwitch
    from detector.plans import load_plans
    from detector.policy import load_policy
    from detector.store import open_store
    from workers.consumer import StateWorkersError, StreamConsumer, StreamSettings
    from workers.heap import freeze_startup_objects
    from workers.publish import DecisionPublisher
    from workers.state_consumer import StateSettings
    from workers.window import EventWindows

    if partitions > 1 and not use_state:
        raise click.UsageError("--partitions needs the state worker: --window reads one stream")
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        # A worker runs for days, so it reports its start, stop and a progress line a minute unless -v requests more.
        logging.getLogger("workers").setLevel(logging.INFO)
    client = redis_library.Redis.from_url(redis_url)
    store = open_store(database_url)
    policy = load_policy(policy)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if use_state:
        _run_state_worker(client, store, prefix, load_plans(plans), policy, no_model, batch_size, partitions,
                          checkpoint_seconds, checkpoint_max_bytes, lateness, model_refresh, stop)
        return
    # The active model and shadow are re-read from the registry, so `fairuse models activate` needs no restart.
    models = ModelSwitch(store, policy=policy, use_model=not no_model, refresh_seconds=model_refresh)
    consumer = StreamConsumer(
        client, store, plans=load_plans(plans), policy=policy, detectors=models.detectors(),
        windows=EventWindows(client, prefix=prefix), publisher=DecisionPublisher(client, prefix=prefix),
        settings=StreamSettings(
            stream=f"{prefix}:events", dead_letter=f"{prefix}:events:dead", batch_size=batch_size,
            claim_idle_ms=claim_idle_ms, state_partitions_key=StateSettings(prefix=prefix).partitions_key,
            window_workers_key=StateSettings(prefix=prefix).window_workers_key,
        ),
        models=models,
    )
    freeze_startup_objects()
    try:
        consumer.run(stop)
    except StateWorkersError as error:
        raise click.ClickException(str(error)) from None


def _run_state_worker(client, store, prefix, plans, policy, no_model, batch_size, partitions, checkpoint_seconds,
                      checkpoint_max_bytes, lateness, model_refresh, stop) -> None:
    """Run ``StateConsumer`` with the active model's detectors until ``stop`` is set."""
    from detector.model_switch import ModelSwitch
    from workers.heap import freeze_startup_objects
    from workers.publish import DecisionPublisher
    from workers.state_consumer import PartitionCountError, StateConsumer, StateSettings, WindowWorkersError

    # A model activated later replaces the anomaly detector in the running worker (workers.state_models).
    models = ModelSwitch(store, policy=policy, use_model=not no_model, refresh_seconds=model_refresh)
    consumer = StateConsumer(
        client, store, plans=plans, policy=policy, detectors=models.detectors(), publisher=DecisionPublisher(client, prefix=prefix),
        settings=StateSettings(prefix=prefix, partitions=partitions, batch_size=batch_size, checkpoint_seconds=checkpoint_seconds,
                               checkpoint_max_bytes=checkpoint_max_bytes, lateness=lateness),
        models=models,
    )
    freeze_startup_objects()
    try:
        consumer.run(stop)
    except (PartitionCountError, WindowWorkersError) as error:
        raise click.ClickException(str(error)) from None


from detector.gateway_commands import enforce_command, import_command, push_command  # noqa: E402 - registered after main exists

main.add_command(import_command)
main.add_command(push_command)
main.add_command(enforce_command)

from detector.models_cli import COMMANDS as MODEL_COMMANDS  # noqa: E402 - registered after the core commands

for command in MODEL_COMMANDS:
    main.add_command(command)

# Staff review: decisions, review, allowlist, audit, staff and console.
from detector.review.cli import COMMANDS as _REVIEW_COMMANDS  # noqa: E402

for _command in _REVIEW_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
