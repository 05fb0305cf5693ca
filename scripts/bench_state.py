#!/usr/bin/env python3
"""Benchmark per-subject state against today's stream path, for image_quota and automation or every detector.

    .venv/bin/python scripts/bench_state.py [--keys 500] [--days 7] [--seed 3] [--chunk-seconds 60] [--all]
    .venv/bin/python scripts/bench_state.py --events path/to/events.jsonl [--paths state|window|both]

A simulated input (or ``--events``) is read once and streamed in chunks of
``--chunk-seconds`` of event time. Per chunk, in the same process, it times:

- ``state``: prepare the chunk alone and update the image_quota, automation
  load and automation pattern states (``detector.state``), with the prepare
  step also reported alone;
- ``window``: what the stream worker does today for the same two detectors:
  prepare the touched subjects' trailing 7 days plus the chunk, and run
  ``detect`` with ``since`` at the chunk's first event. Selecting the window
  rows from memory is not timed; the worker reads them from Redis.

With ``--all`` both paths also run key sharing, abnormal cost and the
anomaly model (the shipped one): the states of ``detector.state`` on one
side, ``detect`` on the window on the other. The anomaly detector takes no
``since``, so the window path scores every closed day of the window again
at each chunk, as the worker does, and its findings are not compared.

``--paths state`` or ``--paths window`` runs one path alone, so that the
state path can be timed on inputs where the window path would take hours.

It reports the totals and, with both paths, their ratio. The state path returns pattern
findings only on a rebuild, so the rebuild after the last chunk is timed
apart. It also reports each state's update seconds and microseconds per
event, the state bytes per subject at the end, and the number of findings
per reason on each path run, which must be equal except for anomaly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from detector.detectors import (
    AbnormalCostDetector,
    AnomalyDetector,
    AutomationDetector,
    ImageQuotaDetector,
    KeySharingDetector,
)
from detector.detectors.base import detect_since
from detector.features import prepare_events
from detector.model_registry import load_model
from detector.plans import load_plans
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.state import (
    AbnormalCostState,
    AnomalyDayState,
    AutomationLoadState,
    AutomationPatternState,
    Chunk,
    ImageQuotaState,
    KeySharingState,
    SubjectStates,
)

WEEK = 7 * 86400.0
PATHS = ("state", "window", "both")
# Seconds of updates per incremental detector over the run.
STATE_SECONDS: Counter = Counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, help="An events JSON-lines file (default: simulate one).")
    parser.add_argument("--keys", type=int, default=500, help="Simulated keys (default 500).")
    parser.add_argument("--days", type=int, default=7, help="Simulated days (default 7).")
    parser.add_argument("--seed", type=int, default=3, help="Simulation seed (default 3).")
    parser.add_argument("--chunk-seconds", type=float, default=60.0, help="Event time per chunk, in seconds (default 60).")
    parser.add_argument("--all", action="store_true", help="Also run key sharing, abnormal cost and the anomaly model.")
    parser.add_argument(
        "--paths", choices=PATHS, default="both", help="Which paths to time: state, window or both (default both)."
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = args.events or simulate_traffic(Path(folder), keys=args.keys, days=args.days, seed=args.seed).events_path
        frame = read_events([path]).frame
    report(run(frame, args.chunk_seconds, every_detector=args.all, paths=args.paths))


def run(frame: pd.DataFrame, chunk_seconds: float, every_detector: bool = False, paths: str = "both") -> dict[str, float]:
    """Stream ``frame`` through the chosen ``paths`` (one of ``PATHS``) and return the totals and counts."""
    timed_state = paths in ("state", "both")
    timed_window = paths in ("window", "both")
    plans = load_plans()
    image_quota, automation = ImageQuotaDetector(), AutomationDetector()
    detectors = [image_quota, automation]
    states = [ImageQuotaState(image_quota), AutomationLoadState(automation)]
    if every_detector:
        sharing, cost, anomaly = KeySharingDetector(), AbnormalCostDetector(), AnomalyDetector(load_model())
        detectors += [sharing, cost, anomaly]
        states += [KeySharingState(sharing, retention=WEEK), AbnormalCostState(cost), AnomalyDayState(anomaly)]
    pattern = AutomationPatternState(automation, retention=WEEK)
    windows = SubjectRows(frame) if timed_window else None

    ts = frame["ts"].to_numpy()
    edges = np.searchsorted(ts, np.arange(ts[0], ts[-1] + chunk_seconds, chunk_seconds), side="left")
    totals = {
        "paths": paths, "state": 0.0, "state_prepare": 0.0, "window": 0.0,
        "state_findings": Counter(), "window_findings": Counter(), "chunks": 0,
    }
    # Per day of the input: [state seconds, window seconds, chunks], to show which path grows as windows fill.
    per_day: dict[int, list[float]] = {}
    for start, end in zip(edges[:-1], edges[1:]):
        if start == end:
            continue
        chunk_frame = frame.iloc[start:end].reset_index(drop=True)

        state_seconds, prepare_seconds, state_found = 0.0, 0.0, Counter()
        if timed_state:
            state_seconds, prepare_seconds, state_found = time_state(chunk_frame, plans, [*states, pattern])
        window_seconds, window_found = 0.0, Counter()
        if timed_window:
            window = windows.before(chunk_frame, float(ts[start]))
            window_seconds, window_found = time_window(window, chunk_frame, float(ts[start]), plans, detectors)

        totals["state"] += state_seconds
        totals["state_prepare"] += prepare_seconds
        totals["window"] += window_seconds
        day = per_day.setdefault(int((ts[start] - ts[0]) // 86400), [0.0, 0.0, 0])
        day[0] += state_seconds
        day[1] += window_seconds
        day[2] += 1
        totals["state_findings"] += state_found
        totals["window_findings"] += window_found
        totals["chunks"] += 1

    totals["per_day"] = per_day
    totals["events"] = len(frame)
    if timed_state:
        close_state_path(totals, states, pattern, float(ts[-1]))
    return totals


def close_state_path(totals: dict, states: list, pattern: AutomationPatternState, last_ts: float) -> None:
    """Close the anomaly days, time the pattern rebuild and record the state sizes into ``totals``."""
    closing = [state for state in states if isinstance(state, AnomalyDayState)]
    for state in closing:
        totals["state_findings"].update(finding.reason for finding in state.close_days(last_ts))
    began = time.perf_counter()
    totals["pattern_findings"] = len(pattern.pattern_findings())
    totals["pattern_rebuild"] = time.perf_counter() - began
    totals["subjects"] = len(pattern.names)
    totals["bytes"] = {type(state).__name__: state_bytes(state) for state in [*states, pattern]}


def state_bytes(state: object) -> int:
    """Return the bytes of every ``SubjectStates`` an incremental detector holds, one level of helpers deep."""
    total = 0
    for value in vars(state).values() if hasattr(state, "__dict__") else ():
        if isinstance(value, SubjectStates):
            total += value.nbytes()
        elif type(value).__module__.startswith("detector.state"):
            total += sum(part.nbytes() for part in vars(value).values() if isinstance(part, SubjectStates))
    return total


def time_state(chunk_frame: pd.DataFrame, plans, states: list) -> tuple[float, float, Counter]:
    """Prepare the chunk and update every state; return the seconds, the seconds of the prepare step and the findings by reason."""
    began = time.perf_counter()
    chunk = Chunk(chunk_frame, plans)
    prepared_at = time.perf_counter()
    found = Counter()
    for state in states:
        started = time.perf_counter()
        found.update(finding.reason for finding in state.update(chunk).findings)
        STATE_SECONDS[type(state).__name__] += time.perf_counter() - started
    return time.perf_counter() - began, prepared_at - began, found


def time_window(window: pd.DataFrame, chunk_frame: pd.DataFrame, since: float, plans, detectors: list) -> tuple[float, Counter]:
    """Prepare window and chunk together and run each detector from ``since``; return the seconds and the findings by reason.

    Automation's pattern findings measure the whole window, so only its load findings are counted.
    """
    began = time.perf_counter()
    prepared = prepare_events(pd.concat([window, chunk_frame], ignore_index=True), plans)
    found = Counter()
    for detector in detectors:
        findings = detect_since(detector, prepared, since)
        found.update(finding.reason for finding in findings if finding.evidence.get("kind") != "pattern")
    return time.perf_counter() - began, found


class SubjectRows:
    """Row positions of each subject in a time-sorted frame, to cut its trailing window quickly."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.ts = frame["ts"].to_numpy()
        keys = frame["subject_type"].astype(str) + "\x1f" + frame["key_id"].astype(str)
        codes, uniques = pd.factorize(keys)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        self.rows = {key: order[bounds[i] : bounds[i + 1]] for i, key in enumerate(uniques)}

    def before(self, chunk: pd.DataFrame, start: float) -> pd.DataFrame:
        """Return the rows of the chunk's subjects in the 7 days before ``start``, in time order."""
        keys = (chunk["subject_type"].astype(str) + "\x1f" + chunk["key_id"].astype(str)).unique()
        parts = []
        for key in keys:
            rows = self.rows[key]
            ts = self.ts[rows]
            parts.append(rows[np.searchsorted(ts, start - WEEK, side="left") : np.searchsorted(ts, start, side="left")])
        return self.frame.iloc[np.sort(np.concatenate(parts))]


def report(totals: dict) -> None:
    timed_state = totals["paths"] in ("state", "both")
    timed_window = totals["paths"] in ("window", "both")
    events = max(totals["events"], 1)
    print(f"events {totals['events']:,} in {totals['chunks']:,} chunks, {totals.get('subjects', 0):,} subjects")
    if timed_state:
        print(f"state path (prepare chunk, update the states):                             {totals['state']:.2f} s")
        print(f"  of which preparing the chunk alone: {totals['state_prepare']:.2f} s")
    if timed_window:
        print(f"window path (prepare 7-day windows + chunk, detect with since):            {totals['window']:.2f} s")
    if timed_state and timed_window:
        print(f"ratio window / state: {totals['window'] / totals['state']:.1f}")
    if timed_state:
        print(f"pattern rebuild over all subjects after the last chunk: {totals['pattern_rebuild']:.3f} s, {totals['pattern_findings']} findings")
    for reason in sorted(set(totals["state_findings"]) | set(totals["window_findings"])):
        counts = []
        if timed_state:
            counts.append(f"state {totals['state_findings'][reason]:,}")
        if timed_window:
            counts.append(f"window {totals['window_findings'][reason]:,}")
        print(f"{reason} findings: {', '.join(counts)}")
    for day, (state, window, chunks) in sorted(totals["per_day"].items()):
        per_chunk = []
        if timed_state:
            per_chunk.append(f"state {1000 * state / chunks:.1f}")
        if timed_window:
            per_chunk.append(f"window {1000 * window / chunks:.1f}")
        print(f"day {day + 1}: ms per chunk, {', '.join(per_chunk)}")
    for name, seconds in STATE_SECONDS.most_common():
        print(f"state updates, {name}: {seconds:.2f} s, {1e6 * seconds / events:.1f} µs per event")
    subjects = max(totals.get("subjects", 0), 1)
    for name, size in totals.get("bytes", {}).items():
        print(f"state bytes per subject, {name}: {size / subjects:,.0f}")


if __name__ == "__main__":
    main()
