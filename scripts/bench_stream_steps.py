#!/usr/bin/env python3
"""Time each step of the stream worker's micro-batches in one process, as the windows grow.

    .venv/bin/python scripts/bench_stream_steps.py [--batches 30] [--history-days 7] [--cpu]
        [--no-model] [--profile N] [--redis redis://127.0.0.1:6379/0]

The traffic is that of ``bench_stream.py``'s latency test: 2,000 background
keys send 10,000 events a simulated second between them, and from the second
batch on one more bot a batch sends 100 requests a second with one prompt.
With ``--history-days N`` the simulated keys' first N days are stored first,
as in that test. Each batch is one simulated second of events, handed to
``StreamConsumer.process_entries`` directly, so no Redis stream or second
process is involved and the figures are the worker's own work.

Every fifth batch prints its total time and the time of each step: reading the
windows, dropping repeated requests, preparing the events, each detector,
storing, publishing, the activity rows and extending the windows. ``--cpu``
measures process CPU time instead of wall time, which a busy machine disturbs
less. ``--profile N`` prints a pyinstrument profile of batch N.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import bench_stream
import orjson
import redis

import workers.consumer as consumer_module
from detector import pipeline
from detector.model_switch import ModelSwitch
from detector.plans import load_plans
from detector.policy import load_policy
from detector.store import open_store
from workers.consumer import StreamConsumer, StreamSettings
from workers.publish import DecisionPublisher
from workers.window import EventWindows

BACKGROUND_RATE = 10_000
BOT_RATE = 100
BOTS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--history-days", type=int, default=7)
    parser.add_argument("--cpu", action="store_true", help="Measure process CPU time instead of wall time.")
    parser.add_argument("--no-model", action="store_true", help="Run without the anomaly model, as bench_stream.py does.")
    parser.add_argument("--profile", type=int, default=-1, help="Print a pyinstrument profile of this batch.")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    clock = time.process_time if args.cpu else time.perf_counter
    client = redis.Redis.from_url(args.redis)
    prefix = f"steps-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        try:
            consumer = build_consumer(client, prefix, Path(folder), args)
            timings = time_steps(consumer, clock)
            run_batches(consumer, args, clock, timings)
        finally:
            bench_stream.cleanup(client, prefix)


def build_consumer(client: redis.Redis, prefix: str, folder: Path, args: argparse.Namespace) -> StreamConsumer:
    """Return a consumer under ``prefix`` whose windows and store contain the history, if any."""
    database = f"sqlite:///{folder}/steps.db"
    store = open_store(database)
    if args.history_days:
        history, _ = bench_stream.simulated_lines(folder, 500, 1, args.history_days)
        history_end = bench_stream.SIMULATION_START.timestamp() + args.history_days * 86400
        frame = bench_stream._background_history(history, time.time() - history_end)
        bench_stream.preload(client, prefix, database, frame)

    policy = load_policy()
    models = ModelSwitch(store, policy=policy, use_model=not args.no_model)
    return StreamConsumer(
        client, store, plans=load_plans(), policy=policy, detectors=models.detectors(),
        windows=EventWindows(client, prefix=prefix), publisher=DecisionPublisher(client, prefix=prefix),
        settings=StreamSettings(stream=f"{prefix}:events"), models=models,
    )


def time_steps(consumer: StreamConsumer, clock: Callable[[], float]) -> dict[str, float]:
    """Wrap the consumer's steps so each adds its time to the returned dict, by step name."""
    timings: dict[str, float] = collections.defaultdict(float)

    def timed(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                timings[label] += clock() - started

        setattr(owner, name, wrapper)

    timed(consumer.windows, "load", "read windows")
    timed(consumer.windows, "extend", "extend windows")
    timed(consumer_module, "drop_repeated_requests", "drop repeats")
    timed(pipeline, "prepare_events", "prepare")
    timed(consumer.store, "save_findings", "store")
    timed(consumer.store, "save_decisions", "store")
    timed(consumer.publisher, "publish", "publish")
    timed(consumer_module.ActivityLog, "record", "activity")

    def run_detectors(detectors, prepared, processes=1, since=None):
        found = []
        for detector in detectors:
            started = clock()
            found.append(pipeline.detect_since(detector, prepared, since))
            timings[detector.reason] += clock() - started
        return found

    pipeline.run_detectors = run_detectors
    return timings


def run_batches(
    consumer: StreamConsumer, args: argparse.Namespace, clock: Callable[[], float], timings: dict[str, float]
) -> None:
    start = time.time()
    sent = 0
    for number in range(args.batches):
        entries, sent = one_second(start + number, number, sent)
        timings.clear()
        profiler = _start_profiler() if number == args.profile else None
        started = clock()
        consumer.process_entries(entries)
        total = clock() - started
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False))
        if number % 5 == 4 or number == args.batches - 1:
            steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in timings.items())
            print(f"batch {number}: {len(entries):,} entries, {total:.2f} s ({steps})", flush=True)


def one_second(tick: float, number: int, sent: int) -> tuple[list, int]:
    """Return the stream entries of one simulated second starting at ``tick``, and the new sent count."""
    bots = min(number, BOTS)
    entries = []
    for index in range(BACKGROUND_RATE - BOT_RATE * bots):
        event = bench_stream._event(f"bg-{sent % bench_stream.BACKGROUND_KEYS}", tick + index / BACKGROUND_RATE, sent)
        entries.append((f"{number}-{index}".encode(), {b"event": orjson.dumps(event)}))
        sent += 1
    for bot in range(bots):
        for index in range(BOT_RATE):
            event = bench_stream._event(f"bot-{bot}", tick + index / BOT_RATE, sent, prompt="loop")
            entries.append((f"{number}-{bot}-{index}".encode(), {b"event": orjson.dumps(event)}))
            sent += 1
    return entries, sent


def _start_profiler():
    from pyinstrument import Profiler

    profiler = Profiler()
    profiler.start()
    return profiler


if __name__ == "__main__":
    main()
