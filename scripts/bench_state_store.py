#!/usr/bin/env python3
"""Benchmark the Redis state store: encode, write, read and decode every detector's state of a batch of subjects.

    .venv/bin/python scripts/bench_state_store.py [--events FILE.jsonl] [--subjects 2000]
        [--chunk-seconds 3600] [--repeat 5] [--redis-url redis://127.0.0.1:6379/0]

The incremental detectors of ``detector.state`` run over ``--events`` in
chunks of ``--chunk-seconds`` of event time, so the state is the real state
at the end of that input. When the input has fewer subjects than
``--subjects``, subjects are copied under new names until it has that many.
Then, for one batch of ``--subjects`` subjects, it times (median of
``--repeat`` runs):

- ``encode``: ``SubjectStates.export`` of every table;
- ``save``: ``StateStore.save``, the encoding included, and of that the
  Lua script calls alone (the Redis round trips and the work inside Redis);
- ``load cold``: ``StateStore.load`` into empty tables, and of that the
  script calls alone; the rest is reading the replies and decoding;
- ``load warm``: ``load`` again when nothing changed (token checks only), and
  after another store changed a tenth of the subjects;
- a baseline in the same run: the same values written with one pipelined
  SET (with a TTL) per subject and table and read back with one MGET, about
  the least that moving these bytes through redis-py costs.

It also compares the encoding with Arrow IPC, as docs/streaming-state.md
first proposed: per subject and table, a one-row record batch of values and
a record batch of rows. It reports the bytes of both encodings and the bytes
the keys take in Redis (``MEMORY USAGE``). Keys are written under a prefix
of their own and deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis

from detector.detectors import (
    AbnormalCostDetector,
    AutomationDetector,
    ImageQuotaDetector,
    KeySharingDetector,
)
from detector.plans import load_plans
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.state import (
    AbnormalCostState,
    AutomationPatternState,
    Chunk,
    ImageQuotaState,
    KeySharingState,
    SubjectStates,
)
from detector.state.table import SubjectKey
from workers.state_store import (
    DAY,
    SCRIPT_BYTES,
    SCRIPT_SUBJECTS,
    StateStore,
    StoredDetector,
    state_tables,
)

WEEK = 7 * DAY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=Path,
        help="Events JSON-lines file (default: simulate 500 keys for 7 days, as `fairuse simulate --keys 500 --days 7 --seed 3`).",
    )
    parser.add_argument("--subjects", type=int, default=2000, help="Subjects per batch (default 2000).")
    parser.add_argument("--chunk-seconds", type=float, default=3600.0, help="Event time per update while building the state, in seconds (default 3600).")
    parser.add_argument("--repeat", type=int, default=5, help="Runs of each step; the median is reported (default 5).")
    parser.add_argument("--group-size", type=int, default=SCRIPT_SUBJECTS, help=f"Subjects per script call (default {SCRIPT_SUBJECTS}).")
    parser.add_argument("--group-bytes", type=int, default=SCRIPT_BYTES, help=f"Value bytes per save script call (default {SCRIPT_BYTES}).")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis to write to; only keys under a new prefix are written.")
    args = parser.parse_args()

    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        events = args.events or simulate_traffic(Path(folder), keys=500, days=7, seed=3).events_path
        detectors = build_states(events, args.chunk_seconds)
    keys, copies = batch_keys(detectors, args.subjects)
    print(f"state built from {events} in {time.perf_counter() - began:.1f} s; batch of {len(keys):,} subjects, {copies:,} of them copies")
    print(f"load average at start: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")

    compare_encodings(detectors, keys, args.repeat)
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"fairuse-bench-{uuid.uuid4().hex[:10]}"
    try:
        time_store(client, prefix, detectors, keys, args.repeat, groups=(args.group_size, args.group_bytes))
        report_redis_bytes(client, prefix, len(keys))
    finally:
        stale = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(stale), 1000):
            client.delete(*stale[start : start + 1000])
    print(f"load average at end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


def new_states() -> list[tuple[str, float, object]]:
    """Return each incremental detector's empty state with its store name and retention in seconds.

    The automation load state keeps its rows in ``LoadWindows`` and the anomaly state its value counts in
    ``OpenDayCounts``, which the store cannot save yet, so both are left out.
    """
    automation, sharing = AutomationDetector(), KeySharingDetector()
    return [
        ("image_quota", WEEK, ImageQuotaState(ImageQuotaDetector())),
        ("pattern", WEEK, AutomationPatternState(automation, retention=WEEK)),
        ("key_sharing", WEEK, KeySharingState(sharing, retention=WEEK)),
        # Minute bins of 24 hours, clock bins of the current UTC day and the 7 before it.
        ("abnormal_cost", 8 * DAY, AbnormalCostState(AbnormalCostDetector())),
    ]


def stored(states: list[tuple[str, float, object]]) -> list[StoredDetector]:
    return [StoredDetector(name, retention, state_tables(state)) for name, retention, state in states]


def build_states(path: Path, chunk_seconds: float) -> list[StoredDetector]:
    """Run every incremental detector over the events of ``path`` and return their tables."""
    frame = read_events([path]).frame
    plans = load_plans()
    states = new_states()
    ts = frame["ts"].to_numpy()
    edges = np.searchsorted(ts, np.arange(ts[0], ts[-1] + chunk_seconds, chunk_seconds), side="left")
    for start, end in zip(edges[:-1], edges[1:]):
        if start == end:
            continue
        chunk = Chunk(frame.iloc[start:end].reset_index(drop=True), plans)
        for _, _, state in states:
            state.update(chunk)
    return stored(states)


def batch_keys(detectors: list[StoredDetector], count: int) -> tuple[list[SubjectKey], int]:
    """Return ``count`` subjects with state and how many of them are copies of others' state under new names."""
    tables = [table for detector in detectors for table in detector.tables.values()]
    known = sorted({key for table in tables for key in table.subjects()})
    keys = known[:count]
    copy = 0
    while len(keys) < count:
        copy += 1
        originals = known[: count - len(keys)]
        copies = [(subject_type, f"{subject}#copy{copy}") for subject_type, subject in originals]
        for table in tables:
            table.load(copies, table.export(originals))
        keys += copies
    return keys, max(count - len(known), 0)


def median_seconds(step: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def compare_encodings(detectors: list[StoredDetector], keys: list[SubjectKey], repeat: int) -> None:
    """Print encode and decode times and bytes of the packed layout and of Arrow IPC, per detector."""
    print("\nencoding, per batch (median ms), bytes per subject")
    print(f"{'detector':<14} {'packed enc':>10} {'packed dec':>10} {'packed B':>9} {'arrow enc':>10} {'arrow dec':>10} {'arrow B':>8}")
    totals = np.zeros(6)
    for detector in detectors:
        row = np.zeros(6)
        for table in detector.tables.values():
            encoded = table.export(keys)
            target = SubjectStates(values=_value_specs(table), rows=dict(table._row_dtypes))
            row[0] += median_seconds(lambda: table.export(keys), repeat) * 1000
            row[1] += median_seconds(lambda: target.load(keys, encoded), repeat) * 1000
            row[2] += sum(len(value) for value in encoded if value) / len(keys)
            messages = arrow_encode(table, keys)
            row[3] += median_seconds(lambda: arrow_encode(table, keys), repeat) * 1000
            row[4] += median_seconds(lambda: arrow_decode(table, messages), repeat) * 1000
            row[5] += sum(len(values) + len(rows) for values, rows in messages if values) / len(keys)
        totals += row
        print(f"{detector.name:<14} {row[0]:>10.1f} {row[1]:>10.1f} {row[2]:>9.0f} {row[3]:>10.1f} {row[4]:>10.1f} {row[5]:>8.0f}")
    print(f"{'all':<14} {totals[0]:>10.1f} {totals[1]:>10.1f} {totals[2]:>9.0f} {totals[3]:>10.1f} {totals[4]:>10.1f} {totals[5]:>8.0f}")


def _value_specs(table: SubjectStates) -> dict[str, tuple[str, object]]:
    return {name: (dtype, table._defaults[name]) for name, dtype in table._value_dtypes.items()}


def arrow_encode(table: SubjectStates, keys: list[SubjectKey]) -> list[tuple[bytes | None, bytes | None]]:
    """Return per subject its values as a one-row Arrow IPC record batch message and its rows as another, without schema."""
    taken = table.take(keys)
    values = pa.RecordBatch.from_pydict({name: column for name, column in taken.values.items()} or {"_": np.zeros(len(keys), np.int8)})
    rows = pa.RecordBatch.from_pydict({name: column for name, column in taken.rows.items() if name != "owner"} or {"_": np.zeros(len(taken.rows["owner"]), np.int8)})
    lengths = np.bincount(taken.rows["owner"], minlength=len(keys))
    starts = np.cumsum(lengths) - lengths
    messages = []
    for position, (known, start, length) in enumerate(zip(taken.known.tolist(), starts.tolist(), lengths.tolist())):
        if not known:
            messages.append((None, None))
            continue
        messages.append((values.slice(position, 1).serialize().to_pybytes(), rows.slice(start, length).serialize().to_pybytes()))
    return messages


def arrow_decode(table: SubjectStates, messages: list[tuple[bytes | None, bytes | None]]) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """Read the messages of ``arrow_encode`` back into one batch of values and one of rows (the owner column not rebuilt)."""
    value_schema = pa.schema([(name, pa.from_numpy_dtype(dtype)) for name, dtype in table._value_dtypes.items()] or [("_", pa.int8())])
    row_schema = pa.schema([(name, pa.from_numpy_dtype(dtype)) for name, dtype in table._row_dtypes.items()] or [("_", pa.int8())])
    values, rows = [], []
    for value_message, row_message in messages:
        if value_message is None:
            continue
        values.append(pa.ipc.read_record_batch(pa.py_buffer(value_message), value_schema))
        rows.append(pa.ipc.read_record_batch(pa.py_buffer(row_message), row_schema))
    return pa.concat_batches(values), pa.concat_batches(rows)


class TimedScript:
    """A registered Lua script that counts its calls, adds the seconds of each call to ``seconds`` and keeps the longest call."""

    def __init__(self, script) -> None:
        self.script = script
        self.calls = 0
        self.seconds = 0.0
        self.longest = 0.0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        began = time.perf_counter()
        try:
            return self.script(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - began
            self.seconds += elapsed
            self.longest = max(self.longest, elapsed)


def timed_store(client: redis.Redis, prefix: str, detectors: list[StoredDetector], groups: tuple[int, int]) -> tuple[StateStore, TimedScript, TimedScript]:
    store = StateStore(client, detectors, prefix=prefix, group_size=groups[0], group_bytes=groups[1])
    store._load_script = load = TimedScript(store._load_script)
    store._save_script = save = TimedScript(store._save_script)
    return store, load, save


def time_store(
    client: redis.Redis, prefix: str, detectors: list[StoredDetector], keys: list[SubjectKey], repeat: int, groups: tuple[int, int]
) -> None:
    """Print the median times of save, cold load, warm load and load after changes, for one batch of ``keys``."""
    # The writer starts from the state in memory and an empty prefix, so it must not load first: a load would
    # replace the state in memory with Redis's, which has none yet.
    writer, _, writer_save = timed_store(client, prefix, detectors, groups)
    results: dict[str, list[float]] = {name: [] for name in ["encode", "save", "save script", "longest save call", "load cold", "load cold script", "longest load call", "load warm", "load after 10% changed"]}
    changed = keys[:: 10]
    for _ in range(repeat):
        began = time.perf_counter()
        for detector in detectors:
            for table in detector.tables.values():
                table.export(keys)
        results["encode"].append(time.perf_counter() - began)

        writer_save.seconds = writer_save.longest = writer_save.calls = 0
        began = time.perf_counter()
        rejected = writer.save(keys)
        results["save"].append(time.perf_counter() - began)
        results["save script"].append(writer_save.seconds)
        results["longest save call"].append(writer_save.longest)
        save_calls = writer_save.calls
        assert not rejected, f"{len(rejected)} subjects rejected; another process writes under {prefix}"

        reader, reader_load, _ = timed_store(client, prefix, stored(new_states()), groups)
        began = time.perf_counter()
        fetched = reader.load(keys)
        results["load cold"].append(time.perf_counter() - began)
        results["load cold script"].append(reader_load.seconds)
        results["longest load call"].append(reader_load.longest)
        assert len(fetched) == len(keys)

        began = time.perf_counter()
        assert reader.load(keys) == []
        results["load warm"].append(time.perf_counter() - began)

        writer.save(changed)
        began = time.perf_counter()
        assert len(reader.load(keys)) == len(changed)
        results["load after 10% changed"].append(time.perf_counter() - began)

    baseline = time_baseline(client, f"{prefix}:baseline", exports(writer, keys), repeat)
    results.update(baseline)

    # The reader fetched every subject once and the changed ones again, so its state must equal the writer's.
    assert exports(reader, keys) == exports(writer, keys), "state read back differs from the state written"

    print(
        f"\nstore, {len(keys):,} subjects, {len(detectors)} detectors, script calls of at most {writer.group_size} subjects "
        f"and {writer.group_bytes:,} value bytes (median ms of {repeat})"
    )
    for name, seconds in results.items():
        print(f"  {name:<24} {statistics.median(seconds) * 1000:8.1f}")
    print(f"  {'save script calls':<24} {save_calls:8d}")


def time_baseline(
    client: redis.Redis, prefix: str, exported: list[list[bytes | None]], repeat: int
) -> dict[str, list[float]]:
    """Return the seconds of writing the exported values as plain strings, one per subject and table, and of reading them back."""
    values = [value or b"" for table_values in exported for value in table_values]
    names = [f"{prefix}:{index}" for index in range(len(values))]
    results: dict[str, list[float]] = {"baseline SET": [], "baseline MGET": []}
    for _ in range(repeat):
        began = time.perf_counter()
        pipeline = client.pipeline(transaction=False)
        for name, value in zip(names, values):
            pipeline.set(name, value, ex=DAY)
        pipeline.execute()
        results["baseline SET"].append(time.perf_counter() - began)

        began = time.perf_counter()
        client.mget(names)
        results["baseline MGET"].append(time.perf_counter() - began)
    for start in range(0, len(names), 1000):
        client.delete(*names[start : start + 1000])
    return results


def exports(store: StateStore, keys: list[SubjectKey]) -> list[list[bytes | None]]:
    return [table.export(keys) for detector in store.detectors for table in detector.tables.values()]


def report_redis_bytes(client: redis.Redis, prefix: str, subjects: int) -> None:
    """Print the keys under ``prefix`` and their ``MEMORY USAGE`` per subject, per detector and for tokens."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    pipeline = client.pipeline(transaction=False)
    for key in keys:
        pipeline.memory_usage(key, samples=0)
    usage = pipeline.execute()
    by_kind: dict[str, list[int]] = {}
    for key, size in zip(keys, usage):
        parts = key.decode().split(":")
        kind = parts[2] if parts[1] == "state" else parts[1]
        by_kind.setdefault(kind, []).append(size or 0)
    print(f"\nRedis memory (MEMORY USAGE), {len(keys):,} keys")
    for kind, sizes in sorted(by_kind.items()):
        print(f"  {kind:<14} {len(sizes):6,} keys {sum(sizes) / subjects:9.0f} B per subject")
    print(f"  {'all':<14} {len(keys):6,} keys {sum(usage) / subjects:9.0f} B per subject")


if __name__ == "__main__":
    main()
