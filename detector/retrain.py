"""``fairuse train``: read history, recalibrate, fit, evaluate and register a candidate model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from detector.calibration import calibrate_thresholds
from detector.model_evaluation import (
    abusive_subjects,
    injection_metrics,
    label_metrics,
    labelled_scores,
    read_staff_labels,
    simulation_abuse_keys,
)
from detector.model_registry import AnomalyModel, default_models_dir, list_versions, save_model
from detector.plans import load_plans
from detector.policy import load_policy
from detector.policy.config import parse_duration
from detector.readers import read_events
from detector.store import open_store
from detector.thresholds import load_thresholds, merged
from detector.training import BENIGN_QUANTILE, build_training_set, fit_model

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Raised when no trustworthy model can be trained; the message gives the cause and the fix."""


@dataclass(slots=True)
class TrainOptions:
    """Inputs and settings of one ``fairuse train`` run."""

    paths: Sequence[Path]
    since: str | None = None
    labels_file: Path | None = None
    database_url: str | None = None
    models_dir: Path | None = None
    version: str | None = None
    seed: int = 7
    quantile: float = BENIGN_QUANTILE
    contamination: float | str = "auto"
    injection_keys: int = 300
    injection_days: int = 7
    plans: Path | None = None
    policy: Path | None = None
    # Thresholds TOML put over the shipped thresholds before recalibration.
    thresholds: Path | None = None


@dataclass(slots=True)
class TrainResult:
    """The trained candidate, where it was written and the labelled scores behind its metrics."""

    model: AnomalyModel
    metadata_path: Path
    label_scores: pd.DataFrame


# Fewer closed key-days than this give a threshold from a handful of points.
MIN_BENIGN_KEYDAYS = 50


def run_training(options: TrainOptions) -> TrainResult:
    """Train a candidate from ``options.paths`` and write it to the models folder; see the module docstring."""
    models_dir = options.models_dir or default_models_dir()
    version = options.version or datetime.now(UTC).strftime("%Y.%m.%d-%H%M%S")
    if version in list_versions(models_dir):
        raise TrainingError(f"model version {version!r} already exists in {models_dir}; pass another --version")

    plans = load_plans(options.plans)
    policy = load_policy(options.policy)
    frame = _history(options)
    store = open_store(options.database_url)
    verdicts = read_staff_labels(store.engine)
    abuse_keys, abuse_accounts = abusive_subjects(verdicts)
    if options.labels_file is not None:
        abuse_keys |= simulation_abuse_keys(options.labels_file)

    try:
        training = build_training_set(frame, plans, abuse_keys, abuse_accounts)
    except ValueError as error:
        raise TrainingError(str(error)) from error
    benign_rows = int(training.benign.sum())
    if benign_rows < MIN_BENIGN_KEYDAYS:
        raise TrainingError(
            f"only {benign_rows} benign key-days in the history, fewer than the {MIN_BENIGN_KEYDAYS} a forest and "
            "its threshold need; train on more days or more keys"
        )

    benign_subjects = ~np.isin(training.prepared.subjects["subject"].to_numpy(), list(abuse_keys))
    benign_subjects &= ~np.isin(training.prepared.subjects["account_id"].to_numpy(), list(abuse_accounts))
    base = load_thresholds()
    if options.thresholds is not None:
        base = merged(base, load_thresholds(options.thresholds))
    recalibrated, calibration = calibrate_thresholds(training.prepared, benign_subjects, base)

    model = fit_model(
        training,
        version=version,
        seed=options.seed,
        quantile=options.quantile,
        contamination=options.contamination,
        thresholds=merged(base, recalibrated),
        source=", ".join(str(path) for path in options.paths) + (f" (last {options.since})" if options.since else ""),
    )
    model.metadata["calibration"] = calibration

    scores = labelled_scores(model, training, verdicts)
    metrics: dict = {"staff_labels": label_metrics(model, scores)}
    if options.injection_keys > 0:
        metrics["simulated_injections"] = injection_metrics(
            model, plans=plans, policy=policy, keys=options.injection_keys,
            days=options.injection_days, seed=options.seed + 1000,
        )
    model.metadata["metrics"] = metrics

    path = save_model(model.estimator, model.metadata, models_dir)
    logger.info("trained model %s on %d key-days; wrote %s", version, len(training.rows), path)
    return TrainResult(model=model, metadata_path=path, label_scores=scores)


def _history(options: TrainOptions) -> pd.DataFrame:
    """Read the event files and keep the last ``options.since`` before the newest event."""
    if not options.paths:
        raise TrainingError("no event files given; pass the gateway logs to train on, e.g. `fairuse train events.jsonl`")
    read = read_events(options.paths)
    frame = read.frame
    if frame.empty:
        raise TrainingError(f"no valid events in {', '.join(map(str, options.paths))}; check the files with `fairuse score`")
    if options.since:
        span = parse_duration(options.since, "--since").total_seconds()
        frame = frame[frame["ts"] >= float(frame["ts"].max()) - span].reset_index(drop=True)
    return frame
