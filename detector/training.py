"""Train the IsolationForest and recalibrate detector thresholds from event history.

History is the gateway's event logs: the store keeps findings and decisions,
never raw events, so ``fairuse train`` reads the same files ``fairuse score``
does. Subjects that staff labelled abuse (the ``labels`` table) or that a
simulation's labels file marks as abuse are left out of the benign history.
The forest is fitted on the benign key-days only. Its threshold and the
recalibrated detector thresholds are quantiles of benign statistics.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import IsolationForest

from detector.features import PreparedEvents, prepare_events
from detector.features.keyday import KEYDAY_FEATURES, keyday_features
from detector.model_registry import AnomalyModel
from detector.plans import PlanCatalogue
from detector.thresholds import Thresholds

# Share of benign key-days whose anomaly score stays at or under the threshold.
BENIGN_QUANTILE = 0.995
# Training-range check: a row this many scales beyond a feature's training range is anomalous.
RANGE_TOLERANCE = 3.0
# Smallest scale per feature, so a feature that was constant in training still has one.
# Log features: 0.5 is a factor of 1.65; shares: 0.1 of the whole range.
SCALE_FLOORS = {
    "log_requests": 0.5,
    "log_cost": 0.5,
    "log_images": 0.5,
    "networks": 1.0,
    "user_agents": 1.0,
    "countries": 1.0,
    "error_share": 0.1,
    "log_tokens_per_request": 0.5,
    "active_hours": 2.0,
    "log_peak_10m": 0.5,
    "top_prompt_share": 0.1,
    "cost_vs_budget": 0.25,
    "requests_vs_expected": 0.25,
}


@dataclass(slots=True)
class TrainingSet:
    """Key-day feature rows of the history, with which rows are benign."""

    prepared: PreparedEvents
    rows: pd.DataFrame
    features: np.ndarray
    benign: np.ndarray
    window_start: float
    window_end: float

    @property
    def subject_names(self) -> np.ndarray:
        return self.prepared.subjects["subject"].to_numpy()[self.rows["subject"].to_numpy()]

    @property
    def account_names(self) -> np.ndarray:
        return self.prepared.subjects["account_id"].to_numpy()[self.rows["subject"].to_numpy()]


def build_training_set(
    frame: pd.DataFrame, plans: PlanCatalogue, abuse_keys: set[str], abuse_accounts: set[str] = frozenset()
) -> TrainingSet:
    """Compute key-day features of ``frame``; rows of abusive keys or accounts are not benign.

    Raises ValueError when ``frame`` has no events or no benign key-day.
    """
    if frame.empty:
        raise ValueError("no events to train on; pass event files that hold gateway requests")
    prepared = prepare_events(frame, plans)
    rows = keyday_features(prepared).reset_index(drop=True)
    features = rows[list(KEYDAY_FEATURES)].to_numpy(dtype=np.float64)
    subjects = prepared.subjects["subject"].to_numpy()[rows["subject"].to_numpy()]
    accounts = prepared.subjects["account_id"].to_numpy()[rows["subject"].to_numpy()]
    abusive = np.isin(subjects, list(abuse_keys)) | np.isin(accounts, list(abuse_accounts))
    if not (~abusive).any():
        raise ValueError("every key-day in the history belongs to an abusive subject; nothing benign to train on")
    return TrainingSet(
        prepared=prepared,
        rows=rows,
        features=features,
        benign=~abusive,
        window_start=float(frame["ts"].min()),
        window_end=float(frame["ts"].max()),
    )


# Shares are bounded by 1, so reaching 1 is not an extreme value. A new key
# that repeats one prompt has a top_prompt_share of 1 and is not anomalous by that alone.
UNGUARDED = frozenset({"error_share", "top_prompt_share"})


def feature_ranges(features: np.ndarray) -> dict[str, object]:
    """Return each feature's training minimum, maximum and scale (IQR, at least its floor).

    Features in ``UNGUARDED`` are marked so the range check skips them.
    """
    low = features.min(axis=0)
    high = features.max(axis=0)
    spread = np.quantile(features, 0.75, axis=0) - np.quantile(features, 0.25, axis=0)
    floors = np.array([SCALE_FLOORS[name] for name in KEYDAY_FEATURES])
    return {
        "low": [round(float(value), 6) for value in low],
        "high": [round(float(value), 6) for value in high],
        "scale": [round(float(value), 6) for value in np.maximum(spread, floors)],
        "tolerance": RANGE_TOLERANCE,
        "guarded": [name not in UNGUARDED for name in KEYDAY_FEATURES],
    }


def fit_model(
    training: TrainingSet,
    *,
    version: str,
    seed: int = 7,
    quantile: float = BENIGN_QUANTILE,
    n_estimators: int = 200,
    contamination: float | str = "auto",
    thresholds: Thresholds | None = None,
    source: str = "",
) -> AnomalyModel:
    """Fit the forest on the benign key-days and return it with its metadata (checksums are added on save).

    ``contamination`` is passed to scikit-learn but never used for decisions:
    the threshold is the ``quantile`` of benign anomaly scores, so a setting
    of 5% does not put 5% of clean keys over it.
    """
    benign = training.features[training.benign]
    forest = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(256, len(benign)),
        contamination=contamination,
        random_state=seed,
    )
    forest.fit(benign)
    forest_scores = -forest.score_samples(benign)
    threshold = float(np.quantile(forest_scores, quantile))

    metadata = {
        "version": version,
        "kind": "IsolationForest",
        "candidate": True,
        "features": list(KEYDAY_FEATURES),
        "threshold": threshold,
        "threshold_rule": f"quantile {quantile} of the benign key-days' anomaly scores",
        "feature_ranges": feature_ranges(benign),
        "thresholds": thresholds or {},
        "training": {
            "source": source,
            "window_start": _iso(training.window_start),
            "window_end": _iso(training.window_end),
            "rows": int(len(training.rows)),
            "benign_rows": int(training.benign.sum()),
            "seed": seed,
            "n_estimators": n_estimators,
            "contamination": contamination,
        },
        "libraries": library_versions(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    return AnomalyModel(estimator=forest, metadata=metadata)


def library_versions() -> dict[str, str]:
    """Return the versions of Python and the libraries that fit and read the model."""
    import skops

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "skops": skops.__version__,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
