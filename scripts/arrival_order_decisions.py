#!/usr/bin/env python3
"""Compare the state path's decisions on events in arrival order with the batch command's decisions.

    FAIRUSE_HOSTING_NETWORKS=DIR/hosting-networks.txt \\
        .venv/bin/python scripts/arrival_order_decisions.py DIR/events.jsonl [--window 60] [--lateness 0,120]
        [--days N]

The events are put in the order a gateway appends them, when each response
ends (``ts + latency_ms``), and cut into micro-batches of ``--window``
seconds of arrival time. Each micro-batch is sorted by event time, scored by
``StateScorer`` and decided with the stored findings of the merge window as
context (``decide_in_chunks`` of the state scorer's tests), as the state
worker does. Events that arrive after a later-started event of their subject in
an earlier batch are late to the state.

With ``--lateness`` the batches go through the state worker's event tail
(``detector.state.tail``) with each lateness in turn: 0 applies every batch
at once, as the worker did before tails. ``--days N`` keeps the first N days
of the input. For each lateness the report counts the decisions of both, the
(subject, action) pairs they share, the decision ids they share, the events
that came later than the lateness and the subjects the state reported
inexact, and lists the decisions of either side whose id the other lacks.
"""

from __future__ import annotations

import argparse
import sys
import time
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
from detector.state.tail import EventTail

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--window", type=float, default=60.0, help="Seconds of arrival time per micro-batch (default 60).")
    parser.add_argument(
        "--lateness", default="0,120", help="Comma-separated lateness values in seconds to run the state with (default 0,120)."
    )
    parser.add_argument("--days", type=float, help="Keep only the first DAYS days of events.")
    args = parser.parse_args()

    hosting_from_environment()
    frame = read_events([args.events]).frame
    if args.days is not None:
        frame = frame[frame["ts"] < frame["ts"].min() + args.days * 86400].reset_index(drop=True)
    plans, policy = load_plans(), load_policy()
    detectors = default_detectors(load_model())
    state_scorer_tests.DETECTORS = detectors

    batch = score_events(frame, plans=plans, policy=policy, detectors=detectors, now=NOW).decisions
    arrived, cuts = in_arrival_batches(frame, args.window)
    late = int((arrived["ts"].to_numpy() < arrived.groupby(["subject_type", "key_id"])["ts"].cummax().to_numpy()).sum())
    print(f"{len(frame):,} events, {late:,} of them after a later-started event of their subject in an earlier batch")
    for lateness in [float(value) for value in args.lateness.split(",")]:
        inexact: list[pd.DataFrame] = []
        started = time.perf_counter()
        chunked = state_scorer_tests.decide_in_chunks(arrived, cuts, plans, policy, NOW, lateness, inexact)
        elapsed = time.perf_counter() - started
        print(f"\nlateness {lateness:g} s ({elapsed:.0f} s to run):")
        print(f"  events later than the lateness: {beyond_lateness(arrived, cuts, lateness):,}")
        report_inexact(pd.concat(inexact, ignore_index=True))
        report(batch, chunked, len(cuts) + 1, args.window)


def beyond_lateness(arrived: pd.DataFrame, cuts: list[int], lateness: float) -> int:
    """Return how many events are older than their partition's watermark when their batch arrives (one partition)."""
    tail = EventTail(lateness)
    bounds = [0, *cuts, len(arrived)]
    return sum(tail.add(arrived.iloc[start:end]).beyond_lateness for start, end in zip(bounds[:-1], bounds[1:]))


def report_inexact(inexact: pd.DataFrame) -> None:
    subjects = inexact[["subject_type", "subject"]].drop_duplicates()
    reasons = inexact.drop_duplicates().groupby("why").size().to_dict()
    print(f"  inexact subjects: {len(subjects)} (subjects per reason {reasons})")


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

    print(f"  batch: {len(batch)} decisions; state in {batches:,} arrival batches of {window:g} s: {len(chunked)} decisions")
    print(f"  (subject, action) pairs: batch {len(pairs)}, state {len(chunked_pairs)}, both {len(pairs & chunked_pairs)}")
    print(f"  decision ids in both: {len(batch_ids & chunked_ids)} of the batch's {len(batch_ids)}")
    for side, decisions, other in (("batch only", batch, chunked_ids), ("state only", chunked, batch_ids)):
        for decision in decisions:
            if decision.id not in other:
                print(f"    {side}: {decision.subject} {decision.action} {','.join(decision.reasons)} at {decision.detected_at}")


if __name__ == "__main__":
    main()
