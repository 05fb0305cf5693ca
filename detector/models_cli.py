"""``fairuse train``, ``fairuse models`` and ``fairuse backtest``: the analysts' loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

DB_HELP = "SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db)."
stdout = Console(width=None if sys.stdout.isatty() else 140)
stderr = Console(stderr=True, soft_wrap=True)


def _fail(error: Exception) -> None:
    stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
    sys.exit(2)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--since", help="Train on this much history before the newest event, e.g. 7d or 36h (default: all).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, path_type=Path),
              help="labels.csv from `fairuse simulate`; its abuse keys are left out of the benign history.")
@click.option("--db", "database_url", help=DB_HELP + " Staff labels are read from its labels table.")
@click.option("--version", "version", help="Version name of the artifact (default: UTC date and time).")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of model artifacts (default: $FAIRUSE_MODELS_DIR or models/).")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed of the forest and the evaluation traffic.")
@click.option("--quantile", default=0.995, show_default=True, type=click.FloatRange(0.5, 1.0, max_open=True),
              help="Share of benign key-days whose anomaly score stays under the threshold.")
@click.option("--injection-keys", default=300, show_default=True, type=click.IntRange(0),
              help="Keys of simulated traffic with injected abuse to evaluate on; 0 skips it.")
@click.option("--policy", type=click.Path(exists=True, path_type=Path), help="Policy the evaluation applies (default: the shipped one).")
@click.option("--thresholds", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Thresholds TOML put over the shipped thresholds before recalibration; stored with the model.")
def train(paths, since, labels_file, database_url, version, models_dir, seed, quantile, injection_keys, policy,
          thresholds) -> None:
    """Train a candidate IsolationForest and recalibrate thresholds from event history in PATHS.

    The artifact is written as a candidate, and no worker scores with it
    until `fairuse models activate VERSION`.
    """
    from detector.plans import ConfigError
    from detector.readers import ReaderError
    from detector.retrain import TrainingError, TrainOptions, run_training

    options = TrainOptions(
        paths=paths, since=since, labels_file=labels_file, database_url=database_url, models_dir=models_dir,
        version=version, seed=seed, quantile=quantile, injection_keys=injection_keys, policy=policy,
        thresholds=thresholds,
    )
    try:
        result = run_training(options)
    except (TrainingError, ReaderError, ConfigError, ValueError) as error:
        _fail(error)
    except OSError as error:
        _fail(OSError(f"cannot write the model artifact: {error}; check --models-dir"))
    metadata = result.model.metadata
    stdout.print(f"wrote {result.metadata_path} (candidate; activate with `fairuse models activate {metadata['version']}`)")
    stdout.print(f"threshold {metadata['threshold']:.4f} on {metadata['training']['benign_rows']:,} benign key-days")
    stdout.print_json(json.dumps(metadata["metrics"]))


@click.group()
def models() -> None:
    """List, inspect, activate and shadow model versions."""


@models.command("list")
@click.option("--db", "database_url", help=DB_HELP)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder of model artifacts.")
def models_list(database_url, models_dir) -> None:
    """List model versions with their role, threshold, training window and evaluation."""
    from detector.model_registry import ModelError, default_models_dir, list_versions, read_metadata
    from detector.model_switch import active_version
    from detector.store import open_store
    from detector.store.model_assignments import SHADOW, ModelAssignments

    models_dir = models_dir or default_models_dir()
    store = open_store(database_url)
    active = active_version(store, models_dir)
    shadow = ModelAssignments(store.engine).current(SHADOW)
    table = Table()
    for header in ("version", "role", "created", "threshold", "training window", "lowest recall", "benign reviews"):
        table.add_column(header)
    for version in list_versions(models_dir):
        try:
            metadata = read_metadata(models_dir, version)
        except ModelError as error:
            table.add_row(version, "unreadable", "", "", escape(str(error)), "", "")
            continue
        role = _role(version, metadata, active, shadow)
        injections = metadata.get("metrics", {}).get("simulated_injections", {})
        recall = min(injections["recall"].values()) if injections.get("recall") else None
        training = metadata.get("training", {})
        table.add_row(
            version, role, str(metadata.get("created_at", ""))[:16], f"{metadata.get('threshold', float('nan')):.4f}",
            f"{str(training.get('window_start', ''))[:10]} – {str(training.get('window_end', ''))[:10]}",
            "-" if recall is None else f"{recall:.3f}",
            "-" if not injections else f"{injections['benign_review_share']:.2%}",
        )
    stdout.print(table)


def _role(version, metadata, active, shadow) -> str:
    if version == active:
        return "active"
    if shadow is not None and shadow.version == version:
        return "shadow"
    return "candidate" if metadata.get("candidate") else ""


@models.command("show")
@click.argument("version")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder of model artifacts.")
def models_show(version, models_dir) -> None:
    """Print a version's metadata and whether its artifact passes the checksum and feature checks."""
    from detector.model_registry import ModelError, default_models_dir, load_model, read_metadata

    models_dir = models_dir or default_models_dir()
    try:
        metadata = read_metadata(models_dir, version)
    except ModelError as error:
        _fail(error)
    stdout.print_json(json.dumps(metadata))
    try:
        load_model(models_dir, version)
    except ModelError as error:
        stdout.print(f"[red]artifact rejected:[/red] {escape(str(error))}")
        sys.exit(1)
    stdout.print("artifact checks: checksum and feature names match")


@models.command("activate")
@click.argument("version")
@click.option("--db", "database_url", help=DB_HELP)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder of model artifacts.")
@click.option("--by", "changed_by", help="Name recorded with the change (default: the login name).")
def models_activate(version, database_url, models_dir, changed_by) -> None:
    """Make VERSION the model every worker scores with; the artifact is checked first."""
    from detector.model_registry import ModelError, default_models_dir, load_model
    from detector.model_switch import active_version
    from detector.store import open_store
    from detector.store.model_assignments import ACTIVE, ModelAssignments

    models_dir = models_dir or default_models_dir()
    store = open_store(database_url)
    try:
        load_model(models_dir, version)
    except ModelError as error:
        _fail(ModelError(f"{error}. Version {version} was not activated; the workers keep their current model"))
    previous = active_version(store, models_dir)
    ModelAssignments(store.engine).record(ACTIVE, version, changed_by=changed_by)
    stdout.print(f"model {version} active (was {previous}); workers switch at their next job or within 30 s")


@models.command("shadow")
@click.argument("version", required=False)
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Candidate policy TOML to run in shadow (default: the policy in force).")
@click.option("--stop", is_flag=True, help="Stop the shadow run.")
@click.option("--db", "database_url", help=DB_HELP)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder of model artifacts.")
@click.option("--by", "changed_by", help="Name recorded with the change (default: the login name).")
def models_shadow(version, policy, stop, database_url, models_dir, changed_by) -> None:
    """Run model VERSION and/or a --policy beside the active model; its decisions are stored as simulated only."""
    from detector.model_registry import ModelError, default_models_dir, load_model
    from detector.plans import ConfigError
    from detector.policy import load_policy
    from detector.store import open_store
    from detector.store.model_assignments import SHADOW, ModelAssignments

    if stop and (version or policy):
        _fail(click.UsageError("--stop takes no VERSION or --policy"))
    if not stop and not (version or policy):
        _fail(click.UsageError("name a model VERSION, a --policy FILE, or both; or pass --stop"))
    models_dir = models_dir or default_models_dir()
    assignments = ModelAssignments(open_store(database_url).engine)
    if stop:
        assignments.record(SHADOW, None, changed_by=changed_by)
        stdout.print("shadow stopped")
        return
    try:
        if version:
            load_model(models_dir, version)
        if policy:
            load_policy(policy)
    except (ModelError, ConfigError) as error:
        _fail(error)
    assignments.record(
        SHADOW, version, policy_name=policy.name if policy else None,
        policy_toml=policy.read_text("utf-8") if policy else None, changed_by=changed_by,
    )
    stdout.print(f"shadow started: model {version or '(active)'}, policy {policy or '(in force)'}; "
                 "its decisions are stored as simulated and never published")


@models.command("compare")
@click.option("--since", default="7d", show_default=True, help="Window before the newest decision, e.g. 7d or 12h.")
@click.option("--db", "database_url", help=DB_HELP)
def models_compare(since, database_url) -> None:
    """Compare the enforced decisions with the simulated ones of the newest shadow run, since it started."""
    from detector.decision_diff import render_diff
    from detector.plans import ConfigError
    from detector.policy.config import parse_duration
    from detector.shadow import compare_with_enforced
    from detector.store import open_store
    from detector.store.model_assignments import SHADOW, ModelAssignments

    try:
        span = parse_duration(since, "--since")
    except ConfigError as error:
        _fail(error)
    store = open_store(database_url)
    runs = [item for item in ModelAssignments(store.engine).history(limit=100) if item.role == SHADOW and item.is_set]
    started_at = runs[0].created_at if runs else None
    recent = store.recent_decisions(span, created_since=started_at)
    diffs = compare_with_enforced(recent, span.total_seconds(), started_at)
    if not diffs:
        stdout.print("no shadow decisions stored yet; start one with `fairuse models shadow`")
        return
    for label, diff in diffs.items():
        stdout.print(render_diff(diff, baseline="enforced", candidate=f"shadow {label}"))


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Candidate policy TOML.")
@click.option("--baseline-policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Policy in force to compare with (default: the shipped one).")
@click.option("--model", "model_version", help="Candidate model version (needs event files in PATHS).")
@click.option("--since", default="7d", show_default=True, help="History to replay before its newest record, e.g. 7d.")
@click.option("--db", "database_url", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
def backtest(paths, policy, baseline_policy, model_version, since, database_url, as_json) -> None:
    """Replay history under a candidate policy and model and print what would change.

    With event files in PATHS, both sides score those events. Without them,
    the stored findings are replayed through both policies. Nothing is stored.
    """
    from detector.backtest import BacktestError, BacktestOptions, run_backtest
    from detector.decision_diff import render_diff
    from detector.plans import ConfigError
    from detector.readers import ReaderError

    options = BacktestOptions(paths=paths, policy=policy, baseline_policy=baseline_policy,
                              model_version=model_version, since=since, database_url=database_url)
    try:
        report = run_backtest(options)
    except (BacktestError, ConfigError, ReaderError) as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps({"baseline": report.baseline, "candidate": report.candidate, **report.diff.to_dict()}))
        return
    stdout.print(f"replayed {report.source} from {report.window_start:%Y-%m-%d %H:%M} to {report.window_end:%Y-%m-%d %H:%M} UTC")
    stdout.print(render_diff(report.diff, baseline=report.baseline, candidate=report.candidate))


COMMANDS = (train, models, backtest)
