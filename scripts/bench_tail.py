#!/usr/bin/env python3
"""Time the state path with and without the event tail, alternating, on one events file in arrival order.

    FAIRUSE_HOSTING_NETWORKS=DIR/hosting-networks.txt \\
        .venv/bin/python scripts/bench_tail.py DIR/events.jsonl [--batch 5000] [--rounds 3] [--lateness 120]

The events are put in the order a gateway appends them (``ts +
latency_ms``). The first 60 % go through ``EventTail`` and ``StateScorer``
(with the shipped model's detectors) untimed, and the state is copied. Each
round then feeds the other 40 % in batches of ``--batch`` entries to a fresh
copy, once with lateness 0 (each batch applied at once) and once with
``--lateness``, and times the tail and the state update together. Redis,
parsing, the policy and storage are left out, because they do not change
with the lateness. The report gives each run's rate, the time in
``StateScorer.score``, and the ratio of the median times.
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np

from detector.features.hosting import hosting_from_environment
from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.plans import load_plans
from detector.readers import read_events
from detector.state.scorer import STREAM_RETENTION, StateScorer
from detector.state.tail import EventTail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--batch", type=int, default=5000, help="Events per batch in the timed part (default 5000).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of both runs (default 3).")
    parser.add_argument("--lateness", type=float, default=120.0, help="Lateness in seconds to compare with 0 (default 120).")
    args = parser.parse_args()

    hosting_from_environment()
    frame = read_events([args.events]).frame
    order = np.argsort(frame["ts"].to_numpy() + frame["latency_ms"].to_numpy() / 1000.0, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    history = int(len(frame) * 0.6)

    scorer = StateScorer(detectors=default_detectors(load_model()), plans=load_plans(), retention=STREAM_RETENTION)
    tail = EventTail(args.lateness)
    for start in range(0, history, 50_000):
        released = tail.add(frame.iloc[start : min(start + 50_000, history)].reset_index(drop=True))
        if released.frame is not None:
            scorer.score(released.frame)
    saved = pickle.dumps((scorer, tail))

    rest = frame.iloc[history:].reset_index(drop=True)
    batches = [rest.iloc[start : start + args.batch].reset_index(drop=True) for start in range(0, len(rest), args.batch)]
    times: dict[float, list[float]] = {0.0: [], args.lateness: []}
    for round_number in range(args.rounds):
        for lateness in times:
            elapsed, scoring = timed_run(saved, batches, lateness)
            times[lateness].append(elapsed)
            print(
                f"round {round_number}, lateness {lateness:g} s: {len(rest):,} events in {elapsed:.2f} s "
                f"({len(rest) / elapsed:,.0f} events/s), StateScorer.score {scoring:.2f} s",
                flush=True,
            )
    medians = {lateness: float(np.median(values)) for lateness, values in times.items()}
    print(f"median time with lateness {args.lateness:g} s / with 0: {medians[args.lateness] / medians[0.0]:.3f}")


def timed_run(saved: bytes, batches: list, lateness: float) -> tuple[float, float]:
    """Feed ``batches`` to a copy of the saved state with ``lateness``; return the seconds in all and in the scorer."""
    scorer, tail = pickle.loads(saved)
    tail.lateness = lateness
    scoring = 0.0
    started = time.perf_counter()
    for part in batches:
        released = tail.add(part)
        if released.frame is not None:
            scored = time.perf_counter()
            scorer.score(released.frame)
            scoring += time.perf_counter() - scored
    return time.perf_counter() - started, scoring


if __name__ == "__main__":
    main()
