#!/usr/bin/env python3
"""Compare the state path's decisions on events in arrival order with the batch command's decisions.

    FAIRUSE_HOSTING_NETWORKS=DIR/hosting-networks.txt \\
        .venv/bin/python scripts/arrival_order_decisions.py DIR/events.jsonl [--window 60]

The events are put in the order a gateway appends them, when each response
ends (``ts + latency_ms``), and cut into micro-batches of ``--window``
seconds of arrival time. Each micro-batch is sorted by event time, scored by
``StateScorer`` and decided with the stored findings of the merge window as
context (``decide_in_chunks`` of the state scorer's tests), as the state
worker does. Events that arrive after a later-started event of their subject in
an earlier batch are late to the state. The report counts the decisions of
both, the (subject, action) pairs they share, the decision ids they share, and
lists the decisions of either side whose id the other lacks.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

# The chunked policy run lives with the tests that check it against the batch, and tests are not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tests.test_state_scorer as state_scorer_tests
from detector.features.hosting import hosting_from_environment
from detector.model_registry import load_model
from detector.pipeline import default_detectors, score_events
from detector.plans import load_plans
from detector.policy import load_policy
from detector.readers import read_events

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--window", type=float, default=60.0, help="Seconds of arrival time per micro-batch (default 60).")
    args = parser.parse_args()

    hosting_from_environment()
    frame = read_events([args.events]).frame
    plans, policy = load_plans(), load_policy()
    detectors = default_detectors(load_model())
    state_scorer_tests.DETECTORS = detectors

    batch = score_events(frame, plans=plans, policy=policy, detectors=detectors, now=NOW).decisions
    arrived, cuts = in_arrival_batches(frame, args.window)
    chunked = state_scorer_tests.decide_in_chunks(arrived, cuts, plans, policy, NOW)
    report(batch, chunked, len(cuts) + 1, args.window)


def in_arrival_batches(frame: pd.DataFrame, window: float) -> tuple[pd.DataFrame, list[int]]:
    """Return the events in arrival order, each batch of ``window`` seconds sorted by time, and the batch starts."""
    arrival = frame["ts"].to_numpy() + frame["latency_ms"].to_numpy() / 1000.0
    order = np.argsort(arrival, kind="stable")
    ordered = frame.iloc[order].reset_index(drop=True)
    cuts = (np.flatnonzero(np.diff(arrival[order] // window) > 0) + 1).tolist()

    bounds = [0, *cuts, len(ordered)]
    batches = [ordered.iloc[start:end].sort_values("ts", kind="stable") for start, end in zip(bounds[:-1], bounds[1:])]
    return pd.concat(batches, ignore_index=True), cuts


def report(batch: list, chunked: list, batches: int, window: float) -> None:
    pairs = {(decision.subject_type, decision.subject, decision.action) for decision in batch}
    chunked_pairs = {(decision.subject_type, decision.subject, decision.action) for decision in chunked}
    batch_ids = {decision.id for decision in batch}
    chunked_ids = {decision.id for decision in chunked}

    print(f"batch: {len(batch)} decisions; state in {batches:,} arrival batches of {window:g} s: {len(chunked)} decisions")
    print(f"(subject, action) pairs: batch {len(pairs)}, state {len(chunked_pairs)}, both {len(pairs & chunked_pairs)}")
    print(f"decision ids in both: {len(batch_ids & chunked_ids)} of the batch's {len(batch_ids)}")
    for side, decisions, other in (("batch only", batch, chunked_ids), ("state only", chunked, batch_ids)):
        for decision in decisions:
            if decision.id not in other:
                print(f"  {side}: {decision.subject} {decision.action} {','.join(decision.reasons)} at {decision.detected_at}")


if __name__ == "__main__":
    main()
