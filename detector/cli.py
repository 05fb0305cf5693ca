"""The ``fairuse`` console command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from detector import __version__
from detector.runtime import configure_process

# Messages are printed with soft_wrap, so a long path or value stays on one line
# that grep can find. Tables get 140 columns when output is not a terminal.
stderr = Console(stderr=True, soft_wrap=True)
stdout = Console(width=None if sys.stdout.isatty() else 140)


@click.group()
@click.version_option(__version__, prog_name="fairuse")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Abuse detection and fair-use moderation for AI API gateways."""
    configure_process()
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "input_format", type=click.Choice(["jsonl", "csv", "parquet", "combined"]),
              help="Input format; detected from the file name or content when left out.")
@click.option("--plans", type=click.Path(path_type=Path), help="Plan catalogue TOML (default: the shipped one).")
@click.option("--policy", type=click.Path(path_type=Path), help="Policy TOML (default: the shipped one).")
@click.option("--db", "database_url", help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")
@click.option("--out", type=click.Path(path_type=Path), help="Write decisions here as JSON lines; findings and subject scores go beside it.")
@click.option("--rejects", type=click.Path(path_type=Path), help="Where to write rejected records (default: beside --out).")
@click.option("--max-reject-ratio", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Fail when more than this share of records is rejected.")
@click.option("--model", "model_version", help="IsolationForest version in models/ (default: the newest).")
@click.option("--no-model", is_flag=True, help="Skip the IsolationForest anomaly detector.")
@click.option("--simulate", is_flag=True, help="Store decisions as simulated: reported, never enforced.")
def score(paths, input_format, plans, policy, database_url, out, rejects, max_reject_ratio,
          model_version, no_model, simulate) -> None:
    """Score gateway request logs and write moderation decisions."""
    from detector.batch import BatchError, BatchOptions, run_batch
    from detector.model_registry import ModelError
    from detector.plans import ConfigError
    from detector.readers import ReaderError
    from detector.summary import render_summary

    options = BatchOptions(
        paths=paths, format=input_format, plans=plans, policy=policy, database_url=database_url,
        out=out, rejects=rejects, max_reject_ratio=max_reject_ratio, model_version=model_version,
        use_model=not no_model, simulate=simulate,
    )
    total = sum(path.stat().st_size for path in paths if path.is_file())
    progress = Progress(TextColumn("reading"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), console=stderr, transient=True, disable=total < 8 << 20)
    try:
        with progress:
            task = progress.add_task("read", total=total or None)
            report = run_batch(options, progress=lambda done: progress.advance(task, done))
    except (BatchError, ReaderError, ConfigError, ModelError) as error:
        stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(2)

    for warning in report.warnings:
        stderr.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if report.rejects_path:
        stderr.print(f"{len(report.read.rejects):,} rejected records written to {report.rejects_path}")
    stdout.print(render_summary(report))
    for name, path in report.outputs.items():
        stdout.print(f"{name}: {path}")


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


@main.command()
@click.argument("labels", type=click.Path(exists=True, path_type=Path))
@click.argument("decisions", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(labels, decisions, as_json) -> None:
    """Compare DECISIONS (JSON lines) with LABELS from `fairuse simulate`."""
    import json

    from detector.evaluate import evaluate as run_evaluation
    from detector.evaluate import render_report

    report = run_evaluation(labels, decisions)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        stdout.print(render_report(report))
