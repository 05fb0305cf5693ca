#!/usr/bin/env python3
"""Benchmark the stream path against a real local Redis.

    .venv/bin/python scripts/bench_stream.py [--events 50000] [--keys 500] [--history-days 0]
        [--batch-size 10000] [--redis redis://127.0.0.1:6379/0] [--only throughput]

Measures, each under its own key prefix (removed afterwards):

- worker throughput: events/s for one worker draining a stream of simulated
  events, and for two ``fairuse worker`` processes sharing it. By default the
  events are the first ones of a simulated week, so the subjects' windows are
  short. With ``--history-days N`` the first N simulated days are scored and
  stored beforehand, as a worker would have left them (windows in Redis,
  findings and decisions in the store), and the events that follow are
  streamed, so every batch reads and scores N days of history;
- decision lookup latency (p50/p99) through Redis (``DecisionClient`` without
  cache) and through the client's one-second cache;
- append-to-decision latency: bots start sending while background traffic
  runs at ``--rate`` events/s. It is the time from the request that crossed
  the threshold (its ``detected_at``) to the decision being readable in Redis.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import redis

from detector.decisions import Decision
from detector.pipeline import default_detectors, score_events
from detector.plans import load_plans
from detector.policy import load_policy
from detector.readers import read_json_lines
from detector.simulate import simulate_traffic
from detector.store import open_store
from fairuse_gateway import DecisionClient
from workers.consumer import StreamConsumer, StreamSettings
from workers.publish import DecisionPublisher, subject_key
from workers.window import EventWindows

SIMULATION_START = datetime(2026, 11, 23, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--rate", type=int, default=2_000, help="Background events per second in the latency test.")
    parser.add_argument("--history-days", type=int, default=0, help="Days of history stored before the timed events.")
    parser.add_argument("--batch-size", type=int, default=10_000, help="Maximum entries per micro-batch of each worker (its --batch-size).")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", choices=["throughput"], help="Run only this part.")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)

    with tempfile.TemporaryDirectory() as folder:
        history, lines = simulated_lines(Path(folder), args.keys, args.events, args.history_days)
        runs = [throughput(client, args.redis, lines, Path(folder), count, history, args.batch_size) for count in (1, 2)]
        print(
            f"worker throughput: 1 worker {runs[0]:,.0f} events/s, 2 workers {runs[1]:,.0f} events/s "
            f"({len(lines):,} events, {len(history):,} events of history, batches of {args.batch_size:,})"
        )
        if args.only == "throughput":
            return

        direct, cached = lookup_latency(client, args.redis)
        print(f"lookup through Redis: p50 {direct[0]:.0f} µs, p99 {direct[1]:.0f} µs")
        print(f"lookup through cache: p50 {cached[0]:.1f} µs, p99 {cached[1]:.1f} µs")

        latencies = append_to_decision(client, Path(folder), args.rate)
        if latencies:
            p50 = statistics.median(latencies)
            p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else latencies[0]
            print(f"append to decision: p50 {p50:.2f} s, p95 {p95:.2f} s over {len(latencies)} bots at {args.rate:,} events/s")
        else:
            print("append to decision: no decision appeared")


def simulated_lines(folder: Path, keys: int, events: int, history_days: int) -> tuple[list[bytes], list[bytes]]:
    """Return the history lines (the first ``history_days`` days) and up to ``events`` lines after them."""
    # Two more days than the history leave at least a day of events to stream.
    traffic = simulate_traffic(
        folder / "traffic", keys=keys, days=history_days + 2 if history_days else 7, seed=21, start=SIMULATION_START
    )
    boundary = SIMULATION_START.timestamp() + history_days * 86400
    history: list[bytes] = []
    lines: list[bytes] = []
    with traffic.events_path.open("rb") as handle:
        for line in handle:
            if history_days and _event_time(line) < boundary:
                history.append(line.strip())
                continue
            lines.append(line.strip())
            if len(lines) == events:
                break
    return history, lines


def _event_time(line: bytes) -> float:
    return datetime.fromisoformat(orjson.loads(line)["ts"]).timestamp()


def preload(client: redis.Redis, prefix: str, database: str, history: list[bytes]) -> None:
    """Score ``history`` and store what a worker would have stored: findings, decisions and windows."""
    read = read_json_lines(history, "history")
    store = open_store(database)
    result = score_events(
        read.frame, plans=load_plans(), policy=load_policy(), detectors=default_detectors(), prior=store.decisions_for
    )
    store.save_findings(result.findings)
    store.save_decisions(result.decisions)
    EventWindows(client, prefix=prefix).extend(read.frame)


def append(client: redis.Redis, stream: str, lines: list[bytes]) -> None:
    for start in range(0, len(lines), 5000):
        pipeline = client.pipeline(transaction=False)
        for line in lines[start : start + 5000]:
            pipeline.xadd(stream, {"event": line})
        pipeline.execute()


def throughput(
    client: redis.Redis,
    url: str,
    lines: list[bytes],
    folder: Path,
    workers: int,
    history: list[bytes],
    batch_size: int,
    timeout: float = 600,
) -> float:
    """Return events/s from the first append until the workers have acknowledged every entry.

    The workers are started first and timed from three seconds after the first
    of them created the consumer group, so Python start-up is not counted.
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:events"
    database = f"sqlite:///{folder}/{prefix}.db"
    open_store(database)
    if history:
        preload(client, prefix, database, history)
    command = [
        sys.executable, "-m", "detector.cli", "worker", "--db", database, "--redis", url, "--prefix", prefix, "--no-model",
        "--batch-size", str(batch_size),
    ]
    processes = [subprocess.Popen(command, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        ready = time.perf_counter()
        while not client.exists(stream):
            if time.perf_counter() - ready > 120:
                raise SystemExit("workers did not start within 120 s")
            time.sleep(0.05)
        # Redis registers a consumer only when it first receives entries, so give
        # every worker a moment to finish starting after the first one made the group.
        time.sleep(3.0)

        started = time.perf_counter()
        append(client, stream, lines)
        while True:
            info = client.xinfo_groups(stream)
            if info[0]["lag"] == 0 and info[0]["pending"] == 0 and info[0]["entries-read"] == len(lines):
                break
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"workers did not drain {len(lines):,} events within {timeout:.0f} s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        cleanup(client, prefix)
    return len(lines) / elapsed


def lookup_latency(client: redis.Redis, url: str) -> tuple[tuple[float, float], tuple[float, float]]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    decisions = [
        Decision(
            id=f"d{index}", subject_type="key", subject=f"key-{index}", action="throttle", reasons=["automation"],
            score=70.0, evidence={}, detected_at=now - timedelta(seconds=1), created_at=now,
            expires_at=now + timedelta(hours=1), origin="bench", limit_rpm=60,
        )
        for index in range(1000)
    ]
    DecisionPublisher(client, prefix=prefix).publish(decisions)
    try:
        direct = _time_checks(DecisionClient(url, prefix=prefix, cache_seconds=0.0))
        cached = _time_checks(DecisionClient(url, prefix=prefix, cache_seconds=1.0), warm=True)
    finally:
        cleanup(client, prefix)
    return direct, cached


def _time_checks(checker: DecisionClient, warm: bool = False, rounds: int = 5000) -> tuple[float, float]:
    keys = [f"key-{index % 1000}" for index in range(rounds)]
    if warm:
        for key in keys[:1000]:
            checker.check(key_id=key, ip="203.0.113.9")
    samples = []
    for key in keys:
        started = time.perf_counter_ns()
        checker.check(key_id=key, ip="203.0.113.9")
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def append_to_decision(client: redis.Redis, folder: Path, rate: int, bots: int = 10) -> list[float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    database = f"sqlite:///{folder}/{prefix}.db"
    consumer = StreamConsumer(
        client, open_store(database), plans=load_plans(), policy=load_policy(), detectors=default_detectors(),
        windows=EventWindows(client, prefix=prefix), publisher=DecisionPublisher(client, prefix=prefix),
        settings=StreamSettings(stream=f"{prefix}:events", dead_letter=f"{prefix}:dead", block_ms=50),
    )
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    worker.start()
    latencies: list[float] = []
    try:
        deadline = time.time() + 60
        sent = 0
        while time.time() < deadline and len(latencies) < bots:
            tick = time.time()
            pipeline = client.pipeline(transaction=False)
            for _ in range(rate // 10):
                pipeline.xadd(consumer.settings.stream, {"event": orjson.dumps(_event(f"bg-{sent % 2000}", tick, sent))})
                sent += 1
            for bot in range(bots):
                for _ in range(10):  # 100 requests/s per bot: far above any plan's rate
                    pipeline.xadd(consumer.settings.stream, {"event": orjson.dumps(_event(f"bot-{bot}", tick, sent, prompt="loop"))})
                    sent += 1
            pipeline.execute()
            latencies = _decision_latencies(client, prefix, bots)
            time.sleep(max(0.0, 0.1 - (time.time() - tick)))
    finally:
        stop.set()
        worker.join(timeout=30)
        cleanup(client, prefix)
    return latencies


def _decision_latencies(client: redis.Redis, prefix: str, bots: int) -> list[float]:
    found = []
    now = time.time()
    for bot in range(bots):
        raw = client.get(subject_key(prefix, "key", f"bot-{bot}"))
        if raw:
            entry = orjson.loads(raw)["active"][0]
            found.append(max(now - entry["detected_ms"] / 1000, 0.0))
    return found if len(found) == bots else []


def _event(key: str, ts: float, number: int, prompt: str = "") -> dict:
    return {
        "request_id": f"{key}-{number}", "ts": ts, "account_id": f"acct-{key}", "key_id": key, "plan": "text",
        "endpoint": "/v1/chat/completions", "model": "m", "prompt_tokens": 10, "completion_tokens": 5, "cost": 0.001,
        "ip": "198.51.100.7", "status": 200, "latency_ms": 300.0, "stream": False, "prompt_hash": prompt or f"p{number}",
    }


def cleanup(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


if __name__ == "__main__":
    main()
