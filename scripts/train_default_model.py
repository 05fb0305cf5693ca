#!/usr/bin/env python3
"""Train the IsolationForest that ships in models/, on simulated traffic.

    .venv/bin/python scripts/train_default_model.py [--keys 1000] [--days 7] [--seed 7] [--version V]

The forest is fitted on every key-day of a simulated week (abuse included, as
real history would be). The threshold is the 99.5th percentile of the anomaly
scores of the benign key-days, so about 0.5% of ordinary key-days pass it and
policy sends only the far end of those (score ≥ 90) to review.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import IsolationForest

from detector.features import prepare_events
from detector.features.keyday import KEYDAY_FEATURES, keyday_features
from detector.model_registry import default_models_dir, save_model
from detector.plans import load_plans
from detector.readers import read_events
from detector.simulate import simulate_traffic

BENIGN_QUANTILE = 0.995


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--version", default=datetime.now(UTC).strftime("%Y.%m.%d"))
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        simulation = simulate_traffic(Path(folder), keys=args.keys, days=args.days, seed=args.seed)
        read = read_events([simulation.events_path])
        labels = pd.read_csv(simulation.labels_path, dtype={"key_id": str}, keep_default_na=False)

    prepared = prepare_events(read.frame, load_plans())
    rows = keyday_features(prepared)
    features = rows[list(KEYDAY_FEATURES)].to_numpy(dtype=np.float64)
    subject = prepared.subjects["subject"].to_numpy()[rows["subject"].to_numpy()]
    abuse_keys = set(labels.loc[labels["is_abuse"] == 1, "key_id"])
    is_abuse = np.array([key in abuse_keys for key in subject])

    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=args.seed)
    forest.fit(features)
    scores = -forest.score_samples(features)
    threshold = float(np.quantile(scores[~is_abuse], BENIGN_QUANTILE))

    metadata = {
        "version": args.version,
        "kind": "IsolationForest",
        "features": list(KEYDAY_FEATURES),
        "threshold": threshold,
        "training": {
            "source": f"fairuse simulate --keys {args.keys} --days {args.days} --seed {args.seed}",
            "window_start": datetime.fromtimestamp(float(read.frame["ts"].min()), UTC).isoformat(),
            "window_end": datetime.fromtimestamp(float(read.frame["ts"].max()), UTC).isoformat(),
            "rows": int(len(rows)),
        },
        "metrics": {
            "benign_keydays_over_threshold": float((scores[~is_abuse] > threshold).mean()),
            "abuse_keydays_over_threshold": float((scores[is_abuse] > threshold).mean()),
        },
        "libraries": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
        "created_at": datetime.now(UTC).isoformat(),
    }
    path = save_model(forest, metadata, args.models_dir)
    print(f"wrote {path}")
    print(f"threshold {threshold:.4f}; metrics {metadata['metrics']}")


if __name__ == "__main__":
    main()
