#!/usr/bin/env python3
"""Key-sharing latency breakdown: per abusive key, when the evidence exists, and the first finding and decision.

    .venv/bin/python scripts/sharing_latency.py [--keys 500] [--days 7] [--seed 1] [--per-key]

Simulates a week, scores it with the shipped detectors and policy (no anomaly
model), and prints, per sharing kind, the median minutes after the labelled
onset (the first abusive request) at which:

- ``two_devices``: the key's device graph over the trailing 24 hours first
  has two components (two clients in separate places, two requests each);
- ``two_countries``: two of those components first have no country in common;
- ``three_devices``: the graph first has three components;
- ``new_device``: a new device first joins beside an established one, with
  the shipped ``new_device_age``, ``established_age`` and ``established_window``;
- ``finding`` and ``decision``: the first ``key_sharing`` finding and decision.

Keys that never reach a column count as missing there; the count is printed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from detector.detectors import KeySharingDetector
from detector.detectors.device_graph import rolling_components
from detector.evaluate import read_labels
from detector.pipeline import default_detectors, score_events
from detector.plans import load_plans
from detector.policy import load_policy
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.thresholds import load_thresholds

SHARING_KINDS = ("resold_key", "shared_key")
DAY = 86400.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-key", action="store_true", help="Also print one row per abusive key.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fairuse-sharing-") as folder:
        simulation = simulate_traffic(Path(folder), keys=args.keys, days=args.days, seed=args.seed)
        frame = read_events([simulation.events_path]).frame
        labels = read_labels(simulation.labels_path)

    result = score_events(frame, plans=load_plans(), policy=load_policy(), detectors=default_detectors())
    table = _latency_table(result, labels)
    if args.per_key:
        print(table.to_string(index=False), end="\n\n")

    columns = ["two_devices", "two_countries", "three_devices", "new_device", "finding", "decision"]
    medians = table.groupby("kind")[columns].median().round(1)
    reached = table.groupby("kind")[columns].count()
    print(f"fairuse simulate --keys {args.keys} --days {args.days} --seed {args.seed}: "
          "median minutes after onset (keys that reach it)")
    for kind in medians.index:
        cells = [f"{column} {medians.loc[kind, column]} ({reached.loc[kind, column]})" for column in columns]
        print(f"{kind}: " + ", ".join(cells))


def _latency_table(result, labels) -> pd.DataFrame:
    prepared = result.prepared
    names = prepared.subjects["subject"].tolist()
    code_of = {name: code for code, name in enumerate(names)}
    shipped = KeySharingDetector(**load_thresholds()["key_sharing"])
    growth = rolling_components(
        prepared.events, window=DAY, requests=2, country_window=DAY,
        new_device_age=shipped.new_device_age, established_age=shipped.established_age,
        established_window=shipped.established_window,
    )
    findings = _first_times((f.subject, f.detected_at) for f in result.findings if f.reason == "key_sharing")
    decisions = _first_times(
        (d.subject, d.detected_at.timestamp()) for d in result.decisions if "key_sharing" in d.reasons
    )

    rows = []
    for label in labels.values():
        if label.kind not in SHARING_KINDS or label.key_id not in code_of:
            continue
        onset = label.onset
        mine = growth[(growth["subject"] == code_of[label.key_id]) & (growth["ts"] >= onset)]
        rows.append(
            {
                "key": label.key_id,
                "kind": label.kind,
                "two_devices": _minutes(mine["ts"][mine["components"] >= 2], onset),
                "two_countries": _minutes(mine["ts"][mine["country_components"] >= 2], onset),
                "three_devices": _minutes(mine["ts"][mine["components"] >= 3], onset),
                "new_device": _minutes(mine["ts"][mine["new_device"] > 0], onset),
                "finding": _minutes(pd.Series([findings.get(label.key_id, np.nan)]), onset),
                "decision": _minutes(pd.Series([decisions.get(label.key_id, np.nan)]), onset),
            }
        )
    return pd.DataFrame(rows).sort_values(["kind", "decision"], kind="stable")


def _first_times(pairs) -> dict[str, float]:
    first: dict[str, float] = {}
    for subject, at in pairs:
        first[subject] = min(at, first.get(subject, np.inf))
    return first


def _minutes(times: pd.Series, onset: float) -> float:
    times = times.dropna()
    return round((float(times.min()) - onset) / 60.0, 1) if len(times) else np.nan


if __name__ == "__main__":
    main()
