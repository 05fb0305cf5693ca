#!/usr/bin/env python3
"""Benchmark the per-subject state at the stream's rate: every detector, one-second chunks, in one process.

    .venv/bin/python scripts/bench_state_rate.py [--keys 2000] [--rate 10000] [--seconds 240]
        [--chunk-seconds 1] [--bots 20] [--no-model]

The traffic is that of ``scripts/bench_stream.py``'s latency test: ``--keys``
background keys share ``--rate`` events a second, each request with its own
prompt hash, and ``--bots`` keys send 100 requests a second each, one more
bot every second. Each chunk of ``--chunk-seconds`` of event time is turned
into JSON lines, parsed by ``read_json_lines`` as the worker parses a batch,
and given to ``StateScorer.score`` with the stream's retention. Nothing is
read from or written to Redis or the SQL store.

The report gives the parse and scoring time per chunk for each minute of
event time, the events per second the scoring kept up with, and the rows and
bytes of each state per key at the end. A worker on state keeps up with the
rate while a chunk of one second takes less than a second. The load state
fills over its first 20 minutes, so runs shorter than that end before the
state reaches its steady size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import orjson

from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.plans import load_plans
from detector.readers import read_json_lines
from detector.state.load_window import LoadWindows
from detector.state.open_day_counts import OpenDayCounts
from detector.state.scorer import STREAM_RETENTION, StateScorer
from detector.state.table import SubjectStates

START = 1_795_000_000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000, help="Background keys (default 2,000).")
    parser.add_argument("--rate", type=int, default=10_000, help="Events per second in all (default 10,000).")
    parser.add_argument("--seconds", type=int, default=240, help="Seconds of event time (default 240).")
    parser.add_argument("--chunk-seconds", type=float, default=1.0, help="Event time per chunk (default 1).")
    parser.add_argument("--bots", type=int, default=20, help="Keys sending 100 requests a second (default 20).")
    parser.add_argument("--no-model", action="store_true", help="Leave out the anomaly detector.")
    args = parser.parse_args()

    detectors = default_detectors(None if args.no_model else load_model())
    scorer = StateScorer(detectors=detectors, plans=load_plans(), retention=STREAM_RETENTION)
    update_seconds = time_updates(scorer)
    per_minute: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    findings = 0
    inexact = 0

    chunks = int(args.seconds / args.chunk_seconds)
    for number in range(chunks):
        begin = START + number * args.chunk_seconds
        lines = chunk_lines(begin, args)

        started = time.perf_counter()
        frame = read_json_lines(lines, "bench").frame
        parsed = time.perf_counter()
        result = scorer.score(frame)
        scored = time.perf_counter()

        findings += len(result.findings)
        inexact += len(result.inexact)
        per_minute[int(number * args.chunk_seconds // 60)].append((len(lines), parsed - started, scored - parsed))

    report(per_minute, args, findings, inexact)
    total = sum(update_seconds.values())
    print("update time per state: " + ", ".join(
        f"{name} {seconds:.1f} s ({seconds / total:.0%})" for name, seconds in sorted(update_seconds.items(), key=lambda item: -item[1])
    ))
    report_state(scorer, args.keys + args.bots)


def time_updates(scorer: StateScorer) -> dict[str, float]:
    """Wrap each state's ``update`` to add its seconds, by state class, to the returned mapping."""
    seconds: dict[str, float] = defaultdict(float)
    for states in scorer.states:
        for state in states:
            state.update = _timed(state.update, type(state).__name__, seconds)
    return seconds


def _timed(update, name: str, seconds: dict[str, float]):
    def timed_update(chunk):
        started = time.perf_counter()
        try:
            return update(chunk)
        finally:
            seconds[name] += time.perf_counter() - started

    return timed_update


def chunk_lines(begin: float, args: argparse.Namespace) -> list[bytes]:
    """Return the JSON lines of the chunk from ``begin``: the background keys' share of the rate, and the bots."""
    bots = min(args.bots, int((begin - START) // 1) + 1)
    seconds = args.chunk_seconds
    background = max(int(args.rate * seconds) - bots * int(100 * seconds), 0)
    lines = []
    for index in range(background):
        number = int(begin * 1000) * 1000 + index
        ts = begin + seconds * index / max(background, 1)
        lines.append(orjson.dumps(event(f"bg-{number % args.keys}", ts, number)))
    for bot in range(bots):
        for step in range(int(100 * seconds)):
            number = int(begin * 1000) * 1000 + background + bot * 1000 + step
            lines.append(orjson.dumps(event(f"bot-{bot}", begin + step / 100, number, prompt="loop")))
    return lines


def event(key: str, ts: float, number: int, prompt: str = "") -> dict:
    """Return one request as ``scripts/bench_stream.py`` sends it."""
    return {
        "request_id": f"{key}-{number}", "ts": round(ts, 3), "account_id": f"acct-{key}", "key_id": key,
        "plan": "text", "endpoint": "/v1/chat/completions", "model": "m", "prompt_tokens": 10,
        "completion_tokens": 5, "cost": 0.001, "ip": "198.51.100.7", "status": 200, "latency_ms": 300.0,
        "stream": False, "prompt_hash": prompt or f"p{number}",
    }


def report(per_minute: dict[int, list[tuple[int, float, float]]], args: argparse.Namespace, findings: int, inexact: int) -> None:
    print(f"{args.keys:,} keys and {args.bots} bots at {args.rate:,} events/s, chunks of {args.chunk_seconds:g} s")
    print("minute   events   parse p50   score p50   score p95   score max   events/s scored")
    for minute, chunks in sorted(per_minute.items()):
        events = sum(count for count, _, _ in chunks)
        scores = [score for _, _, score in chunks]
        parses = [parse for _, parse, _ in chunks]
        print(
            f"{minute:>6} {events:>8,} {_ms(statistics.median(parses)):>11} {_ms(statistics.median(scores)):>11} "
            f"{_ms(_p95(scores)):>11} {_ms(max(scores)):>11} {events / sum(scores):>17,.0f}"
        )
    print(f"findings: {findings:,}; inexact subject reports: {inexact:,}")


def report_state(scorer: StateScorer, keys: int) -> None:
    """Print each state's rows and bytes per key: its ``SubjectStates`` tables, one level of helpers deep, its load windows and its open day counts.

    For ``OpenDayCounts`` a row is a live (subject, kind, value) pair, and the bytes include the table's spare places.
    """
    print("state at the end, per key:")
    for states in scorer.states:
        for state in states:
            parts = [value for value in vars(state).values() if isinstance(value, SubjectStates | LoadWindows | OpenDayCounts)]
            parts += [value for inner in vars(state).values() for value in getattr(inner, "__dict__", {}).values()
                      if isinstance(value, SubjectStates)]
            rows = sum(_live_rows(part) for part in parts)
            size = sum(part.nbytes() for part in parts)
            print(f"  {type(state).__name__:<24} {rows / keys:>10,.0f} rows {size / keys:>12,.0f} bytes")


def _live_rows(part: SubjectStates | LoadWindows | OpenDayCounts) -> int:
    if isinstance(part, OpenDayCounts):
        return len(part)
    return part.live_rows if isinstance(part, SubjectStates) else part.segments.live_rows


def _p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


if __name__ == "__main__":
    main()
