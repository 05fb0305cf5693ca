#!/usr/bin/env python3
"""Benchmark the stream path against a real local Redis.

    .venv/bin/python scripts/bench_stream.py [--events 50000] [--keys 500] [--history-days 0]
        [--batch-size 50000] [--rate 2000] [--warmup 10] [--redis redis://127.0.0.1:6379/0]
        [--only throughput|lookup|latency] [--worker-log FILE] [--arrival-order] [--path window|state] [--model]
        [--lateness 0,120] [--bots 20]

Measures, each under its own key prefix (removed afterwards):

- worker throughput: events/s for one worker taking a stream of simulated
  events, and for two ``fairuse worker`` processes sharing it, measured two
  ways. *Live*: timed from the first append, while this script appends
  (about 85,000 entries/s from one Python process), so the workers take the
  entries in several batches as they arrive. *Backlog*: the workers are
  paused (SIGSTOP) while every entry is appended, and timed from their
  resumption (SIGCONT), so they drain a backlog as after an outage. By default the
  events are the first ones of a simulated week, so the subjects' windows are
  short. With ``--history-days N`` the first N simulated days are scored and
  stored beforehand, as a worker would have left them (windows in Redis,
  findings and decisions in the store), and the events that follow are
  streamed, so every batch reads and scores N days of history;
- decision lookup latency (p50/p99) through Redis (``DecisionClient`` without
  cache) and through the client's one-second cache;
- append-to-decision latency: 20 bots (``--bots``) start sending, one a second, while
  background traffic fills the rest of ``--rate`` events/s. It is the time
  from the request that crossed the threshold (its ``detected_at``) to the
  decision being readable in Redis, so the bots' decisions come from many
  micro-batches.
  The background comes from 2,000 keys. With ``--history-days N`` the
  simulated keys' first N days are moved to end now, renamed to background
  keys and stored first, so every batch reads N days of windows.

With ``--arrival-order`` the throughput test appends its events in the order
a gateway would, when each response is done (``ts + latency_ms``), not sorted
by ``ts``. A key with requests in flight at once then sends some of them
after later-started ones, as the LiteLLM callback does.

With ``--path state`` the workers are state workers (``fairuse worker
--state``): one worker on one partition, and two workers sharing two
partitioned streams. History is then fed through an in-process state worker
first, whose checkpoint the timed workers load, instead of being stored as
windows. A state worker acknowledges entries only at its next checkpoint
(every 5 s), so its throughput is timed until the last entry of every
partition is applied (``{prefix}:state-applied:{n}``), not acknowledged.

With ``--lateness S[,S...]`` the state workers run with each of those
``--lateness`` values in turn (default 1, the worker's), so that the figures of several
values come from the same run.

With ``--model`` the workers run the anomaly detector with the shipped model;
by default they run with ``--no-model``.

With ``--worker-log FILE`` the workers run with ``-v`` and append their log
to FILE, one line per micro-batch, so batch sizes can be read beside the figures.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pandas as pd
import redis

from detector.decisions import Decision
from detector.gateway_import import ImportReport, StreamSink
from detector.model_registry import load_model
from detector.pipeline import default_detectors, score_events
from detector.plans import load_plans
from detector.policy import load_policy
from detector.readers import read_json_lines
from detector.simulate import simulate_traffic
from detector.store import open_store
from fairuse_gateway import DecisionClient
from fairuse_gateway.partitions import partition_of_event, partition_stream
from workers.consumer import StreamSettings
from workers.publish import DecisionPublisher, subject_key
from workers.window import EventWindows

SIMULATION_START = datetime(2026, 11, 23, tzinfo=UTC)
# The file the workers append their log to, or None to discard it (--worker-log).
WORKER_LOG: Path | None = None
# Keys that send the latency test's background traffic.
BACKGROUND_KEYS = 2000
# The worker kind: "window" (fairuse worker --window) or "state" (fairuse worker --state), from --path.
PATH = "window"
# Whether the workers run the anomaly detector with the shipped model (--model), or run with --no-model.
WITH_MODEL = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--rate", type=int, default=2_000, help="Background events per second in the latency test.")
    parser.add_argument(
        "--warmup", type=float, default=10.0,
        help="Seconds of background traffic before the bots start in the latency test.",
    )
    parser.add_argument("--history-days", type=int, default=0, help="Days of history stored before the timed events.")
    parser.add_argument(
        "--bots", type=int, default=20,
        help="Bots in the latency test, one latency each; with 20 the p95 is close to the slowest of them.",
    )
    parser.add_argument(
        "--batch-size", type=int, default=StreamSettings().batch_size,
        help="Maximum entries per micro-batch of each worker (its --batch-size).",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", choices=["throughput", "lookup", "latency"], help="Run only this part.")
    parser.add_argument("--worker-log", type=Path, help="Append the workers' log (with -v) to this file.")
    parser.add_argument(
        "--arrival-order", action="store_true", help="Append the throughput test's events as their responses end."
    )
    parser.add_argument(
        "--path", choices=["window", "state"], default="window",
        help="Workers that re-score stored windows (the default) or score on in-memory state.",
    )
    parser.add_argument(
        "--model", action="store_true", help="Run the workers with the anomaly model instead of --no-model."
    )
    parser.add_argument(
        "--lateness", default="1",
        help="With --path state: comma-separated --lateness values (seconds) to measure the state workers with.",
    )
    args = parser.parse_args()
    global WORKER_LOG, PATH, WITH_MODEL
    WORKER_LOG = args.worker_log
    PATH = args.path
    WITH_MODEL = args.model
    client = redis.Redis.from_url(args.redis)

    with tempfile.TemporaryDirectory() as folder:
        history, lines = simulated_lines(Path(folder), args.keys, args.events, args.history_days)
        if args.arrival_order:
            lines = in_arrival_order(lines)
        if args.only in (None, "throughput"):
            print_throughput(client, args, Path(folder), history, lines)
        if args.only in (None, "lookup"):
            direct, cached = lookup_latency(client, args.redis)
            print(f"lookup through Redis: p50 {direct[0]:.0f} µs, p99 {direct[1]:.0f} µs")
            print(f"lookup through cache: p50 {cached[0]:.1f} µs, p99 {cached[1]:.1f} µs")
        if args.only in (None, "latency"):
            print_latency(client, args, Path(folder), history)


def print_throughput(
    client: redis.Redis, args: argparse.Namespace, folder: Path, history: list[bytes], lines: list[bytes]
) -> None:
    if PATH == "state":
        print_state_throughput(client, args, folder, history, lines)
        return
    for backlog in (False, True):
        runs = [
            throughput(
                client, args.redis, lines, folder, count, history, args.batch_size, backlog=backlog,
                partitioned=partitioned,
            )
            for count, partitioned in ((1, False), (2, False), (2, True))
        ]
        print(
            f"worker throughput, {'backlog' if backlog else 'live'}: 1 worker {runs[0]:,.0f} events/s, "
            f"2 workers {runs[1]:,.0f} events/s on one stream, {runs[2]:,.0f} events/s on a stream each "
            f"({len(lines):,} events, {len(history):,} events of history, batches of {args.batch_size:,})"
        )


def print_state_throughput(
    client: redis.Redis, args: argparse.Namespace, folder: Path, history: list[bytes], lines: list[bytes]
) -> None:
    for backlog in (False, True):
        for lateness in [float(value) for value in args.lateness.split(",")]:
            runs = [
                state_throughput(
                    client, args.redis, lines, folder, count, history, args.batch_size, backlog=backlog, lateness=lateness
                )
                for count in (1, 2)
            ]
            print(
                f"state worker throughput, {'backlog' if backlog else 'live'}, lateness {lateness:g} s: "
                f"1 worker on 1 partition {runs[0]:,.0f} events/s, 2 workers on 2 partitions {runs[1]:,.0f} events/s "
                f"({len(lines):,} events, {len(history):,} events of history in the state, batches of {args.batch_size:,})"
            )


def state_throughput(
    client: redis.Redis,
    url: str,
    lines: list[bytes],
    folder: Path,
    workers: int,
    history: list[bytes],
    batch_size: int,
    timeout: float = 600,
    backlog: bool = False,
    lateness: float = 1.0,
) -> float:
    """Return events/s for ``workers`` state workers on as many partitions, until every entry is applied.

    Timed as ``throughput`` times the window workers, except for the end (see the module docstring).
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    database = f"sqlite:///{folder}/{prefix}.db"
    open_store(database)
    streams = [partition_stream(f"{prefix}:events", partition, workers) for partition in range(workers)]
    shares = _state_shares(lines, workers)
    processes: list[subprocess.Popen] = []
    try:
        if history:
            preload_state(client, prefix, database, read_json_lines(history, "history").frame, workers, lateness)
        processes = start_workers(
            client, url, database, prefix, workers, batch_size, partitions=workers, extra=["--lateness", str(lateness)]
        )
        if backlog:
            signal_workers(processes, signal.SIGSTOP)
            _append_to_streams(client, streams, shares)
            signal_workers(processes, signal.SIGCONT)
        started = time.perf_counter()
        if not backlog:
            _append_to_streams(client, streams, shares)
        last_ids = [client.xrevrange(stream, count=1)[0][0] for stream in streams]
        while not all(
            client.get(f"{prefix}:state-applied:{partition}") == last_id for partition, last_id in enumerate(last_ids)
        ):
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"workers did not drain {len(lines):,} events within {timeout:.0f} s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        stop_workers(processes)
        cleanup(client, prefix)
    return len(lines) / elapsed


def _state_shares(lines: list[bytes], partitions: int) -> list[list[bytes]]:
    """Split ``lines`` by partition as a gateway would (``fairuse_gateway.partitions``), keeping their order."""
    shares: list[list[bytes]] = [[] for _ in range(partitions)]
    for line in lines:
        event = orjson.loads(line)
        shares[partition_of_event(event["account_id"], event["key_id"], partitions)].append(line)
    return shares


def _append_to_streams(client: redis.Redis, streams: list[str], shares: list[list[bytes]]) -> None:
    step = 5000
    for start in range(0, max(len(share) for share in shares), step):
        for stream, share in zip(streams, shares):
            append(client, stream, share[start : start + step])


def preload_state(
    client: redis.Redis, prefix: str, database: str, frame: pd.DataFrame, partitions: int, lateness: float
) -> None:
    """Feed ``frame`` through an in-process state worker and stop it, so its checkpoints hold the history.

    It uses the detectors of the timed workers (with ``--model``, the shipped model's), whose positions the
    checkpoints refer to.
    """
    from workers.state_consumer import StateConsumer, StateSettings

    store = open_store(database)
    StreamSink(client, f"{prefix}:events", partitions=partitions).send(frame, frame.iloc[:0], ImportReport())
    worker = StateConsumer(
        client, store, plans=load_plans(), policy=load_policy(),
        detectors=default_detectors(load_model()) if WITH_MODEL else default_detectors(),
        publisher=DecisionPublisher(client, prefix=prefix),
        settings=StateSettings(
            prefix=prefix, partitions=partitions, owner="preload", block_ms=10, close_seconds=1e9, lateness=lateness
        ),
    )
    worker.ensure_groups()
    while worker.process_once().entries:
        pass
    worker.stop()
    # The workers' fair share counts live workers, so the preloading one must not count.
    client.delete(worker.leases.workers_key)


def print_latency(client: redis.Redis, args: argparse.Namespace, folder: Path, history: list[bytes]) -> None:
    if PATH != "state":
        print_latency_once(client, args, folder, history, None)
        return
    for lateness in [float(value) for value in args.lateness.split(",")]:
        print_latency_once(client, args, folder, history, lateness)


def print_latency_once(
    client: redis.Redis, args: argparse.Namespace, folder: Path, history: list[bytes], lateness: float | None
) -> None:
    history_end = SIMULATION_START.timestamp() + args.history_days * 86400
    latencies, sent_rate = append_to_decision(
        client, args.redis, folder, args.rate, history, history_end, args.warmup, args.batch_size, bots=args.bots,
        lateness=lateness,
    )
    label = "" if lateness is None else f", lateness {lateness:g} s"
    if not latencies:
        print(f"append to decision{label}: no decision appeared")
        return
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else latencies[0]
    print(
        f"append to decision{label}: p50 {p50:.2f} s, p95 {p95:.2f} s over {len(latencies)} bots at {args.rate:,} events/s "
        f"(sent {sent_rate:,.0f}/s) "
        f"after {args.warmup:g} s of warm-up ({len(history):,} events of history)"
    )


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


def in_arrival_order(lines: list[bytes]) -> list[bytes]:
    """Return ``lines`` sorted by the end of each request (``ts`` plus ``latency_ms``), ties in their order."""
    def arrival(line: bytes) -> float:
        event = orjson.loads(line)
        return datetime.fromisoformat(event["ts"]).timestamp() + event["latency_ms"] / 1000

    return sorted(lines, key=arrival)


def _event_time(line: bytes) -> float:
    return datetime.fromisoformat(orjson.loads(line)["ts"]).timestamp()


def preload(client: redis.Redis, prefix: str, database: str, frame: pd.DataFrame) -> None:
    """Score the events of ``frame`` and store what a worker would have stored: findings, decisions and windows."""
    store = open_store(database)
    result = score_events(
        frame, plans=load_plans(), policy=load_policy(), detectors=default_detectors(), prior=store.decisions_for
    )
    store.save_findings(result.findings)
    store.save_decisions(result.decisions)
    EventWindows(client, prefix=prefix).extend(frame)


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
    backlog: bool = False,
    partitioned: bool = False,
) -> float:
    """Return events/s from the first append until the workers have acknowledged every entry.

    The workers are started first and timed from three seconds after the first
    of them created the consumer group, so Python start-up is not counted.
    With ``backlog``, the workers are paused while every entry is appended and
    timed from their resumption instead. With ``partitioned``, each worker has
    its own stream and key prefix, and each key's events go to one of them
    (a hash of the key id), so no two workers share a subject.
    """
    run = f"bench-{uuid.uuid4().hex[:8]}"
    database = f"sqlite:///{folder}/{run}.db"
    open_store(database)
    shares = _partitions(lines, workers) if partitioned else [lines]
    histories = _partitions(history, workers) if partitioned else [history]
    prefixes = [f"{run}-{number}" for number in range(len(shares))]
    processes: list[subprocess.Popen] = []
    try:
        for prefix, share_history in zip(prefixes, histories):
            if share_history:
                preload(client, prefix, database, read_json_lines(share_history, "history").frame)
            processes += start_workers(client, url, database, prefix, workers // len(shares), batch_size)
        if backlog:
            signal_workers(processes, signal.SIGSTOP)
            _append_shares(client, prefixes, shares)
            signal_workers(processes, signal.SIGCONT)
        started = time.perf_counter()
        if not backlog:
            _append_shares(client, prefixes, shares)
        while not all(_drained(client, f"{prefix}:events", len(share)) for prefix, share in zip(prefixes, shares)):
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"workers did not drain {len(lines):,} events within {timeout:.0f} s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        stop_workers(processes)
        for prefix in prefixes:
            cleanup(client, prefix)
    return len(lines) / elapsed


def _partitions(lines: list[bytes], count: int) -> list[list[bytes]]:
    """Split ``lines`` into ``count`` shares by a hash of each event's key id, keeping their order."""
    shares: list[list[bytes]] = [[] for _ in range(count)]
    for line in lines:
        key = orjson.loads(line)["key_id"].encode()
        shares[zlib.crc32(key) % count].append(line)
    return shares


def _append_shares(client: redis.Redis, prefixes: list[str], shares: list[list[bytes]]) -> None:
    """Append each share to its stream, a slice of each in turn, as a gateway would send them together."""
    step = 5000
    for start in range(0, max(len(share) for share in shares), step):
        for prefix, share in zip(prefixes, shares):
            append(client, f"{prefix}:events", share[start : start + step])


def _drained(client: redis.Redis, stream: str, entries: int) -> bool:
    if not entries:
        return True
    info = client.xinfo_groups(stream)
    return info[0]["lag"] == 0 and info[0]["pending"] == 0 and info[0]["entries-read"] == entries


def start_workers(
    client: redis.Redis, url: str, database: str, prefix: str, count: int, batch_size: int, partitions: int = 1,
    extra: list[str] | None = None,
) -> list[subprocess.Popen]:
    """Start ``count`` ``fairuse worker`` processes (without the anomaly model unless --model); return once they can take entries.

    With ``--path state`` they are state workers on ``partitions`` partitions.
    """
    command = [
        sys.executable, "-m", "detector.cli", *(["-v"] if WORKER_LOG else []), "worker", "--db", database, "--redis", url,
        "--prefix", prefix, *([] if WITH_MODEL else ["--no-model"]), "--batch-size", str(batch_size),
    ]
    if PATH == "state":
        command += ["--state", "--partitions", str(partitions), *(extra or [])]
    else:
        command += ["--window"]
    log = WORKER_LOG.open("ab") if WORKER_LOG else subprocess.DEVNULL
    processes = [subprocess.Popen(command, stderr=log) for _ in range(count)]
    ready = time.perf_counter()
    first_stream = partition_stream(f"{prefix}:events", 0, partitions)
    while not _workers_ready(client, prefix, first_stream, count, partitions):
        if time.perf_counter() - ready > 120:
            stop_workers(processes)
            raise SystemExit("workers did not start within 120 s")
        time.sleep(0.05)
    # Redis registers a consumer only when it first receives entries, so give
    # every worker a moment to finish starting after the first one made the group.
    time.sleep(3.0)
    return processes


def _workers_ready(client: redis.Redis, prefix: str, first_stream: str, count: int, partitions: int) -> bool:
    """Return whether the consumer group exists and, for state workers, all of them run and every partition is owned."""
    if not client.exists(first_stream) or not client.xinfo_groups(first_stream):
        return False
    if PATH != "state":
        return True
    leases = client.exists(*[f"{prefix}:lease:{partition}" for partition in range(partitions)])
    return leases == partitions and client.zcard(f"{prefix}:workers") == count


def signal_workers(processes: list[subprocess.Popen], number: int) -> None:
    for process in processes:
        process.send_signal(number)


def stop_workers(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
        process.wait()


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


def append_to_decision(
    client: redis.Redis,
    url: str,
    folder: Path,
    rate: int,
    history: list[bytes],
    history_end: float,
    warmup: float,
    batch_size: int,
    bots: int = 20,
    stagger: float = 1.0,
    lateness: float | None = None,
) -> tuple[list[float], float]:
    """Return the seconds from each bot's crossing request to its decision in Redis, and the rate actually sent.

    The latencies are returned once all bots have a decision.
    One ``fairuse worker`` process consumes the stream, as in the throughput test, with ``--lateness`` when given.
    The bots start after ``warmup`` seconds of background traffic, so a worker that falls behind the rate shows it.
    They start ``stagger`` seconds apart, so their decisions come from many batches, not one.
    Each bot's latency is taken when its decision is first seen (polled every 0.1 s).
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:events"
    database = f"sqlite:///{folder}/{prefix}.db"
    open_store(database)
    if history:
        frame = _background_history(history, time.time() - history_end)
        if PATH == "state":
            preload_state(client, prefix, database, frame, 1, lateness)
        else:
            preload(client, prefix, database, frame)
    extra = [] if lateness is None else ["--lateness", str(lateness)]
    processes = start_workers(client, url, database, prefix, 1, batch_size, extra=extra)
    latencies: dict[int, float] = {}
    try:
        started = time.time()
        bots_start = started + warmup
        deadline = bots_start + bots * stagger + 60
        sent = 0
        while time.time() < deadline and len(latencies) < bots:
            tick = time.time()
            pipeline = client.pipeline(transaction=False)
            started_bots = min(bots, max(0, int((tick - bots_start) // stagger) + 1))
            # The bots' requests are part of --rate, so the total stays at the rate asked for.
            for _ in range(max(rate // 10 - 10 * started_bots, 0)):
                pipeline.xadd(stream, {"event": orjson.dumps(_event(f"bg-{sent % BACKGROUND_KEYS}", tick, sent))})
                sent += 1
            for bot in range(started_bots):
                for _ in range(10):  # 100 requests/s per bot: far above any plan's rate
                    pipeline.xadd(stream, {"event": orjson.dumps(_event(f"bot-{bot}", tick, sent, prompt="loop"))})
                    sent += 1
            pipeline.execute()
            latencies.update(_new_decision_latencies(client, prefix, range(started_bots), latencies))
            time.sleep(max(0.0, 0.1 - (time.time() - tick)))
    finally:
        stop_workers(processes)
        cleanup(client, prefix)
    return (list(latencies.values()) if len(latencies) == bots else []), sent / (time.time() - started)


def _new_decision_latencies(client: redis.Redis, prefix: str, bots: range, seen: dict[int, float]) -> dict[int, float]:
    """Return, for bots whose decision is readable now and was not seen before, the seconds since it was detected."""
    found = {}
    now = time.time()
    for bot in bots:
        if bot in seen:
            continue
        raw = client.get(subject_key(prefix, "key", f"bot-{bot}"))
        if raw:
            entry = orjson.loads(raw)["active"][0]
            found[bot] = max(now - entry["detected_ms"] / 1000, 0.0)
    return found


def _background_history(history: list[bytes], shift: float) -> pd.DataFrame:
    """Return the simulated history moved by ``shift`` seconds, its keys renamed to background keys.

    Replaying the simulated keys' own events at 10,000 events/s would squeeze
    days of their traffic into seconds and make every key an abuser, so the
    background stays synthetic and only takes over the history.
    """
    frame = read_json_lines(history, "history").frame
    frame["ts"] += shift
    keys = sorted(frame["key_id"].unique())
    if len(keys) > BACKGROUND_KEYS:
        raise SystemExit(f"--keys must be at most {BACKGROUND_KEYS:,} for the latency test with history")
    frame["key_id"] = frame["key_id"].map({key: f"bg-{index}" for index, key in enumerate(keys)})
    return frame


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
