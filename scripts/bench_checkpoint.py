#!/usr/bin/env python3
"""Benchmark writing and reading a state-worker checkpoint, with and without the format-2 checks.

    .venv/bin/python scripts/bench_checkpoint.py --events path/to/events.jsonl [--chunk-seconds 60] [--repeat 5]

The events are streamed through a ``StateScorer`` on the shipped model in
chunks of ``--chunk-seconds`` of event time, as one partition of the state
worker would take them. The final state is then written with ``dump_state``
and read back with ``load_state``, ``--repeat`` times each, and the best
time is kept. The same bytes in the version-1 layout (no CRC, no JSON
header, no element allowance) are read too, so the cost of the checks is
reported as a ratio against the same process. Also reported: the
checkpoint's size and the time of the CRC-32 alone.
"""

from __future__ import annotations

import argparse
import io
import time
import zlib

import numpy as np

from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.plans import load_plans
from detector.readers import read_events
from detector.state.scorer import STREAM_RETENTION, StateScorer
from workers.checkpoint import MAGIC, PartitionState, RestrictedUnpickler, dump_state, external_objects, load_state
from workers.repeats import RepeatedRequests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="events file (JSON lines or CSV) to build the state from")
    parser.add_argument("--chunk-seconds", type=float, default=60.0, help="event-time seconds per chunk")
    parser.add_argument("--repeat", type=int, default=5, help="times each step runs; the best is reported")
    args = parser.parse_args()

    frame = read_events([args.events]).frame.sort_values("ts", kind="stable").reset_index(drop=True)
    plans = load_plans()
    detectors = default_detectors(load_model())
    scorer = StateScorer(detectors=detectors, plans=plans, retention=STREAM_RETENTION)
    repeats = RepeatedRequests(3600.0)
    chunks = np.floor((frame["ts"].to_numpy() - frame["ts"].iloc[0]) / args.chunk_seconds)
    for _, chunk in frame.groupby(chunks, sort=True):
        chunk = chunk.reset_index(drop=True)
        scorer.score(chunk[repeats.first_seen(chunk)].reset_index(drop=True))
    state = PartitionState(scorer=scorer, repeats=repeats, partitions=1)

    data = dump_state(state, detectors, plans)
    # Format 2: MAGIC, version, CRC-32 (4 bytes), header length (4 bytes), JSON header, pickle.
    length = int.from_bytes(data[9:13], "big")
    version_1 = MAGIC + bytes([1]) + data[13 + length :]

    def best(step) -> float:
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        return min(times)

    dump = best(lambda: dump_state(state, detectors, plans))
    load = best(lambda: load_state(data, detectors, plans))
    load_v1 = best(lambda: load_state(version_1, detectors, plans))
    unbounded = best(lambda: RestrictedUnpickler(io.BytesIO(version_1[5:]), external_objects(detectors, plans)).load())
    crc = best(lambda: zlib.crc32(memoryview(data)[9:]))

    print(f"events {len(frame)}, subjects {len(scorer.ranks)}, checkpoint {len(data) / 1e6:.2f} MB")
    print(f"dump_state (format 2)       {dump * 1000:8.1f} ms")
    print(f"load_state (format 2)       {load * 1000:8.1f} ms")
    print(f"load_state (format 1)       {load_v1 * 1000:8.1f} ms")
    print(f"unpickle without allowance  {unbounded * 1000:8.1f} ms")
    print(f"CRC-32 alone                {crc * 1000:8.1f} ms")
    print(f"format 2 / format 1 load    {load / load_v1:8.2f}")
    print(f"format 1 load / unbounded   {load_v1 / unbounded:8.2f}")


if __name__ == "__main__":
    main()
