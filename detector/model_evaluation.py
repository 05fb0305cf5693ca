"""Evaluate a model on staff labels and on simulated traffic with injected abuse."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from detector.evaluate import evaluate
from detector.model_registry import AnomalyModel
from detector.pipeline import default_detectors, score_events
from detector.plans import PlanCatalogue
from detector.policy import Policy
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.store.models import LabelRow
from detector.training import TrainingSet

VERDICTS = ("abuse", "benign")


def read_staff_labels(engine: Engine) -> dict[tuple[str, str], str]:
    """Return the newest staff verdict per (subject_type, subject) from the ``labels`` table."""
    query = select(LabelRow).order_by(LabelRow.created_at, LabelRow.id)
    verdicts: dict[tuple[str, str], str] = {}
    with Session(engine) as session:
        for row in session.scalars(query):
            if row.verdict in VERDICTS:
                verdicts[(row.subject_type, row.subject)] = row.verdict
    return verdicts


def abusive_subjects(verdicts: dict[tuple[str, str], str]) -> tuple[set[str], set[str]]:
    """Return the keys and the accounts whose newest verdict is abuse."""
    keys = {subject for (kind, subject), verdict in verdicts.items() if kind == "key" and verdict == "abuse"}
    accounts = {subject for (kind, subject), verdict in verdicts.items() if kind == "account" and verdict == "abuse"}
    return keys, accounts


def labelled_scores(
    model: AnomalyModel, training: TrainingSet, verdicts: dict[tuple[str, str], str]
) -> pd.DataFrame:
    """Return one row per labelled key in the history: its highest key-day anomaly score and verdict.

    Account verdicts apply to every key of the account; a key verdict wins over its account's.
    """
    scores = pd.DataFrame(
        {
            "key": training.subject_names,
            "account": training.account_names,
            "anomaly_score": model.anomaly_scores(training.features),
        }
    )
    best = scores.groupby(["key", "account"], as_index=False)["anomaly_score"].max()
    key_verdict = best["key"].map({subject: verdict for (kind, subject), verdict in verdicts.items() if kind == "key"})
    account_verdict = best["account"].map(
        {subject: verdict for (kind, subject), verdict in verdicts.items() if kind == "account"}
    )
    best["verdict"] = key_verdict.where(key_verdict.notna(), account_verdict)
    best = best.dropna(subset=["verdict"]).reset_index(drop=True)
    best["is_abuse"] = best["verdict"] == "abuse"
    return best


def label_metrics(model: AnomalyModel, scores: pd.DataFrame) -> dict[str, float | int | None]:
    """Return precision and recall at the model's threshold, ROC AUC and average precision on labelled keys.

    Curves need both verdicts; with one only, they are None.
    """
    truth = scores["is_abuse"].to_numpy(dtype=bool)
    flagged = scores["anomaly_score"].to_numpy() > model.threshold
    both = truth.any() and (~truth).any()
    true_positives = int((flagged & truth).sum())
    return {
        "labelled_keys": int(len(scores)),
        "abuse_keys": int(truth.sum()),
        "precision_at_threshold": true_positives / int(flagged.sum()) if flagged.any() else None,
        "recall_at_threshold": true_positives / int(truth.sum()) if truth.any() else None,
        "roc_auc": float(roc_auc_score(truth, scores["anomaly_score"])) if both else None,
        "average_precision": float(average_precision_score(truth, scores["anomaly_score"])) if both else None,
    }


def injection_metrics(
    model: AnomalyModel | None, *, plans: PlanCatalogue, policy: Policy, keys: int, days: int, seed: int
) -> dict:
    """Simulate labelled traffic, score it with the model's detectors and ``policy``, and evaluate.

    Returns recall and median time to detect per abuse kind, and the benign
    keys' false-action and review shares. Nothing is stored.
    """
    with tempfile.TemporaryDirectory(prefix="fairuse-inject-") as folder:
        simulation = simulate_traffic(Path(folder), keys=keys, days=days, seed=seed)
        frame = read_events([simulation.events_path]).frame
        result = score_events(
            frame, plans=plans, policy=policy, detectors=default_detectors(model), simulated=True
        )
        decisions_path = Path(folder) / "decisions.jsonl"
        decisions_path.write_bytes(b"".join(orjson.dumps(item.to_dict()) + b"\n" for item in result.decisions))
        report = evaluate(simulation.labels_path, decisions_path).to_dict()

    return {
        "simulation": f"fairuse simulate --keys {keys} --days {days} --seed {seed}",
        "recall": {row["kind"]: row["recall"] for row in report["abuse"]},
        "median_seconds_to_detect": {row["kind"]: row["median_seconds_to_detect"] for row in report["abuse"]},
        "benign_keys": report["benign_total"]["keys"],
        "benign_false_action_share": report["overall"]["benign_false_action_share"],
        "benign_review_share": report["overall"]["benign_review_share"],
    }


def simulation_abuse_keys(labels_path: Path) -> set[str]:
    """Return the abusive keys of a ``fairuse simulate`` labels file."""
    labels = pd.read_csv(labels_path, dtype={"key_id": str, "is_abuse": str}, keep_default_na=False)
    if "key_id" not in labels or "is_abuse" not in labels:
        raise ValueError(f"{labels_path}: expected the columns key_id and is_abuse of `fairuse simulate` labels")
    return set(labels.loc[labels["is_abuse"] == "1", "key_id"])

