#!/usr/bin/env python3
"""Time the state worker's batches with and without its hourly activity rows, in one process.

    .venv/bin/python scripts/bench_state_activity.py [--events 200000] [--keys 500] [--history-days 7]
        [--batch-size 10000] [--no-model] [--redis redis://127.0.0.1:6379/0]

The events are those of ``bench_stream.py --path state``: the first
``--history-days`` simulated days are fed first, untimed, and the events
after them are timed. Two state workers, each with its own Redis key prefix
and SQLite store, get the same batches through ``process_entries``, taking
turns to go first. One keeps and writes the activity rows
(``workers.state_activity``); the other has that step replaced by a no-op,
as before it was built. Both are measured in process CPU time, which a busy
machine disturbs less than wall time. The script prints the ratio of
their totals, the CPU time spent in the activity steps themselves, and the
size of the activity state and of each checkpoint. Two identical workers
differed by up to 17% on a loaded machine, so with few batches the steps'
own time is the steadier figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import bench_stream
import numpy as np
import redis

import workers.state_consumer as state_module
from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.plans import load_plans
from detector.policy import load_policy
from detector.store import open_store
from workers.checkpoint import dump_state
from workers.publish import DecisionPublisher
from workers.state_activity import HourlyActivity
from workers.state_consumer import StateConsumer, StateSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--history-days", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--no-model", action="store_true", help="Run without the anomaly model.")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis)
    detectors = default_detectors() if args.no_model else default_detectors(load_model())
    with tempfile.TemporaryDirectory() as folder:
        history, lines = bench_stream.simulated_lines(Path(folder), args.keys, args.events, args.history_days)
        workers = {name: _worker(client, Path(folder), detectors) for name in ("with activity", "without")}
        try:
            for name, worker in workers.items():
                _feed(worker, history, args.batch_size, keep_activity=name == "with activity")
            totals = dict.fromkeys(workers, 0.0)
            STEPS.update(dict.fromkeys(STEPS, 0.0))
            for number, start in enumerate(range(0, len(lines), args.batch_size)):
                batch = lines[start : start + args.batch_size]
                names = list(workers) if number % 2 == 0 else list(reversed(workers))
                for name in names:
                    totals[name] += _feed(workers[name], batch, len(batch), keep_activity=name == "with activity")
            _report(workers, totals, detectors, len(history), len(lines), args.batch_size)
        finally:
            for worker in workers.values():
                bench_stream.cleanup(client, worker.settings.prefix)


def _worker(client: redis.Redis, folder: Path, detectors) -> StateConsumer:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = open_store(f"sqlite:///{folder}/{prefix}.db")
    worker = StateConsumer(
        client, store, plans=load_plans(), policy=load_policy(), detectors=detectors,
        publisher=DecisionPublisher(client, prefix=prefix), settings=StateSettings(prefix=prefix, owner="bench"),
    )
    worker.owned[0] = worker._empty_state()
    return worker


# Process CPU seconds spent in the activity steps of the timed batches.
STEPS = {"counting": 0.0, "writing": 0.0}


def _timed(function, step: str):
    def run(*arguments):
        started = time.process_time()
        try:
            return function(*arguments)
        finally:
            STEPS[step] += time.process_time() - started

    return run


def _feed(worker: StateConsumer, lines: list[bytes], batch_size: int, *, keep_activity: bool) -> float:
    """Apply ``lines`` to partition 0 in batches; return the process CPU seconds it took."""
    original = (state_module.record_activity, HourlyActivity.add)
    if keep_activity:
        state_module.record_activity = _timed(original[0], "writing")
        HourlyActivity.add = _timed(original[1], "counting")
    else:
        state_module.record_activity = lambda *arguments: 0
        HourlyActivity.add = lambda self, chunk: np.empty(0, np.int64)
    try:
        started = time.process_time()
        for start in range(0, len(lines), batch_size):
            entries = [(f"{start + offset + 1}-0".encode(), {b"event": line})
                       for offset, line in enumerate(lines[start : start + batch_size])]
            worker.process_entries(0, entries)
        return time.process_time() - started
    finally:
        state_module.record_activity, HourlyActivity.add = original


def _report(workers: dict[str, StateConsumer], totals: dict[str, float], detectors, history: int, events: int,
            batch_size: int) -> None:
    plans = load_plans()
    for name, worker in workers.items():
        state = worker.owned[0]
        checkpoint = len(dump_state(state, detectors, plans))
        print(f"{name}: {totals[name]:.2f} s CPU, {events / totals[name]:,.0f} events/s; "
              f"checkpoint {checkpoint / 1e6:.1f} MB")
    activity = workers["with activity"].owned[0].activity
    print(f"activity state: {len(activity):,} hours, {len(activity.value_keys):,} distinct values, "
          f"{activity.nbytes() / 1e6:.1f} MB of arrays, {len(activity.ids):,} subjects, {len(activity.charted):,} charted")
    steps = sum(STEPS.values())
    print(f"activity steps: counting {STEPS['counting']:.3f} s, lookups and writing {STEPS['writing']:.3f} s, "
          f"{steps / totals['with activity']:.1%} of the batches' CPU time")
    print(f"ratio with/without activity: {totals['with activity'] / totals['without']:.3f} "
          f"({events:,} events after {history:,} of history, batches of {batch_size:,})")


if __name__ == "__main__":
    main()
